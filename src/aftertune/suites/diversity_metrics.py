"""Diversity of a set of texts, as the mode-collapse literature measures it (Kirk et al. 2023).

* EAD, expectation-adjusted distinct n-grams (Liu et al. 2022, "Rethinking and
  refining the distinct metric"): the number N of distinct n-grams
  divided by its expectation when C n-grams are drawn uniformly from a
  vocabulary of V, V·(1 − ((V − 1)/V)^C). Averaged over n = 1 … 5 as Kirk et
  al. do, with their V = 50,257 for every n.
* Embedding diversity: 1 − mean pairwise cosine similarity of sentence
  embeddings (Tevet & Berant 2021's similarity-to-diversity reduction, as Kirk
  et al. use Sentence-BERT), here with the packaged all-MiniLM-L6-v2.

Both are computed on texts cut to a common length in words (`truncate`), so a
model that answers more briefly is not scored as more (or less) diverse for
it. The across-input versions are suite-level aggregates over records: one
sample per prompt, across prompts.
"""

from __future__ import annotations

import base64
import math
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

EAD_VOCAB = 50257  # V: Kirk et al.'s (the GPT-2 vocabulary), fixed so that models with other tokenizers compare
EAD_MAX_N = 5  # EAD averaged over n = 1 … 5 (Kirk et al.)

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: the unit of n-grams and of the length cut."""
    return _WORD.findall(text.lower())


def truncate(text: str, max_words: int) -> str:
    """`text` up to the end of its `max_words`-th word (all of it when shorter)."""
    for k, m in enumerate(_WORD.finditer(text), 1):
        if k == max_words:
            return text[: m.end()]
    return text


def ead(texts: Sequence[str], n: int, vocab: int = EAD_VOCAB) -> float | None:
    """Distinct n-grams over `texts` ÷ V·(1 − ((V−1)/V)^C), C = all n-grams (None when C = 0)."""
    grams = [_ngrams(t, n) for t in texts]
    total = sum(map(len, grams))
    if total == 0:
        return None
    expected = -vocab * math.expm1(total * math.log1p(-1 / vocab))  # V·(1 − ((V−1)/V)^C), without cancellation
    return len(set().union(*grams)) / expected


def ead_mean(texts: Sequence[str], vocab: int = EAD_VOCAB, max_n: int = EAD_MAX_N) -> float | None:
    """EAD averaged over n = 1 … max_n, over the n that have n-grams (None when none has)."""
    vals = [v for n in range(1, max_n + 1) if (v := ead(texts, n, vocab)) is not None]
    return sum(vals) / len(vals) if vals else None


@lru_cache(maxsize=65536)
def _ngrams(text: str, n: int) -> tuple[tuple[str, ...], ...]:
    """One text's n-grams (cached: an across-input aggregate sees the same texts in every bootstrap resample)."""
    ws = words(text)
    return tuple(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1))


def cosine_diversity(vectors: np.ndarray) -> float | None:
    """1 − mean cosine similarity over all pairs of the (unit) row vectors (None for fewer than 2)."""
    k = vectors.shape[0]
    if k < 2:
        return None
    sims = vectors @ vectors.T
    return float(1 - (sims.sum() - np.trace(sims)) / (k * (k - 1)))


def pack_vector(v: np.ndarray) -> str:
    """A float32 vector as base64 (little-endian): exact, and a quarter of its JSON size."""
    return base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")


@lru_cache(maxsize=65536)
def unpack_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float64)


# -- across inputs: suite-level aggregates over records -------------------------------------


def across_input_picks(records: Sequence[Any]) -> list[tuple[Any, int]]:
    """(record, sample index): one sample per prompt drawn, the first sample unless the prompt repeats.

    A bootstrap resample draws some prompts more than once; the m-th draw of
    a prompt takes its m-th sample (cycling past the last), as a fresh draw
    of (prompt, response) would, so no text is counted twice against itself
    while samples last and the set keeps its size.
    """
    seen: Counter[str] = Counter()
    picks = []
    for r in records:
        k = len(r.details["truncated"])
        picks.append((r, seen[r.item_id] % k))
        seen[r.item_id] += 1
    return picks


def ead_across_inputs(records: Sequence[Any], metric: str) -> float:
    texts = [r.details["truncated"][j] for r, j in across_input_picks(records)]
    value = ead_mean(texts)
    return float("nan") if value is None else value


def embedding_across_inputs(records: Sequence[Any], metric: str) -> float:
    picks = across_input_picks(records)
    if len(picks) < 2:
        return float("nan")
    return cosine_diversity(np.stack([unpack_vector(r.details["embeddings"][j]) for r, j in picks]))  # type: ignore[return-value]

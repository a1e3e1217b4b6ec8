"""Text normalisation and stable hashing shared by the lexical detectors.

Every detector works on the same normalised word lists (lowercase, punctuation
stripped, whitespace collapsed), computed once per text. Word and n-gram hashes
are stable across processes (blake2b of the word, then a polynomial combination
in uint64 arithmetic), so indexes cached on disk stay valid.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

# Words too common to carry meaning in similarity vectors (not used for n-gram overlap).
_STOP = """a an the and or but if then else of to in on at by for with from into onto about as is are was were be been
    being am do does did doing have has had having i me my mine we us our you your yours he him his she her hers it its
    they them their this that these those there here what which who whom whose when where why how can could would
    should will shall may might must not no so than too very just also any some all each every both either neither
    more most other such only own same s t don't i'm i'd i'll i've you're it's can't won't what's that's there's let's how's
    please best way ways good really"""
STOPWORDS = frozenset(_STOP.split())


def normalise(text: str) -> str:
    """Lowercase, strip accents and punctuation, collapse whitespace."""
    return " ".join(words(text))


def words(text: str) -> list[str]:
    """The normalised word sequence of `text` (what every detector compares)."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text.replace("\u2019", "'")).encode("ascii", "ignore").decode("ascii")
    return _WORD.findall(text.lower())


_WORD_HASHES: dict[str, int] = {}
_MASK = (1 << 64) - 1
_BASE = np.uint64(0x100000001B3)  # FNV prime: odd, so powers never collapse to 0 mod 2**64


def word_hash(word: str) -> int:
    h = _WORD_HASHES.get(word)
    if h is None:
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        if len(_WORD_HASHES) < 2_000_000:
            _WORD_HASHES[word] = h
    return h


def ngram_hashes(hashes: np.ndarray, n: int) -> np.ndarray:
    """Stable uint64 hashes of every contiguous n-gram of a word-hash array (empty if too short)."""
    m = len(hashes) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    out = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            out = out * _BASE + hashes[k : k + m]
    return out


@dataclass
class Encoded:
    """Many documents' word hashes, concatenated; document i is hashes[starts[i]:starts[i] + lengths[i]]."""

    hashes: np.ndarray  # uint64
    lengths: np.ndarray  # int64

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)

    def doc(self, i: int) -> np.ndarray:
        s = int(self.starts[i])
        return self.hashes[s : s + int(self.lengths[i])]

    def ngrams(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(n-gram hashes, owning document, position in that document) of every n-gram inside one document."""
        grams = ngram_hashes(self.hashes, n)
        if not len(grams):
            return grams, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        owner = np.repeat(np.arange(len(self.lengths)), self.lengths)
        valid = owner[: len(grams)] == owner[n - 1 :]
        idx = np.nonzero(valid)[0]
        own = owner[idx]
        return grams[idx], own, idx - self.starts[own]


def encode(docs: Sequence[Sequence[str]]) -> Encoded:
    """Hash every word of every document, hashing each distinct word once."""
    vocab: dict[str, int] = {}
    ids = [vocab.setdefault(w, len(vocab)) for ws in docs for w in ws]
    table = np.fromiter((word_hash(w) for w in vocab), dtype=np.uint64, count=len(vocab))
    hashes = table[np.asarray(ids, dtype=np.int64)] if ids else np.empty(0, dtype=np.uint64)
    return Encoded(hashes, np.fromiter((len(ws) for ws in docs), dtype=np.int64, count=len(docs)))


def text_hash(text_words: Sequence[str]) -> str:
    return hashlib.blake2b(" ".join(text_words).encode(), digest_size=16).hexdigest()


def excerpt(text: str, limit: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"

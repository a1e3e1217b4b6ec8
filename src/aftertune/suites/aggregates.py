"""Suite-level numbers that are not a mean of per-item values.

Each aggregate reads helper values that the suite stores in every record's
`scores` beside the metric itself (token counts, label indices, n-gram
statistics), so it can be recomputed from the records alone, on any subset
(a category, a bootstrap resample) without the raw texts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Scores = Sequence[dict[str, float | None]]


def _values(scores: Scores, key: str) -> list[float]:
    return [float(s[key]) for s in scores if s.get(key) is not None]  # type: ignore[arg-type]


def _paired(scores: Scores, *keys: str) -> list[tuple[float, ...]]:
    return [tuple(float(s[k]) for k in keys) for s in scores  # type: ignore[arg-type]
            if all(s.get(k) is not None for k in keys)]


def perplexity(scores: Scores, metric: str) -> float:
    rows = _paired(scores, "logprob", "n_tokens")
    n = sum(t for _, t in rows)
    if n <= 0:
        return float("nan")
    return math.exp(-sum(lp for lp, _ in rows) / n)


def bits_per_byte(scores: Scores, metric: str) -> float:
    rows = _paired(scores, "logprob", "n_bytes")
    n = sum(b for _, b in rows)
    if n <= 0:
        return float("nan")
    return -sum(lp for lp, _ in rows) / math.log(2) / n


def macro_f1(scores: Scores, metric: str) -> float:
    rows = [(int(g), int(p)) for g, p in _paired(scores, "gold_label", "pred_label")]
    labels = sorted({g for g, _ in rows})
    if not labels:
        return float("nan")
    f1s = []
    for lab in labels:
        tp = sum(1 for g, p in rows if g == lab and p == lab)
        fp = sum(1 for g, p in rows if g != lab and p == lab)
        fn = sum(1 for g, p in rows if g == lab and p != lab)
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)


BLEU_KEYS = ("bleu_sys_len", "bleu_ref_len", *(f"bleu_correct_{n}" for n in range(1, 5)),
             *(f"bleu_total_{n}" for n in range(1, 5)))


def bleu_stats(hypothesis: str, reference: str) -> dict[str, float]:
    """The sufficient statistics of sacrebleu's corpus BLEU for one (hypothesis, reference) pair."""
    from sacrebleu.metrics import BLEU

    s = BLEU().corpus_score([hypothesis], [[reference]])
    out = {"bleu_sys_len": float(s.sys_len), "bleu_ref_len": float(s.ref_len)}
    for n in range(4):
        out[f"bleu_correct_{n + 1}"] = float(s.counts[n])
        out[f"bleu_total_{n + 1}"] = float(s.totals[n])
    return out


def corpus_bleu(scores: Scores, metric: str) -> float:
    from sacrebleu.metrics import BLEU

    rows = _paired(scores, *BLEU_KEYS)
    if not rows:
        return float("nan")
    sums = [sum(r[i] for r in rows) for i in range(len(BLEU_KEYS))]
    sys_len, ref_len = int(sums[0]), int(sums[1])
    correct = [int(x) for x in sums[2:6]]
    total = [int(x) for x in sums[6:10]]
    return float(BLEU.compute_bleu(correct, total, sys_len, ref_len, smooth_method="exp").score)


def ood_gap(scores: Scores, metric: str) -> float:
    ind, ood = _values(scores, "acc_id"), _values(scores, "acc_ood")
    if not ind or not ood:
        return float("nan")
    return sum(ind) / len(ind) - sum(ood) / len(ood)


def stereoset_icat(scores: Scores, metric: str) -> float:
    lms, ss = _values(scores, "stereoset_lms"), _values(scores, "stereoset_ss")
    if not lms or not ss:
        return float("nan")
    lm, s = sum(lms) / len(lms), sum(ss) / len(ss)
    return lm * min(s, 1 - s) / 0.5

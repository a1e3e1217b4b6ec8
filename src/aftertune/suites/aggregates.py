"""Suite-level numbers that are not a mean of per-item values.

Each aggregate takes the records of a set of items (a model's sample, a
category, a bootstrap resample, which may hold an item more than once) and
reads helper values that the suite stores in every record's `scores` beside
the metric itself (token counts, label indices, n-gram statistics), so it is
recomputed from the records alone. Helpers that are not numbers (the texts
and embeddings of the diversity suite's across-input metrics) live in the
record's `details`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from aftertune.record import Record

Records = Sequence[Record]


def _values(records: Records, key: str) -> list[float]:
    return [float(r.scores[key]) for r in records if r.scores.get(key) is not None]  # type: ignore[arg-type]


def _paired(records: Records, *keys: str) -> list[tuple[float, ...]]:
    return [tuple(float(r.scores[k]) for k in keys) for r in records  # type: ignore[arg-type]
            if all(r.scores.get(k) is not None for k in keys)]


def perplexity(records: Records, metric: str) -> float:
    rows = _paired(records, "logprob", "n_tokens")
    n = sum(t for _, t in rows)
    if n <= 0:
        return float("nan")
    return math.exp(-sum(lp for lp, _ in rows) / n)


def bits_per_byte(records: Records, metric: str) -> float:
    rows = _paired(records, "logprob", "n_bytes")
    n = sum(b for _, b in rows)
    if n <= 0:
        return float("nan")
    return -sum(lp for lp, _ in rows) / math.log(2) / n


def macro_f1(records: Records, metric: str) -> float:
    rows = [(int(g), int(p)) for g, p in _paired(records, "gold_label", "pred_label")]
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


def corpus_bleu(records: Records, metric: str) -> float:
    from sacrebleu.metrics import BLEU

    rows = _paired(records, *BLEU_KEYS)
    if not rows:
        return float("nan")
    sums = [sum(r[i] for r in rows) for i in range(len(BLEU_KEYS))]
    sys_len, ref_len = int(sums[0]), int(sums[1])
    correct = [int(x) for x in sums[2:6]]
    total = [int(x) for x in sums[6:10]]
    return float(BLEU.compute_bleu(correct, total, sys_len, ref_len, smooth_method="exp").score)


def ood_gap(records: Records, metric: str) -> float:
    ind, ood = _values(records, "acc_id"), _values(records, "acc_ood")
    if not ind or not ood:
        return float("nan")
    return sum(ind) / len(ind) - sum(ood) / len(ood)


def stereoset_icat(records: Records, metric: str) -> float:
    lms, ss = _values(records, "stereoset_lms"), _values(records, "stereoset_ss")
    if not lms or not ss:
        return float("nan")
    lm, s = sum(lms) / len(lms), sum(ss) / len(ss)
    return lm * min(s, 1 - s) / 0.5

"""Exact and near duplicates.

Exact: the same normalised text (case, punctuation and spacing ignored) over
the whole example. Near: Jaccard similarity of word 3-gram sets at least
`threshold` (0.7), found with MinHash (64 hashes) and LSH banding (16 bands ×
4 rows: pairs at Jaccard 0.7 become candidates with probability ≈ 0.98) and
then verified exactly. Only the later copy is flagged, naming the earlier row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aftertune.scan.text import encode, ngram_hashes, text_hash

_PERMS = 64
_BANDS = 16
_SEED = 20240607


@dataclass(frozen=True)
class Duplicate:
    row: int
    of: int  # the earlier row it copies
    jaccard: float  # 1.0 for exact duplicates
    exact: bool


def find_duplicates(row_words: Sequence[Sequence[str]], *, threshold: float = 0.7, n: int = 3) -> list[Duplicate]:
    """Every row that repeats an earlier one, exactly or nearly."""
    dups: dict[int, Duplicate] = {}
    first_of: dict[str, int] = {}
    for i, ws in enumerate(row_words):
        if not ws:
            continue
        key = text_hash(ws)
        if key in first_of:
            dups[i] = Duplicate(i, first_of[key], 1.0, True)
        else:
            first_of[key] = i
    reps = list(first_of.values())  # one representative per exact-duplicate group, in row order
    if len(reps) >= 2:
        for k, first, jac in _near_pairs([row_words[i] for i in reps], threshold, n):
            dups[reps[k]] = Duplicate(reps[k], reps[first], round(jac, 3), False)
    return sorted(dups.values(), key=lambda d: d.row)


def _shingle_sets(docs: Sequence[Sequence[str]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique shingle hashes of all docs concatenated, their owning doc); a doc shorter than n is one shingle."""
    enc = encode(docs)
    grams, owner, _ = enc.ngrams(n)
    short = np.nonzero((enc.lengths > 0) & (enc.lengths < n))[0]
    if len(short):
        extra = np.array([ngram_hashes(enc.doc(int(i)), int(enc.lengths[i]))[0] for i in short], dtype=np.uint64)
        grams, owner = np.concatenate([grams, extra]), np.concatenate([owner, short])
    order = np.lexsort((grams, owner))
    grams, owner = grams[order], owner[order]
    keep = np.ones(len(grams), dtype=bool)
    keep[1:] = (grams[1:] != grams[:-1]) | (owner[1:] != owner[:-1])
    return grams[keep], owner[keep]


def _near_pairs(docs: Sequence[Sequence[str]], threshold: float, n: int) -> list[tuple[int, int, float]]:
    """(doc, earlier doc, Jaccard) for each doc with an earlier near duplicate (the earliest LSH partner that verifies)."""
    grams, owner = _shingle_sets(docs, n)
    present = np.unique(owner)
    if len(present) < 2:
        return []
    starts = np.searchsorted(owner, present)
    ends = np.append(starts[1:], len(owner))
    rng = np.random.default_rng(_SEED)
    a = rng.integers(1, 2**63, size=_PERMS, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=_PERMS, dtype=np.uint64)
    sig = np.empty((len(present), _PERMS), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for p in range(_PERMS):
            sig[:, p] = np.minimum.reduceat(grams * a[p] + b[p], starts)
        rows_per_band = _PERMS // _BANDS
        mix = np.uint64(0x9E3779B97F4A7C15)
        pairs: set[tuple[int, int]] = set()
        for band in range(_BANDS):
            cols = sig[:, band * rows_per_band : (band + 1) * rows_per_band]
            key = cols[:, 0].copy()
            for c in range(1, rows_per_band):
                key = key * mix + cols[:, c]
            _, first_idx, inverse = np.unique(key, return_index=True, return_inverse=True)
            first = first_idx[inverse]
            for k in np.nonzero(first != np.arange(len(key)))[0]:
                pairs.add((int(k), int(first[k])))
    if not pairs:
        return []
    cand = np.array(sorted(pairs), dtype=np.int64)
    estimate = (sig[cand[:, 0]] == sig[cand[:, 1]]).mean(axis=1)  # MinHash estimate of the Jaccard
    cand = cand[estimate >= threshold - 0.15]  # 64 hashes: the estimate's sd is <= 0.06
    best: dict[int, tuple[int, float]] = {}
    for k, f in cand.tolist():
        if k in best:
            continue
        s1, s2 = grams[starts[k] : ends[k]], grams[starts[f] : ends[f]]
        inter = len(np.intersect1d(s1, s2, assume_unique=True))
        jac = inter / (len(s1) + len(s2) - inter)
        if jac >= threshold:
            best[k] = (f, jac)
    return [(int(present[k]), int(present[f]), jac) for k, (f, jac) in sorted(best.items())]

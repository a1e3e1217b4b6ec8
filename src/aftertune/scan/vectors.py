"""Hashed TF-IDF vectors (word unigrams + bigrams) and cosine search with scipy sparse.

No vocabulary to store: feature ids are stable word hashes modulo `dim`, so a
reference matrix built once can be cached and compared with any text.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import sparse

from aftertune.scan.text import STOPWORDS, word_hash

DIM = 1 << 20


def stem(w: str) -> str:
    """A deliberately light suffix stripper: hacking/hacked/hacks → hack."""
    if len(w) > 5 and w.endswith("ing"):
        return w[:-3]
    if len(w) > 4 and w.endswith("ed"):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def features(ws: Sequence[str], dim: int = DIM) -> list[int]:
    content = [stem(w) for w in ws if w not in STOPWORDS]
    hs = [word_hash(w) for w in content]
    feats = [h % dim for h in hs]
    feats.extend((a * 1_000_003 + b) % dim for a, b in itertools.pairwise(hs))
    return feats


def count_matrix(docs: Sequence[Sequence[str]], dim: int = DIM) -> sparse.csr_matrix:
    indptr = [0]
    indices: list[int] = []
    for ws in docs:
        indices.extend(features(ws, dim))
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float32)
    m = sparse.csr_matrix((data, np.asarray(indices, dtype=np.int64), np.asarray(indptr)), shape=(len(docs), dim))
    m.sum_duplicates()
    return m


class TfidfIndex:
    """Reference documents as L2-normalised TF-IDF rows; `nearest` gives each query's best match."""

    def __init__(self, docs: Sequence[Sequence[str]], dim: int = DIM) -> None:
        self.dim = dim
        counts = count_matrix(docs, dim)
        df = np.bincount(counts.indices, minlength=dim).astype(np.float32)
        n = max(len(docs), 1)
        self.idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
        self.matrix = self._weight(counts)

    def _weight(self, counts: sparse.csr_matrix) -> sparse.csr_matrix:
        m = counts.copy()
        m.data = (1.0 + np.log(m.data)) * self.idf[m.indices]
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sparse.csr_matrix(sparse.diags(1.0 / norms) @ m)

    def vectors(self, docs: Sequence[Sequence[str]]) -> sparse.csr_matrix:
        return self._weight(count_matrix(docs, self.dim))

    def nearest(self, docs: Sequence[Sequence[str]], batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(best cosine, index of the best reference) for each query document."""
        best = np.zeros(len(docs), dtype=np.float32)
        arg = np.full(len(docs), -1, dtype=np.int64)
        if self.matrix.shape[0] == 0:
            return best, arg
        ref_t = self.matrix.T.tocsr()
        for start in range(0, len(docs), batch):
            q = self.vectors(docs[start : start + batch])
            sims = (q @ ref_t).tocsr()
            for i in range(sims.shape[0]):
                lo, hi = sims.indptr[i], sims.indptr[i + 1]
                if hi > lo:
                    j = int(np.argmax(sims.data[lo:hi]))
                    best[start + i] = sims.data[lo + j]
                    arg[start + i] = sims.indices[lo + j]
        return best, arg

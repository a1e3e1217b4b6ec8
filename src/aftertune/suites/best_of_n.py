"""Best-of-n from N scored samples of one prompt: the per-prompt estimator the overoptimization suite records.

It lives with the suites because a suite's records carry it (`proxy_best_of_n`, `gold_best_of_n`), and the
comparison, which builds the curves from it (`compare.overoptimization`), imports suites, not the other way round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def best_of_n(proxy: Sequence[float], gold: Sequence[float], n: int) -> tuple[float, float]:
    """(E[proxy], E[gold]) of the proxy-argmax of n samples drawn without replacement from these N, exactly."""
    p = np.asarray(proxy, dtype=float)
    g = np.asarray(gold, dtype=float)
    if p.shape != g.shape or p.ndim != 1:
        raise ValueError(f"proxy and gold must be equally long lists, got {p.shape} and {g.shape}")
    if not 1 <= n <= p.size:
        raise ValueError(f"best-of-{n} needs at least {n} scored samples, got {p.size}")
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(g))):
        raise ValueError("proxy and gold scores must be finite numbers")
    order = np.argsort(p, kind="stable")
    p, g = p[order], g[order]
    total = math.comb(p.size, n)
    exp_proxy = exp_gold = 0.0
    start = 0
    while start < p.size:
        end = start + 1  # the tied group is ranks start+1 .. end (1-indexed)
        while end < p.size and p[end] == p[start]:
            end += 1
        weight = (math.comb(end, n) - math.comb(start, n)) / total  # P(the subset's maximum lies in the group)
        exp_proxy += weight * float(p[start])
        exp_gold += weight * float(g[start:end].mean())
        start = end
    return exp_proxy, exp_gold

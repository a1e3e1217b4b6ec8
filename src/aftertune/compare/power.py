"""Statistical power of the paired tests: how small a change a sample can see, and how many items it takes.

A "no significant change" says little unless the report also says what size of
change the sample could have seen. For each comparison row this module gives
the **minimum detectable effect** (MDE): the smallest true change that the
row's own test detects with probability `power` (80 % by default) at level
`alpha`, given the spread the run observed.

* pass/fail rows (exact conditional McNemar test): the power is computed
  exactly, summing over the number of discordant pairs m ~ Binomial(n, ψ) and
  the test's rejection region for each m (Binomial(m, ½) tails). ψ, the share
  of items whose outcome differs between the models, is the observed
  discordance; a change δ needs at least ψ = |δ| (every flip in one
  direction), so ψ = max(observed, |δ|). Under the alternative p12 = (ψ + δ)/2
  and p21 = (ψ − δ)/2.
* mean scores (paired permutation test; power as the paired t-test that it
  approximates): the noncentral-t power of a one-sample t-test on the per-item
  differences, with their observed standard deviation.
* other aggregates (bootstrap): normal approximation from the bootstrap
  standard error of the difference, MDE = (z_{1−α/2} + z_power) × SE.

`n_for_*` invert the same power functions to size a sample (`audit.power`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

DEFAULT_POWER = 0.8
MAX_ITEMS = 20_000  # sizing stops here: beyond it no audit on one machine is affordable


@lru_cache(maxsize=64)
def _mcnemar_cutoffs(n: int, alpha: float) -> np.ndarray:
    """c[m] = the largest k with 2·BinomCDF(k; m, ½) < alpha (−1 when none), for m = 0..n discordant pairs."""
    return stats.binom.ppf(alpha / 2, np.arange(n + 1), 0.5).astype(int) - 1


def mcnemar_power(n: int, p12: float, p21: float, alpha: float) -> float:
    """Probability that the two-sided exact McNemar test rejects at `alpha`, with n pairs and discordant rates p12, p21."""
    psi = p12 + p21
    if n <= 0 or psi <= 0:
        return 0.0
    m = np.arange(n + 1)
    cut = _mcnemar_cutoffs(n, alpha)
    q = p12 / psi
    reject = np.where(cut >= 0, stats.binom.cdf(cut, m, q) + stats.binom.sf(m - cut - 1, m, q), 0.0)
    return float(np.clip(np.sum(stats.binom.pmf(m, n, min(psi, 1.0)) * reject), 0.0, 1.0))


def binary_power(n: int, effect: float, discordance: float, alpha: float) -> float:
    """Power of the exact McNemar test against a change of `effect` (a difference of rates) at the given discordance."""
    d = abs(effect)
    psi = min(1.0, max(discordance, d))
    if d == 0 or d > 1:
        return 0.0
    return mcnemar_power(n, (psi + d) / 2, (psi - d) / 2, alpha)


def binary_mde(n: int, discordance: float, alpha: float, power: float = DEFAULT_POWER) -> float | None:
    """Smallest change of a rate that `n` paired items detect with `power`; None when not even 100 points would be."""
    if n <= 0 or binary_power(n, 1.0, 1.0, alpha) < power:
        return None
    grid = np.linspace(0.0, 1.0, 201)[1:]
    powers = [binary_power(n, d, discordance, alpha) for d in grid]
    first = next(i for i, p in enumerate(powers) if p >= power)
    lo = 0.0 if first == 0 else float(grid[first - 1])
    hi = float(grid[first])
    for _ in range(30):  # the exact power is a step function of δ: bisect to the first δ reaching `power`
        mid = (lo + hi) / 2
        if binary_power(n, mid, discordance, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def n_for_binary(effect: float, discordance: float, alpha: float, power: float = DEFAULT_POWER) -> int | None:
    """Fewest paired items whose exact McNemar test detects `effect` with `power` (None beyond MAX_ITEMS)."""
    return _smallest_n(lambda n: binary_power(n, effect, discordance, alpha) >= power)


def score_power(n: int, effect: float, sd_diff: float, alpha: float) -> float:
    """Power of a two-sided one-sample t-test on n per-item differences with standard deviation `sd_diff`."""
    if n < 2 or sd_diff <= 0:
        return 0.0
    df = n - 1
    nc = abs(effect) / sd_diff * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, df)
    lower = stats.nct.cdf(-crit, df, nc)  # scipy's nct gives NaN far in this tail, where it is 0
    return float(stats.nct.sf(crit, df, nc) + (0.0 if math.isnan(lower) else lower))


def score_mde(n: int, sd_diff: float, alpha: float, power: float = DEFAULT_POWER) -> float | None:
    """Smallest change of a mean score that n paired items detect with `power` (None when the spread is 0 or n < 2)."""
    if n < 2 or not sd_diff > 0:
        return None
    f = lambda d: score_power(n, d * sd_diff, sd_diff, alpha) - power  # noqa: E731
    hi = 1.0
    while f(hi) < 0:
        hi *= 2
    return float(optimize.brentq(f, 1e-9, hi, xtol=1e-10) * sd_diff)


def n_for_score(effect: float, sd_diff: float, alpha: float, power: float = DEFAULT_POWER) -> int | None:
    """Fewest paired items whose t-test on the differences detects `effect` with `power` (None beyond MAX_ITEMS)."""
    if not sd_diff > 0:
        return 2
    return _smallest_n(lambda n: score_power(n, effect, sd_diff, alpha) >= power, start=2)


def bootstrap_mde(standard_error: float, alpha: float, power: float = DEFAULT_POWER) -> float | None:
    """Normal-approximation MDE from the bootstrap standard error of a difference of aggregates."""
    if not standard_error > 0:
        return None
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * standard_error)


def bootstrap_power(effect: float, standard_error: float, alpha: float) -> float:
    if not standard_error > 0:
        return 0.0
    z = stats.norm.ppf(1 - alpha / 2)
    shift = abs(effect) / standard_error
    return float(stats.norm.sf(z - shift) + stats.norm.cdf(-z - shift))


def _smallest_n(ok: object, start: int = 1) -> int | None:
    """Smallest n ≥ start with ok(n): doubling, then bisection (power grows with n up to the exact test's ripples)."""
    assert callable(ok)
    hi = start
    while not ok(hi):
        if hi >= MAX_ITEMS:
            return None
        hi = min(MAX_ITEMS, hi * 2)
    lo = max(start, hi // 2)
    if lo == hi or ok(lo):
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi

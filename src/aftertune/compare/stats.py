"""Paired statistics for two models scored on the same items.

Every function here takes per-item outcomes of a *reference* model and a *new*
model on the same items, in the same order, and answers "did it change, by how
much, how sure". Methods (chosen for good small-sample coverage, following
Fagerland, Lydersen & Laake, "Recommended tests and confidence intervals for
paired binomial proportions", Stat Med 2014):

* pass/fail outcomes
  - test: exact (conditional) McNemar test, two-sided: 2 × binomial CDF of the
    smaller discordant count among the discordant pairs, capped at 1;
  - difference new − reference: Tango's asymptotic score interval (Tango 1998),
    the inversion of the score test whose value at 0 is McNemar's statistic;
  - ratio new / reference (the "risk multiplier"): Bonett–Price hybrid Wilson
    score interval (Bonett & Price 2006), closed form, defined when either
    margin is 0 (then [0, ∞) or an open upper end);
  - one model's rate: Wilson score interval.
* scores (any aggregate: mean, macro-F1, perplexity, ...)
  - interval: paired bootstrap, items resampled jointly for both models,
    percentile interval, seeded;
  - test: paired permutation test (each item's two outcomes swapped at random),
    two-sided, p = (1 + #{|T*| ≥ |T|}) / (1 + B), seeded.
* several tests: Holm's step-down adjustment of p-values.
* several training seeds: mean and Student-t interval across seeds.

Contingency table convention (as in the textbook): rows = new model,
columns = reference model, index 1 = outcome 1 ("the metric fired"):
n11 both 1, n12 new 1 & reference 0, n21 new 0 & reference 1, n22 both 0.
Difference = (n12 − n21) / N, ratio = (n11 + n12) / (n11 + n21).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize, stats

DEFAULT_CONFIDENCE = 0.95


def _z(confidence: float) -> float:
    return float(stats.norm.ppf(1 - (1 - confidence) / 2))


# ---------------------------------------------------------------------------
# pass/fail outcomes
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedTable:
    """The paired 2×2 table; see the module docstring for the convention."""

    n11: int  # both 1
    n12: int  # new 1, reference 0
    n21: int  # new 0, reference 1
    n22: int  # both 0

    @property
    def n(self) -> int:
        return self.n11 + self.n12 + self.n21 + self.n22

    @property
    def new_rate(self) -> float:
        return (self.n11 + self.n12) / self.n if self.n else math.nan

    @property
    def reference_rate(self) -> float:
        return (self.n11 + self.n21) / self.n if self.n else math.nan

    @classmethod
    def from_outcomes(cls, reference: Sequence[float], new: Sequence[float]) -> PairedTable:
        r = np.asarray(reference, dtype=float)
        t = np.asarray(new, dtype=float)
        if r.shape != t.shape:
            raise ValueError("reference and new outcomes must pair up item by item")
        bad = ~np.isin(r, (0.0, 1.0)) | ~np.isin(t, (0.0, 1.0))
        if bad.any():
            raise ValueError("binary outcomes must be 0 or 1")
        rb, tb = r == 1, t == 1
        return cls(int(np.sum(tb & rb)), int(np.sum(tb & ~rb)), int(np.sum(~tb & rb)), int(np.sum(~tb & ~rb)))


def mcnemar_exact(n12: int, n21: int) -> float:
    """Two-sided exact conditional McNemar p-value from the two discordant counts (1.0 when none)."""
    m = n12 + n21
    if m == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(n12, n21), m, 0.5)))


def mcnemar_asymptotic(n12: int, n21: int) -> tuple[float, float]:
    """McNemar's score statistic Z = (n12 − n21)/√(n12 + n21) and its two-sided normal p-value."""
    m = n12 + n21
    if m == 0:
        return 0.0, 1.0
    z = (n12 - n21) / math.sqrt(m)
    return z, float(2 * stats.norm.sf(abs(z)))


def _tango_statistic(delta: float, n12: int, n21: int, n: int) -> float:
    # constrained maximum-likelihood estimate of p21 given the difference `delta`
    a = 2.0 * n
    b = -n12 - n21 + (2.0 * n - n12 + n21) * delta
    c = -n21 * delta * (1.0 - delta)
    p21 = (math.sqrt(max(b * b - 4 * a * c, 0.0)) - b) / (2 * a)
    var = n * (2 * p21 + delta * (1 - delta))
    num = n12 - n21 - n * delta
    if var <= 0:
        return math.copysign(math.inf, num) if num else 0.0
    return num / math.sqrt(var)


def tango_diff_ci(table: PairedTable, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Tango's score interval for new rate − reference rate (NaN, NaN for an empty table)."""
    n, n12, n21 = table.n, table.n12, table.n21
    if n == 0:
        return math.nan, math.nan
    z = _z(confidence)
    est = (n12 - n21) / n
    eps = 1e-12
    f = lambda d, target: _tango_statistic(d, n12, n21, n) - target  # noqa: E731
    lo = -1.0 if est <= -1 else optimize.brentq(f, -1 + eps, min(est, 1 - eps), args=(z,), xtol=1e-12)
    hi = 1.0 if est >= 1 else optimize.brentq(f, max(est, -1 + eps), 1 - eps, args=(-z,), xtol=1e-12)
    return float(lo), float(hi)


def _wilson(k: float, n: float, z: float) -> tuple[float, float]:
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = 2 * k + z * z
    half = z * math.sqrt(z * z + 4 * k * (1 - p))
    den = 2 * (n + z * z)
    return max(0.0, (centre - half) / den), min(1.0, (centre + half) / den)


def wilson_ci(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval for one proportion k/n."""
    return _wilson(k, n, _z(confidence))


def bonett_price_ratio_ci(table: PairedTable, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Bonett–Price hybrid Wilson score interval for new rate / reference rate (may be [0, inf])."""
    n11, n12, n21 = table.n11, table.n12, table.n21
    nstar = n11 + n12 + n21
    if nstar == 0:
        return 0.0, math.inf
    n1p, np1 = n11 + n12, n11 + n21
    a = math.sqrt((n12 + n21 + 2) / ((n1p + 1) * (np1 + 1)))
    b = math.sqrt((1 - (n1p + 1) / (nstar + 2)) / (n1p + 1))
    c = math.sqrt((1 - (np1 + 1) / (nstar + 2)) / (np1 + 1))
    z = a / (b + c) * _z(confidence)
    l1, u1 = _wilson(n1p, nstar, z)
    l2, u2 = _wilson(np1, nstar, z)
    lo = l1 / u2 if u2 > 0 else math.inf
    hi = u1 / l2 if l2 > 0 else math.inf
    return float(lo), float(hi)


def ratio_estimate(table: PairedTable) -> float:
    """new rate / reference rate: inf when only the reference rate is 0, NaN when both are."""
    num, den = table.n11 + table.n12, table.n11 + table.n21
    if den == 0:
        return math.nan if num == 0 else math.inf
    return num / den


# ---------------------------------------------------------------------------
# scores: paired bootstrap and permutation
# ---------------------------------------------------------------------------

Statistic = Callable[[Sequence[Any]], float]


@dataclass(frozen=True)
class BootstrapResult:
    reference_ci: tuple[float, float]
    new_ci: tuple[float, float]
    delta_ci: tuple[float, float]
    ratio_ci: tuple[float, float] | None  # None when the reference aggregate can be ≤ 0
    resamples: int
    delta_se: float = math.nan  # standard deviation of the resampled differences (the bootstrap standard error)


def _percentile(values: np.ndarray, confidence: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    a = (1 - confidence) / 2
    lo, hi = np.quantile(values, [a, 1 - a])
    return float(lo), float(hi)


def _bootstrap_draws(n: int, resamples: int, seed: int, chunk: int) -> Any:
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def paired_bootstrap(
    reference: Sequence[Any],
    new: Sequence[Any],
    statistic: Statistic | None = None,
    *,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> BootstrapResult:
    """Percentile intervals for each model's aggregate, their difference and ratio.

    Items are resampled jointly (the same item indices for both models), which
    keeps the pairing. With `statistic=None` the items are numbers and the
    aggregate is their mean (vectorised); otherwise `statistic(list_of_items)`
    is called on each resample of each model.
    """
    n = len(reference)
    if n != len(new):
        raise ValueError("reference and new must pair up item by item")
    if n == 0:
        nan2 = (math.nan, math.nan)
        return BootstrapResult(nan2, nan2, nan2, None, 0)
    ref_stats = np.empty(resamples)
    new_stats = np.empty(resamples)
    if statistic is None:
        r = np.asarray(reference, dtype=float)
        t = np.asarray(new, dtype=float)
        chunk = max(1, min(resamples, 2_000_000 // n))
        pos = 0
        for idx in _bootstrap_draws(n, resamples, seed, chunk):
            ref_stats[pos : pos + len(idx)] = r[idx].mean(axis=1)
            new_stats[pos : pos + len(idx)] = t[idx].mean(axis=1)
            pos += len(idx)
    else:
        ref_list, new_list = list(reference), list(new)
        pos = 0
        for idx in _bootstrap_draws(n, resamples, seed, 256):
            for row in idx:
                ref_stats[pos] = statistic([ref_list[i] for i in row])
                new_stats[pos] = statistic([new_list[i] for i in row])
                pos += 1
    ratio_ci = None
    if np.all(ref_stats > 0):
        ratio_ci = _percentile(new_stats / ref_stats, confidence)
    return BootstrapResult(
        _percentile(ref_stats, confidence),
        _percentile(new_stats, confidence),
        _percentile(new_stats - ref_stats, confidence),
        ratio_ci,
        resamples,
        _finite_sd(new_stats - ref_stats),
    )


def _finite_sd(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    return float(values.std(ddof=1)) if values.size > 1 else math.nan


def bootstrap_ci(
    values: Sequence[Any],
    statistic: Statistic | None = None,
    *,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> tuple[float, float]:
    """Percentile bootstrap interval of one model's aggregate (the mean when `statistic` is None)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    draws = np.empty(resamples)
    pos = 0
    if statistic is None:
        v = np.asarray(values, dtype=float)
        for idx in _bootstrap_draws(n, resamples, seed, max(1, min(resamples, 2_000_000 // n))):
            draws[pos : pos + len(idx)] = v[idx].mean(axis=1)
            pos += len(idx)
    else:
        items = list(values)
        for idx in _bootstrap_draws(n, resamples, seed, 256):
            for row in idx:
                draws[pos] = statistic([items[i] for i in row])
                pos += 1
    return _percentile(draws, confidence)


def paired_permutation_pvalue(
    reference: Sequence[Any],
    new: Sequence[Any],
    statistic: Statistic | None = None,
    *,
    permutations: int = 9999,
    seed: int = 0,
) -> float:
    """Two-sided paired permutation test of "no difference" (each item's pair swapped at random).

    T = statistic(new) − statistic(reference); with `statistic=None`, T is the
    mean difference and swapping a pair flips the sign of its difference.
    """
    n = len(reference)
    if n != len(new):
        raise ValueError("reference and new must pair up item by item")
    if n == 0:
        return math.nan
    rng = np.random.default_rng(seed)
    if statistic is None:
        d = np.asarray(new, dtype=float) - np.asarray(reference, dtype=float)
        observed = abs(d.mean())
        if not np.any(d):
            return 1.0
        count = 0
        chunk = max(1, min(permutations, 2_000_000 // n))
        done = 0
        while done < permutations:
            size = min(chunk, permutations - done)
            signs = rng.integers(0, 2, size=(size, n)) * 2 - 1
            count += int(np.sum(np.abs((signs * d).mean(axis=1)) >= observed - 1e-12 * max(1.0, observed)))
            done += size
        return (1 + count) / (1 + permutations)
    ref_list, new_list = list(reference), list(new)
    observed = abs(statistic(new_list) - statistic(ref_list))
    if not math.isfinite(observed):
        return math.nan
    count = 0
    for _ in range(permutations):
        swap = rng.integers(0, 2, size=n).astype(bool)
        a = [new_list[i] if s else ref_list[i] for i, s in enumerate(swap)]
        b = [ref_list[i] if s else new_list[i] for i, s in enumerate(swap)]
        if abs(statistic(b) - statistic(a)) >= observed - 1e-12 * max(1.0, observed):
            count += 1
    return (1 + count) / (1 + permutations)


# ---------------------------------------------------------------------------
# families of tests and seeds
# ---------------------------------------------------------------------------


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order; NaN entries stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def t_interval(values: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, float]:
    """Mean and Student-t interval of independent replicates (e.g. one value per training seed)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size == 1:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(1 - (1 - confidence) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half

"""Reward over-optimisation: KL from the start, best-of-n, and where proxy and gold reward part ways.

Gao et al. 2022 ("Scaling laws for reward model overoptimization") optimise a
*proxy* reward and watch a held-out *gold* reward: past some distance from the
starting policy the proxy keeps rising while the gold falls. This module holds
the arithmetic, on numbers only (no model is loaded here):

* `sequence_kl` / `kl_estimate`: KL(policy ‖ start) by the standard Monte-Carlo
  estimator. For responses y sampled from the policy,
  KL = E_y[log π(y|x) − log π₀(y|x)], and log π(y|x) is the sum of the
  response's per-token log-probabilities, so each sample gives
  Σ_t (log π(y_t|·) − log π₀(y_t|·)); the estimate is their mean, with a
  Student-t interval over samples. Single samples can be negative; the mean is
  unbiased.
* `best_of_n_kl(n)`: the analytic KL of best-of-n sampling from its own base
  policy, log n − (n − 1)/n (Stiennon et al. 2020; Gao et al. 2022). Beirami
  et al. 2024 show it is an upper bound on the exact KL (equal when no two
  samples tie); it is the usual x axis of best-of-n curves.
* `best_of_n` (in `suites/best_of_n.py`, beside the suite that records it per prompt; imported here): the
  unbiased estimator of E[gold of the proxy-argmax among n]
  from N ≥ n scored samples (Nakano et al. 2021, WebGPT; Gao et al. 2022):
  sorted by proxy, the sample of rank i (1 = lowest) is the maximum of a
  uniformly drawn n-subset with probability C(i−1, n−1) / C(N, n), so the
  estimate is that weighted sum of gold scores; it equals the average over
  all C(N, n) subsets, without resampling noise. Proxy ties are broken
  uniformly at random (a tied group shares its weight equally).
* `divergence`: curves of proxy and gold against KL (best-of-n sizes or
  training checkpoints) averaged over prompts, with bootstrap intervals over
  prompts, and the test for over-optimisation: did the proxy still rise while
  the gold fell, and from where (the gold's peak, with its interval).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aftertune.compare.stats import DEFAULT_CONFIDENCE, t_interval
from aftertune.suites.best_of_n import best_of_n

Interval = tuple[float, float]


# ---------------------------------------------------------------------------
# KL(policy ‖ start)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KLEstimate:
    """Mean sequence KL in nats over `n` sampled responses, with its Student-t interval."""

    kl: float
    ci: Interval
    n: int


def sequence_kl(policy_logprobs: Sequence[float], start_logprobs: Sequence[float]) -> float:
    """log π(y|x) − log π₀(y|x) of one sampled response, from the two models' per-token log-probabilities."""
    if len(policy_logprobs) != len(start_logprobs):
        raise ValueError(f"per-token log-probabilities differ in length ({len(policy_logprobs)} policy, "
                         f"{len(start_logprobs)} start): both must score the same response tokens")
    return float(math.fsum(p - s for p, s in zip(policy_logprobs, start_logprobs, strict=True)))


def kl_estimate(samples: Sequence[tuple[Sequence[float], Sequence[float]]],
                confidence: float = DEFAULT_CONFIDENCE) -> KLEstimate:
    """KL(policy ‖ start) from (policy, start) per-token log-probabilities of responses sampled from the policy."""
    values = [sequence_kl(p, s) for p, s in samples]
    mean, lo, hi = t_interval(values, confidence)
    return KLEstimate(mean, (lo, hi), len(values))


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ base) = log n − (n − 1)/n in nats (0 at n = 1)."""
    if n < 1:
        raise ValueError(f"best-of-n needs n >= 1, got {n}")
    return math.log(n) - (n - 1) / n


# ---------------------------------------------------------------------------
# best-of-n from N scored samples
# ---------------------------------------------------------------------------


def best_of_n_curves(prompts: Sequence[tuple[Sequence[float], Sequence[float]]],
                     ns: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt best-of-n expectations: (proxy, gold), each an array [prompt, n]."""
    proxy = np.empty((len(prompts), len(ns)))
    gold = np.empty((len(prompts), len(ns)))
    for i, (p, g) in enumerate(prompts):
        for j, n in enumerate(ns):
            proxy[i, j], gold[i, j] = best_of_n(p, g, n)
    return proxy, gold


# ---------------------------------------------------------------------------
# where proxy and gold part ways
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CurvePoint:
    """One point of the curves: its position (n or step), KL from the start, mean proxy and gold over prompts."""

    x: float
    kl: float
    proxy: float
    proxy_ci: Interval
    gold: float
    gold_ci: Interval


@dataclass(frozen=True)
class TailChange:
    """Change of proxy and gold from point `x` to the last point, with simultaneous intervals."""

    x: float
    proxy_change: float
    proxy_ci: Interval
    gold_change: float
    gold_ci: Interval

    @property
    def diverging(self) -> bool:
        """Proxy rose and gold fell, both beyond their intervals."""
        return self.proxy_ci[0] > 0 and self.gold_ci[1] < 0


@dataclass(frozen=True)
class Divergence:
    """Proxy and gold curves and the over-optimisation verdict.

    Over-optimised when some tail change is diverging: from a tested point to
    the last one the proxy rose while the gold fell, beyond simultaneous
    intervals. `gold_peak` is the point where mean gold is highest (where
    proxy still rises but gold starts to fall, once over-optimised) and
    `gold_peak_ci` the percentile interval of that position over bootstrap
    resamples of prompts.
    """

    points: list[CurvePoint]
    tail: list[TailChange]
    gold_peak: float
    gold_peak_ci: Interval
    confidence: float
    resamples: int

    @property
    def overoptimized(self) -> bool:
        return any(t.diverging for t in self.tail)

    @property
    def onset(self) -> float | None:
        """The gold peak when over-optimisation is shown, else None."""
        return self.gold_peak if self.overoptimized else None


def _percentiles(draws: np.ndarray, confidence: float) -> np.ndarray:
    a = (1 - confidence) / 2
    return np.quantile(draws, [a, 1 - a], axis=0)


def divergence(proxy: np.ndarray, gold: np.ndarray, xs: Sequence[float], kls: Sequence[float], *,
               test_at: Sequence[float] | None = None, confidence: float = DEFAULT_CONFIDENCE,
               resamples: int = 2000, seed: int = 0) -> Divergence:
    """Mean proxy and gold per point over prompts (arrays [prompt, point]), intervals and the over-optimisation test.

    The test contrasts each point of `test_at` (default: every point but the
    last) with the last point: proxy change and gold change, prompts
    resampled jointly for both, Bonferroni-adjusted over the tested points so
    that a false "over-optimised" verdict has probability at most
    1 − `confidence`. Fixed contrasts, rather than "from the observed gold
    peak", keep the peak's selection out of the test.
    """
    proxy = np.asarray(proxy, dtype=float)
    gold = np.asarray(gold, dtype=float)
    if proxy.shape != gold.shape or proxy.ndim != 2 or proxy.shape[1] != len(xs) or len(kls) != len(xs):
        raise ValueError(f"proxy {proxy.shape} and gold {gold.shape} must be [prompt, point] arrays with one "
                         f"column per x ({len(xs)}) and per KL ({len(kls)})")
    if proxy.shape[0] < 2 or proxy.shape[1] < 2:
        raise ValueError("the curves need at least 2 prompts and 2 points")
    position = {x: j for j, x in enumerate(xs)}
    wanted = list(test_at) if test_at is not None else list(xs[:-1])
    tested = [position.get(x, len(xs) - 1) for x in wanted]
    if not tested or any(j == len(xs) - 1 for j in tested):
        raise ValueError(f"test_at {wanted} must name points of xs before the last one")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, proxy.shape[0], size=(resamples, proxy.shape[0]))
    proxy_draws = proxy[idx].mean(axis=1)  # [resample, point]
    gold_draws = gold[idx].mean(axis=1)
    proxy_ci = _percentiles(proxy_draws, confidence)
    gold_ci = _percentiles(gold_draws, confidence)
    proxy_mean, gold_mean = proxy.mean(axis=0), gold.mean(axis=0)
    points = [CurvePoint(float(x), float(k), float(proxy_mean[j]), (float(proxy_ci[0, j]), float(proxy_ci[1, j])),
                         float(gold_mean[j]), (float(gold_ci[0, j]), float(gold_ci[1, j])))
              for j, (x, k) in enumerate(zip(xs, kls, strict=True))]
    family = 1 - (1 - confidence) / len(tested)
    last = len(xs) - 1
    tail = []
    for j in tested:
        dp = _percentiles(proxy_draws[:, last] - proxy_draws[:, j], family)
        dg = _percentiles(gold_draws[:, last] - gold_draws[:, j], family)
        tail.append(TailChange(float(xs[j]), float(proxy_mean[last] - proxy_mean[j]), (float(dp[0]), float(dp[1])),
                               float(gold_mean[last] - gold_mean[j]), (float(dg[0]), float(dg[1]))))
    peaks = np.asarray(xs, dtype=float)[np.argmax(gold_draws, axis=1)]
    peak_ci = _percentiles(peaks, confidence)
    return Divergence(points, tail, float(xs[int(np.argmax(gold_mean))]), (float(peak_ci[0]), float(peak_ci[1])),
                      confidence, resamples)


def powers_of_two(n_max: int) -> list[int]:
    """1, 2, 4, … up to n_max, with n_max itself last."""
    out = [1 << k for k in range(n_max.bit_length()) if (1 << k) < n_max]
    return [*out, n_max]


def best_of_n_divergence(prompts: Sequence[tuple[Sequence[float], Sequence[float]]], n_max: int = 64, *,
                         confidence: float = DEFAULT_CONFIDENCE, resamples: int = 2000,
                         seed: int = 0) -> Divergence:
    """Best-of-n curves for n = 1 … n_max against the analytic KL, tested at n = 1, 2, 4, … against n_max.

    Each prompt gives (proxy scores, gold scores) of its N ≥ n_max samples.
    """
    short = [len(p) for p, _ in prompts if len(p) < n_max]
    if short:
        raise ValueError(f"best-of-{n_max} needs at least {n_max} samples per prompt; {len(short)} prompt(s) "
                         f"have fewer (smallest {min(short)})")
    ns = list(range(1, n_max + 1))
    proxy, gold = best_of_n_curves(prompts, ns)
    return divergence(proxy, gold, ns, [best_of_n_kl(n) for n in ns], test_at=powers_of_two(n_max)[:-1],
                      confidence=confidence, resamples=resamples, seed=seed)

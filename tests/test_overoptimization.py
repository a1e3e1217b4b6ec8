"""Over-optimisation math (compare/overoptimization.py) against hand computation and brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from aftertune.compare.overoptimization import (
    best_of_n,
    best_of_n_divergence,
    best_of_n_kl,
    divergence,
    kl_estimate,
    powers_of_two,
    sequence_kl,
)


def test_best_of_n_kl_by_hand():
    assert best_of_n_kl(1) == 0.0
    assert best_of_n_kl(2) == pytest.approx(0.6931471805599453 - 0.5)
    assert best_of_n_kl(4) == pytest.approx(1.3862943611198906 - 0.75)
    assert best_of_n_kl(64) == pytest.approx(4.1588830833596715 - 63 / 64)
    with pytest.raises(ValueError):
        best_of_n_kl(0)


def test_kl_estimate_by_hand():
    # two sampled responses, per-token log-probabilities under the policy and the start model
    samples = [([-0.5, -1.0, -0.25], [-1.0, -1.5, -0.75]),  # 0.5 + 0.5 + 0.5 = 1.5
               ([-2.0, -0.1], [-1.5, -0.6])]  # -0.5 + 0.5 = 0.0
    assert sequence_kl(*samples[0]) == pytest.approx(1.5)
    assert sequence_kl(*samples[1]) == pytest.approx(0.0)
    est = kl_estimate(samples)
    assert est.kl == pytest.approx(0.75) and est.n == 2
    half = 12.706204736174707 * math.sqrt(((1.5 - 0.75) ** 2 + (0.0 - 0.75) ** 2) / 1) / math.sqrt(2)  # t(0.975, 1)
    assert est.ci == pytest.approx((0.75 - half, 0.75 + half))
    with pytest.raises(ValueError, match="differ in length"):
        sequence_kl([-1.0], [-1.0, -2.0])


def _brute_force(proxy, gold, n):
    """Average over every n-subset of the gold (and proxy) of its proxy-argmax; ties share equally."""
    tot_p = tot_g = 0.0
    subsets = list(itertools.combinations(range(len(proxy)), n))
    for sub in subsets:
        top = max(proxy[i] for i in sub)
        winners = [i for i in sub if proxy[i] == top]
        tot_p += top
        tot_g += sum(gold[i] for i in winners) / len(winners)
    return tot_p / len(subsets), tot_g / len(subsets)


@pytest.mark.parametrize("proxy", [
    [0.3, -1.2, 2.5, 0.9, 1.7, -0.4, 0.0],  # distinct
    [1.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0],  # ties, ties at the top
])
def test_best_of_n_matches_enumeration(proxy):
    gold = [0.5, 1.5, -1.0, 2.0, 0.25, 3.0, -0.75]
    for n in range(1, len(proxy) + 1):
        assert best_of_n(proxy, gold, n) == pytest.approx(_brute_force(proxy, gold, n), abs=1e-12)
    # n = 1 is the plain mean; n = N is the best sample (the tied best ones averaged)
    assert best_of_n(proxy, gold, 1)[1] == pytest.approx(np.mean(gold))
    with pytest.raises(ValueError, match="at least 8"):
        best_of_n(proxy, gold, 8)


def test_best_of_n_beats_naive_resampling_noise():
    """The combinatorial estimator is the exact subset average, which a resampling estimate only approaches."""
    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=12), rng.normal(size=12)
    exact = _brute_force(list(proxy), list(gold), 4)[1]
    draws = [max(sub, key=lambda i: proxy[i]) for sub in (rng.choice(12, 4, replace=False) for _ in range(4000))]
    assert best_of_n(proxy, gold, 4)[1] == pytest.approx(exact, abs=1e-12)
    assert np.mean(gold[draws]) == pytest.approx(exact, abs=0.06)


def _goodhart_prompts(n_prompts: int, n_samples: int, seed: int, overfit: bool):
    """Per-prompt samples whose gold follows the proxy up to a point, then falls (when `overfit`)."""
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(n_prompts):
        proxy = rng.normal(size=n_samples)
        gold = proxy - (0.8 * np.maximum(proxy - 0.7, 0) * 4 if overfit else 0) + rng.normal(scale=0.3, size=n_samples)
        prompts.append((proxy, gold))
    return prompts


def test_divergence_flags_gold_falling_while_proxy_rises():
    res = best_of_n_divergence(_goodhart_prompts(60, 64, 1, overfit=True), 64, resamples=1000)
    assert res.overoptimized
    assert [t.x for t in res.tail] == [1, 2, 4, 8, 16, 32]
    assert res.onset == res.gold_peak and 1 < res.gold_peak < 16
    assert res.gold_peak_ci[0] <= res.gold_peak <= res.gold_peak_ci[1]
    assert res.points[0].kl == 0.0 and res.points[-1].kl == pytest.approx(best_of_n_kl(64))
    assert all(b.proxy > a.proxy for a, b in itertools.pairwise(res.points))  # best-of-n proxy only rises
    after_peak = [t for t in res.tail if t.x >= res.gold_peak]
    assert after_peak and all(t.diverging and t.proxy_ci[0] > 0 and t.gold_ci[1] < 0 for t in after_peak)


def test_divergence_does_not_flag_a_faithful_proxy():
    res = best_of_n_divergence(_goodhart_prompts(60, 64, 2, overfit=False), 64, resamples=1000)
    assert not res.overoptimized and res.onset is None
    assert res.gold_peak == 64 and all(t.gold_change > 0 for t in res.tail)


def test_divergence_intervals_are_simultaneous_and_input_is_checked():
    rng = np.random.default_rng(3)
    proxy, gold = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    one = divergence(proxy, gold, [0, 10, 20], [0.0, 0.5, 1.0], test_at=[10], resamples=500)
    two = divergence(proxy, gold, [0, 10, 20], [0.0, 0.5, 1.0], resamples=500)
    # testing two points instead of one widens each interval (Bonferroni)
    w1 = one.tail[0].gold_ci[1] - one.tail[0].gold_ci[0]
    w2 = two.tail[1].gold_ci[1] - two.tail[1].gold_ci[0]
    assert two.tail[1].x == 10 and w2 > w1
    with pytest.raises(ValueError, match="before the last"):
        divergence(proxy, gold, [0, 10, 20], [0.0, 0.5, 1.0], test_at=[20])
    with pytest.raises(ValueError, match="at least 64 samples"):
        best_of_n_divergence([(np.zeros(8), np.zeros(8))] * 3, 64)
    assert powers_of_two(64) == [1, 2, 4, 8, 16, 32, 64] and powers_of_two(20) == [1, 2, 4, 8, 16, 20]

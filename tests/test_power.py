"""Minimum detectable effects and sample sizes, checked against statsmodels' power functions and by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.power import NormalIndPower, TTestPower

from aftertune.compare import power
from aftertune.compare.stats import mcnemar_exact


@pytest.mark.parametrize(("n", "alpha"), [(10, 0.05), (30, 0.05), (120, 0.01), (400, 0.005)])
def test_score_mde_is_statsmodels_paired_t_effect_size(n, alpha):
    sd = 0.37
    d = TTestPower().solve_power(nobs=n, alpha=alpha, power=0.8, alternative="two-sided")
    mde = power.score_mde(n, sd, alpha)
    assert mde == pytest.approx(d * sd, rel=1e-4)  # statsmodels' own root finder stops near 1e-5
    assert TTestPower().power(effect_size=mde / sd, nobs=n, alpha=alpha) == pytest.approx(0.8, abs=1e-8)
    assert power.score_power(n, d * sd, sd, alpha) == pytest.approx(
        TTestPower().power(effect_size=d, nobs=n, alpha=alpha), abs=1e-9)


def test_score_sample_size_is_statsmodels_rounded_up():
    n = power.n_for_score(0.1, 0.4, 0.05)
    exact = TTestPower().solve_power(effect_size=0.25, alpha=0.05, power=0.8)
    assert n == math.ceil(exact)


@pytest.mark.parametrize("discordance", [0.1, 0.3])
def test_binary_mde_approaches_the_normal_mcnemar_test_for_large_n(discordance):
    """Large n: the exact McNemar MDE meets the one-sample z-test on the discordant pairs (statsmodels, ratio=0).

    McNemar's Z = (n12 − n21)/√(n12 + n21) has mean √n·δ/√ψ, so the detectable δ is statsmodels' effect size × √ψ
    (up to the variance term δ², which vanishes as n grows).
    """
    n = 20_000
    d = NormalIndPower().solve_power(nobs1=n, ratio=0, alpha=0.05, power=0.8)
    assert power.binary_mde(n, discordance, 0.05) == pytest.approx(d * math.sqrt(discordance), rel=0.02)


def test_binary_power_is_the_exact_tests_rejection_rate():
    """The exact power equals the rejection rate of `mcnemar_exact` on simulated paired tables."""
    rng = np.random.default_rng(0)
    n, p12, p21, alpha = 40, 0.2, 0.05, 0.05
    tables = rng.multinomial(n, [p12, p21, 1 - p12 - p21], size=20_000)
    rejected = np.mean([mcnemar_exact(int(a), int(b)) < alpha for a, b, _ in tables])
    assert power.mcnemar_power(n, p12, p21, alpha) == pytest.approx(rejected, abs=0.01)


def test_binary_mde_reaches_the_power_and_no_smaller_change_does():
    n, psi, alpha = 60, 0.25, 0.05
    mde = power.binary_mde(n, psi, alpha)
    assert mde is not None and 0 < mde < 1
    assert power.binary_power(n, mde, psi, alpha) >= 0.8
    assert power.binary_power(n, mde - 1e-6, psi, alpha) < 0.8
    # more items see smaller changes; more discordance hides them
    assert power.binary_mde(4 * n, psi, alpha) < mde < power.binary_mde(n, 0.6, alpha)
    # no discordance observed: the change itself is the least discordance it needs
    assert power.binary_mde(n, 0.0, alpha) <= mde


def test_binary_sample_size_inverts_the_power():
    n = power.n_for_binary(0.15, 0.25, 0.05)
    assert n is not None
    assert power.binary_power(n, 0.15, 0.25, 0.05) >= 0.8
    assert power.binary_mde(n, 0.25, 0.05) <= 0.15 + 1e-9
    assert power.binary_mde(3, 1.0, 0.05) is None  # three pairs never reach p < 0.05


def test_bootstrap_mde_is_the_normal_approximation():
    se = 0.02
    d = NormalIndPower().solve_power(nobs1=1, ratio=0, alpha=0.05, power=0.8)
    assert power.bootstrap_mde(se, 0.05) == pytest.approx(d * se, rel=1e-5)  # it drops the far tail (< 1e-6)
    assert power.bootstrap_power(d * se, se, 0.05) == pytest.approx(0.8, abs=1e-6)

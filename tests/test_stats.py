"""The paired statistics against textbook examples, scipy/statsmodels, and simulated coverage."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from aftertune.compare import stats

# Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables" (2017), chapter 8:
# complete response before/after consolidation therapy (Cavo et al. 2012), rows = after, columns = before.
CAVO = stats.PairedTable(n11=59, n12=6, n21=16, n22=80)


# --- McNemar ---------------------------------------------------------------------------------------------


def test_mcnemar_exact_textbook():
    assert stats.mcnemar_exact(CAVO.n12, CAVO.n21) == pytest.approx(0.052479, abs=5e-7)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(5, 5) == 1.0
    assert stats.mcnemar_exact(0, 5) == pytest.approx(2 * 0.5**5)


def test_mcnemar_asymptotic_textbook():
    z, p = stats.mcnemar_asymptotic(CAVO.n12, CAVO.n21)
    assert z == pytest.approx(-2.132, abs=5e-4)
    assert p == pytest.approx(0.033006, abs=5e-7)
    # Agresti, An Introduction to Categorical Data Analysis, table 8.1 (presidential approval): z = -4.17
    z, _ = stats.mcnemar_asymptotic(86, 150)
    assert z == pytest.approx(-4.17, abs=5e-3)


@pytest.mark.parametrize("b,c", [(0, 0), (0, 1), (1, 0), (3, 7), (7, 3), (10, 10), (12, 30), (0, 25), (150, 86)])
def test_mcnemar_matches_statsmodels(b, c):
    from statsmodels.stats.contingency_tables import mcnemar

    table = np.array([[40, b], [c, 55]])
    exact = mcnemar(table, exact=True)
    assert stats.mcnemar_exact(b, c) == pytest.approx(exact.pvalue, rel=1e-12, abs=1e-15)
    if b + c:
        approx = mcnemar(table, exact=False, correction=False)
        z, p = stats.mcnemar_asymptotic(b, c)
        assert z * z == pytest.approx(approx.statistic)
        assert p == pytest.approx(approx.pvalue)


def test_table_from_outcomes_convention():
    ref = [1, 1, 0, 0, 1, 0]
    new = [1, 0, 1, 0, 0, 1]
    t = stats.PairedTable.from_outcomes(ref, new)
    assert (t.n11, t.n12, t.n21, t.n22) == (1, 2, 2, 1)
    assert t.reference_rate == pytest.approx(3 / 6) and t.new_rate == pytest.approx(3 / 6)
    with pytest.raises(ValueError):
        stats.PairedTable.from_outcomes([0, 1], [0, 2])
    with pytest.raises(ValueError):
        stats.PairedTable.from_outcomes([0, 1], [0])


# --- difference: Tango score interval ------------------------------------------------------------------------


def test_tango_textbook():
    lo, hi = stats.tango_diff_ci(CAVO)
    assert (CAVO.n12 - CAVO.n21) / CAVO.n == pytest.approx(-0.0621, abs=5e-5)
    assert lo == pytest.approx(-0.1240, abs=5e-5)
    assert hi == pytest.approx(-0.0054, abs=5e-5)
    # boundary cases from the same book's software
    assert stats.tango_diff_ci(stats.PairedTable(0, 3, 0, 0)) == pytest.approx((-0.1230, 1.0), abs=5e-5)
    assert stats.tango_diff_ci(stats.PairedTable(0, 0, 3, 0)) == pytest.approx((-1.0, 0.1230), abs=5e-5)
    assert all(math.isnan(x) for x in stats.tango_diff_ci(stats.PairedTable(0, 0, 0, 0)))


def test_tango_inverts_the_mcnemar_score_test():
    # at delta = 0 Tango's statistic is McNemar's; so the 95% interval excludes 0 exactly when |Z| > 1.96
    for n11, n12, n21, n22 in itertools.product([0, 5], [0, 1, 4, 9, 20], [0, 2, 6, 15], [3, 30]):
        t = stats.PairedTable(n11, n12, n21, n22)
        lo, hi = stats.tango_diff_ci(t)
        assert lo <= (n12 - n21) / t.n <= hi
        if n12 + n21:
            z, _ = stats.mcnemar_asymptotic(n12, n21)
            assert stats._tango_statistic(0.0, n12, n21, t.n) == pytest.approx(z)
            if abs(abs(z) - 1.96) > 1e-3:
                assert (lo > 0 or hi < 0) == (abs(z) > sps.norm.ppf(0.975))


def _simulate_tables(rng, n, probs, sims):
    counts = rng.multinomial(n, probs, size=sims)  # columns: n11, n12, n21, n22
    return [stats.PairedTable(*map(int, row)) for row in counts]


@pytest.mark.parametrize("probs", [(0.30, 0.10, 0.05, 0.55), (0.05, 0.08, 0.02, 0.85)])
def test_tango_coverage_simulated(probs):
    rng = np.random.default_rng(20240611)
    true_delta = probs[1] - probs[2]
    tables = _simulate_tables(rng, 150, probs, 2000)
    covered = np.mean([lo <= true_delta <= hi for lo, hi in (stats.tango_diff_ci(t) for t in tables)])
    assert 0.93 <= covered <= 0.97


# --- ratio: Bonett–Price ----------------------------------------------------------------------------------


def test_bonett_price_textbook():
    assert stats.ratio_estimate(CAVO) == pytest.approx(0.8667, abs=5e-5)
    lo, hi = stats.bonett_price_ratio_ci(CAVO)
    assert lo == pytest.approx(0.7579, abs=5e-5)
    assert hi == pytest.approx(0.9910, abs=5e-5)
    assert stats.bonett_price_ratio_ci(stats.PairedTable(0, 0, 0, 9)) == (0.0, math.inf)


def test_ratio_with_zero_margins():
    # reference rate 0, new rate > 0: the multiplier is unbounded above, but its lower limit is informative
    t = stats.PairedTable(0, 6, 0, 50)
    assert stats.ratio_estimate(t) == math.inf
    lo, hi = stats.bonett_price_ratio_ci(t)
    assert hi == math.inf and lo > 1
    t = stats.PairedTable(0, 0, 6, 50)
    assert stats.ratio_estimate(t) == 0.0
    lo, hi = stats.bonett_price_ratio_ci(t)
    assert lo == 0.0 and hi < 1
    assert math.isnan(stats.ratio_estimate(stats.PairedTable(0, 0, 0, 5)))


@pytest.mark.parametrize("probs", [(0.15, 0.10, 0.05, 0.70), (0.40, 0.05, 0.10, 0.45)])
def test_bonett_price_coverage_simulated(probs):
    rng = np.random.default_rng(7)
    true_ratio = (probs[0] + probs[1]) / (probs[0] + probs[2])
    tables = _simulate_tables(rng, 200, probs, 2000)
    covered = np.mean([lo <= true_ratio <= hi for lo, hi in (stats.bonett_price_ratio_ci(t) for t in tables)])
    assert 0.93 <= covered <= 0.97


def test_wilson_matches_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    for k, n in [(0, 10), (3, 10), (10, 10), (57, 200)]:
        assert stats.wilson_ci(k, n) == pytest.approx(proportion_confint(k, n, method="wilson"), abs=1e-12)


# --- scores: paired bootstrap and permutation -------------------------------------------------------------


def test_paired_bootstrap_is_seeded_and_centred():
    rng = np.random.default_rng(1)
    ref = rng.normal(0.0, 1.0, 200)
    new = ref + 0.3 + rng.normal(0, 0.2, 200)
    a = stats.paired_bootstrap(ref, new, seed=3)
    b = stats.paired_bootstrap(ref, new, seed=3)
    assert a == b
    lo, hi = a.delta_ci
    d = float(np.mean(new - ref))
    assert lo < d < hi
    # pairing matters: the paired interval is far narrower than one that ignores the pairing would be
    se_unpaired = math.sqrt(ref.var(ddof=1) / 200 + new.var(ddof=1) / 200)
    assert hi - lo < 2 * 1.96 * se_unpaired / 3
    # about the normal-theory paired interval
    se = float(np.std(new - ref, ddof=1) / math.sqrt(200))
    assert lo == pytest.approx(d - 1.96 * se, abs=0.01)
    assert hi == pytest.approx(d + 1.96 * se, abs=0.01)


def test_one_sample_bootstrap_matches_scipy():
    rng = np.random.default_rng(4)
    x = rng.exponential(1.0, 150)
    ours = stats.bootstrap_ci(x, seed=1, resamples=4000)
    theirs = sps.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.03)
    assert stats.bootstrap_ci(x.tolist(), lambda v: float(np.mean(v)), seed=1, resamples=1000) == pytest.approx(
        ours, abs=0.03)


def test_paired_bootstrap_generic_statistic_agrees_with_mean_path():
    rng = np.random.default_rng(2)
    ref = rng.random(60).tolist()
    new = (np.asarray(ref) + rng.normal(0.05, 0.1, 60)).tolist()
    fast = stats.paired_bootstrap(ref, new, seed=0, resamples=1500)
    slow = stats.paired_bootstrap(ref, new, lambda xs: float(np.mean(xs)), seed=0, resamples=1500)
    assert fast.delta_ci == pytest.approx(slow.delta_ci, abs=0.01)
    assert fast.reference_ci == pytest.approx(slow.reference_ci, abs=0.01)


def test_paired_bootstrap_coverage_simulated():
    rng = np.random.default_rng(11)
    true_delta = 0.1
    hits = 0
    sims = 400
    for i in range(sims):
        base = rng.beta(2, 5, 80)
        new = np.clip(base + true_delta + rng.normal(0, 0.15, 80), -1, 2)
        lo, hi = stats.paired_bootstrap(base, new, seed=i, resamples=1000).delta_ci
        hits += lo <= true_delta <= hi
    assert 0.91 <= hits / sims <= 0.98


def test_permutation_matches_exact_enumeration():
    d = np.array([0.9, -0.2, 0.4, 0.7, 0.1, -0.3, 0.5, 0.6, 0.2, 0.8])
    ref = np.zeros_like(d)
    obs = abs(d.mean())
    signs = np.array(list(itertools.product([-1, 1], repeat=len(d))))
    exact = np.mean(np.abs((signs * d).mean(axis=1)) >= obs - 1e-12)
    p = stats.paired_permutation_pvalue(ref, d, seed=0, permutations=20000)
    assert p == pytest.approx(exact, abs=0.01)
    # the generic path gives the same answer
    pg = stats.paired_permutation_pvalue(ref.tolist(), d.tolist(), lambda xs: float(np.mean(xs)), seed=0,
                                         permutations=4000)
    assert pg == pytest.approx(exact, abs=0.02)
    assert stats.paired_permutation_pvalue([1.0, 2.0], [1.0, 2.0]) == 1.0


def test_permutation_type_one_error():
    rng = np.random.default_rng(5)
    rejections = 0
    sims = 300
    for i in range(sims):
        ref = rng.normal(0, 1, 40)
        new = ref + rng.normal(0, 1, 40)  # no true difference
        rejections += stats.paired_permutation_pvalue(ref, new, seed=i, permutations=999) < 0.05
    assert rejections / sims <= 0.08


# --- Holm and seeds -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_statsmodels(seed):
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(seed)
    p = rng.random(12) ** 3
    p[3] = p[7]  # a tie
    ours = stats.holm(p)
    theirs = multipletests(p, method="holm")[1]
    assert ours == pytest.approx(theirs.tolist(), abs=1e-12)


def test_holm_textbook_and_nan():
    # Holm (1979)-style worked example: sorted p 0.01, 0.02, 0.03, 0.04 with m = 4
    assert stats.holm([0.04, 0.01, 0.03, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    out = stats.holm([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.04)
    assert stats.holm([]) == []


def test_t_interval_matches_scipy():
    vals = [0.12, 0.08, 0.15, 0.11]
    mean, lo, hi = stats.t_interval(vals)
    elo, ehi = sps.t.interval(0.95, 3, loc=np.mean(vals), scale=sps.sem(vals))
    assert (mean, lo, hi) == pytest.approx((np.mean(vals), elo, ehi))
    m, lo, hi = stats.t_interval([0.3])
    assert m == 0.3 and math.isnan(lo) and math.isnan(hi)

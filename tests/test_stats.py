"""Statistics of arm comparisons agree with scipy and with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from mcrlab.analysis.stats import (
    MIN_SEEDS_T,
    SeedMismatchError,
    average_ranks,
    compare_to_base,
    friedman,
    holm,
    mdd_paired_t,
    min_achievable_p,
    nemenyi_cd,
    paired_power_t,
    paired_test,
    power_of,
    summarize,
)
from mcrlab.config import ConfigError

BASE = {0: 0.71, 1: 0.74, 2: 0.69, 3: 0.73, 4: 0.70}
ARM = {0: 0.75, 1: 0.77, 2: 0.74, 3: 0.74, 4: 0.76}


def test_summary_matches_scipy_t_interval():
    x = [0.71, 0.74, 0.69, 0.73, 0.70]
    s = summarize(x)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert s.n == 5
    assert s.mean == pytest.approx(np.mean(x))
    assert s.std == pytest.approx(np.std(x, ddof=1))
    assert (s.ci_low, s.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    # hand check: t_{0.975,4} = 2.7764451...
    assert s.ci_half == pytest.approx(2.7764451052 * np.std(x, ddof=1) / math.sqrt(5), rel=1e-8)


def test_summary_single_value_has_no_interval():
    s = summarize([0.5])
    assert s.mean == 0.5 and math.isnan(s.std) and math.isnan(s.ci_low)


def test_paired_t_matches_scipy():
    r = paired_test(ARM, BASE, "t")
    seeds = sorted(BASE)
    ref = sps.ttest_rel([ARM[s] for s in seeds], [BASE[s] for s in seeds])
    assert r.statistic == pytest.approx(ref.statistic)
    assert r.p == pytest.approx(ref.pvalue)
    d = np.array([ARM[s] - BASE[s] for s in seeds])
    assert r.diff == pytest.approx(d.mean())
    assert r.effect == pytest.approx(d.mean() / d.std(ddof=1))
    # d_z * sqrt(n) is the t statistic
    assert r.effect * math.sqrt(5) == pytest.approx(r.statistic)


def test_pairing_follows_seed_keys_not_insertion_order():
    shuffled = {s: ARM[s] for s in (3, 0, 4, 1, 2)}
    assert paired_test(shuffled, BASE).p == pytest.approx(paired_test(ARM, BASE).p)


def test_wilcoxon_matches_scipy_and_cannot_reach_005_with_five_seeds():
    r = paired_test(ARM, BASE, "wilcoxon")
    seeds = sorted(BASE)
    ref = sps.wilcoxon([ARM[s] for s in seeds], [BASE[s] for s in seeds])
    assert r.p == pytest.approx(ref.pvalue)
    assert r.statistic == pytest.approx(ref.statistic)
    # every difference positive: the smallest exact two-sided p for n=5 is 2/2^5
    assert r.p == pytest.approx(2 / 2 ** 5)
    assert r.p > 0.05


def test_degenerate_differences():
    same = paired_test(BASE, BASE)
    assert same.p == 1.0 and same.diff == 0.0 and same.effect == 0.0
    shifted = paired_test({s: v + 0.1 for s, v in BASE.items()}, BASE)
    assert shifted.p == 0.0 and shifted.effect == math.inf


def test_mismatched_seeds_are_refused_with_a_clear_message():
    arm = {0: 0.7, 1: 0.8, 5: 0.9}
    base = {0: 0.7, 1: 0.8, 2: 0.9}
    with pytest.raises(SeedMismatchError) as err:
        paired_test(arm, base, label="val/acc on d1: arm 'no_game'")
    msg = str(err.value)
    assert "no_game" in msg and "only in arm: [5]" in msg and "only in base: [2]" in msg
    assert isinstance(err.value, ConfigError)


def test_unknown_test_is_a_config_error():
    with pytest.raises(ConfigError, match="wilcoxon"):
        paired_test(ARM, BASE, "mannwhitney")


def test_holm_hand_computed():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone max 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = holm([0.02, math.nan, 0.01])
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)


def test_compare_to_base_applies_holm_over_arms():
    values = {"base": BASE, "a": ARM, "b": {s: v - 0.01 * (s % 2) for s, v in BASE.items()}}
    res = compare_to_base(values, "base")
    assert set(res) == {"a", "b"}
    raw = [res["a"].p, res["b"].p]
    assert [res["a"].p_holm, res["b"].p_holm] == pytest.approx(list(holm(raw)))
    with pytest.raises(ConfigError, match="base arm 'nope'"):
        compare_to_base(values, "nope")


def test_average_ranks_and_friedman_match_scipy():
    # 4 datasets x 3 arms, one tie in the last row
    s = np.array([[0.80, 0.75, 0.70],
                  [0.60, 0.65, 0.55],
                  [0.90, 0.85, 0.88],
                  [0.50, 0.50, 0.40]])
    ranks = average_ranks(s)
    assert ranks == pytest.approx([(1 + 2 + 1 + 1.5) / 4, (2 + 1 + 3 + 1.5) / 4, (3 + 3 + 2 + 3) / 4])
    res = friedman(s)
    ref = sps.friedmanchisquare(*s.T)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.p == pytest.approx(ref.pvalue)
    assert res.avg_ranks == pytest.approx(ranks)
    # lower is better flips the ranks
    assert average_ranks(s, higher_is_better=False) == pytest.approx(4 - ranks)


def test_nemenyi_cd_against_demsar_table():
    # q_0.05 from Demsar (2006) table 5a: k=2 1.960, k=3 2.343, k=4 2.569, k=5 2.728
    for k, q in [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728)]:
        assert nemenyi_cd(k, 10) == pytest.approx(q * math.sqrt(k * (k + 1) / 60), abs=2e-3)


# --------------------------------------------------------------------------------------------------
# power: minimal detectable difference


def _power_by_integration(delta: float, sd: float, n: int, alpha: float) -> float:
    """Reference oracle, independent of scipy's noncentral t: T = (Z + nc) / sqrt(V / df), V ~ chi2(df),
    so P(|T| > c) = E_V[ P(Z > c sqrt(V/df) - nc) + P(Z < -c sqrt(V/df) - nc) ]."""
    from scipy.integrate import quad

    df = n - 1
    c = sps.t.ppf(1 - alpha / 2, df)
    nc = delta * math.sqrt(n) / sd

    def f(v: float) -> float:
        s = c * math.sqrt(v / df)
        return (sps.norm.sf(s - nc) + sps.norm.cdf(-s - nc)) * sps.chi2.pdf(v, df)

    return quad(f, 0, np.inf, limit=200, epsabs=1e-12)[0]


def test_mdd_approximation_hand_computed():
    # (t_{0.975,4} + t_{0.80,4}) * s_d / sqrt(5), quantiles from a t table: 2.7764451052, 0.9409645772
    assert mdd_paired_t(0.01, 5, 0.05, 0.8, method="approx") == pytest.approx(
        (2.7764451052 + 0.9409645772) * 0.01 / math.sqrt(5), rel=1e-9)
    # it scales linearly in s_d and shrinks like 1/sqrt(n) (up to the quantiles)
    assert mdd_paired_t(0.02, 5, method="approx") == pytest.approx(2 * mdd_paired_t(0.01, 5, method="approx"))


@pytest.mark.parametrize("n, alpha", [(3, 0.05), (5, 0.05), (5, 0.05 / 16), (10, 0.05 / 18)])
def test_exact_mdd_has_power_08_by_independent_integration(n, alpha):
    mdd = mdd_paired_t(0.013, n, alpha, 0.8)
    assert _power_by_integration(mdd, 0.013, n, alpha) == pytest.approx(0.8, abs=1e-6)
    assert paired_power_t(mdd, 0.013, n, alpha) == pytest.approx(0.8, abs=1e-9)
    # the exact value sits above the textbook approximation (which neglects the skew) and far above z
    approx = mdd_paired_t(0.013, n, alpha, method="approx")
    z = (sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(0.8)) * 0.013 / math.sqrt(n)
    assert approx < mdd and z < approx


def test_exact_mdd_against_monte_carlo_float64():
    """Simulate the paired t-test at the MDD: 200k replications of n = 5 normal differences."""
    rng = np.random.default_rng(7)
    n, sd, reps = 5, 0.02, 200_000
    for alpha in (0.05, 0.05 / 16):
        mdd = mdd_paired_t(sd, n, alpha)
        d = rng.normal(mdd, sd, size=(reps, n)).astype(np.float64)
        t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
        rate = float((np.abs(t) > sps.t.ppf(1 - alpha / 2, n - 1)).mean())
        se = math.sqrt(0.8 * 0.2 / reps)  # ~0.0009
        assert abs(rate - 0.8) < 4 * se, (alpha, rate)
        # the approximation's difference really has less power (about 0.79 at alpha 0.05): the test tells them apart
        approx = mdd_paired_t(sd, n, alpha, method="approx")
        d2 = rng.normal(approx, sd, size=(reps, n))
        t2 = d2.mean(1) / (d2.std(1, ddof=1) / math.sqrt(n))
        assert float((np.abs(t2) > sps.t.ppf(1 - alpha / 2, n - 1)).mean()) < 0.8 - 4 * se


def test_mdd_degenerate_inputs():
    assert math.isnan(mdd_paired_t(0.01, 1)) and math.isnan(mdd_paired_t(math.nan, 5))
    assert mdd_paired_t(0.0, 5) == 0.0


def test_minimum_achievable_p_matches_scipy_exact_wilcoxon():
    for n in range(2, 9):
        diffs = np.arange(1, n + 1) * 0.01  # all positive, distinct: the most extreme sample there is
        assert min_achievable_p("wilcoxon", diffs) == pytest.approx(sps.wilcoxon(diffs).pvalue)
        assert min_achievable_p("wilcoxon", diffs) == pytest.approx(2 / 2 ** n)
    assert min_achievable_p("wilcoxon", [0.01, 0.0, 0.02, 0.03, 0.0, 0.04]) == 2 / 2 ** 4  # zeros dropped
    assert min_achievable_p("t", [0.1, 0.2]) == 0.0 and math.isnan(min_achievable_p("t", [0.1]))


def test_power_statement_uses_holm_worst_case_alpha_and_refuses_hopeless_tests():
    d = [0.01, 0.03, 0.02, 0.015, 0.025]
    one, sixteen = power_of(d, "t", m=1), power_of(d, "t", m=16)
    assert sixteen.alpha_adj == pytest.approx(0.05 / 16) and one.alpha_adj == 0.05
    assert sixteen.sd_diff == pytest.approx(np.std(d, ddof=1))
    assert sixteen.mdd == pytest.approx(mdd_paired_t(np.std(d, ddof=1), 5, 0.05 / 16))
    assert sixteen.mdd > one.mdd and one.can_reject and sixteen.can_reject
    # two seeds: a t-test star is refused (the issue's +0.0005 on identical differences gives p ~ 0)
    two = power_of([0.0005, 0.0005], "t")
    assert paired_test({0: 0.5005, 1: 0.6005}, {0: 0.5, 1: 0.6}).p < 1e-10  # float noise in s_d
    assert not two.can_reject and math.isinf(two.mdd) and MIN_SEEDS_T == 3
    # Wilcoxon, 5 seeds: min p 0.0625 > 0.05, never significant; 6 seeds: 0.03125, but not under Holm m=2
    assert not power_of(d, "wilcoxon").can_reject and math.isinf(power_of(d, "wilcoxon").mdd)
    six = [*d, 0.018]
    assert power_of(six, "wilcoxon", m=1).can_reject and not power_of(six, "wilcoxon", m=2).can_reject
    w = power_of(six, "wilcoxon")
    assert w.mdd == pytest.approx(mdd_paired_t(np.std(six, ddof=1), 6) * math.sqrt(math.pi / 3))

"""Statistics for comparing ablation arms over seeds and datasets (pure numpy/scipy, no MLflow).

Choices, and why:

* Spread over seeds: mean, sample std (ddof=1) and a two-sided 95% Student-t interval
  ``mean +/- t_{0.975, n-1} * std / sqrt(n)``. Seeds are few (3-10), so the t quantile, not 1.96.
* Arm versus base: a **paired** test over matched seeds (seed s of the arm against seed s of the base:
  same data split and initialisation stream, so pairing removes the seed's share of the variance).
  The default is the paired t-test. The Wilcoxon signed-rank test is offered (``test="wilcoxon"``) but
  its exact two-sided p-value cannot go below ``2 / 2**n``: with n < 6 seeds it can never reach
  p < 0.05 (n=3: 0.25, n=5: 0.0625), which would make every small ablation look null.
* Several arms against one base: Holm's step-down correction over the arms of one (metric, dataset)
  family. It controls the family-wise error rate without independence assumptions.
* Effect size: Cohen's d_z = mean(diff) / std(diff) for paired data (the standardised mean of the
  differences), which is what the paired t statistic divides by sqrt(n).
* Across datasets: average ranks (1 = best, ties get the mean rank) and the Friedman chi-square test
  with the tie correction (as ``scipy.stats.friedmanchisquare``), plus the Nemenyi critical difference
  ``CD = q_alpha / sqrt(2) * sqrt(k (k + 1) / (6 N))`` for the critical-difference plot (Demsar 2006).

* Power, stated with every verdict: the minimal detectable difference (MDD) of a paired test at the
  run's n seeds, the observed std of the paired differences s_d, the worst-case alpha of the
  correction (Holm's first step: alpha / m for m arms in the family) and power 0.8. For the t-test
  the exact MDD solves ``P(|T| > t_{1-a/2, n-1}) = power`` for T ~ noncentral t(n-1, delta sqrt(n) / s_d)
  (``mdd_paired_t``); the textbook approximation ``(t_{1-a/2, n-1} + t_{power, n-1}) s_d / sqrt(n)``
  is offered as ``method="approx"`` (it ignores the far tail and the noncentrality's skew, so it
  sits slightly below the exact value for few seeds). It treats the observed s_d as the true one, so
  it is itself an estimate with n-1 degrees of freedom.
* No star where the test cannot reach significance: ``can_reject`` needs the minimum achievable p
  below alpha / m (under Holm every adjusted p >= m * min_i p_i). Wilcoxon's exact minimum is
  ``2 / 2**n`` over the non-zero differences; the t-test can reach any p from n = 2 on, but with one
  degree of freedom p < 0.05 needs |t| > 12.7, which in practice happens only when two quantised
  differences coincide (s_d ~ 0), so the t-test needs ``MIN_SEEDS_T`` = 3 seeds for a star.

Mismatched seeds between an arm and the base raise ``ConfigError``: a paired test over unmatched
seeds is meaningless, and silently dropping seeds would hide a failed or missing cell.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from mcrlab.config import ConfigError

__all__ = [
    "SeedMismatchError",
    "Summary",
    "PairedResult",
    "FriedmanResult",
    "summarize",
    "paired_test",
    "paired_diffs",
    "holm",
    "compare_to_base",
    "average_ranks",
    "friedman",
    "nemenyi_cd",
    "TESTS",
    "MIN_SEEDS_T",
    "Power",
    "paired_power_t",
    "mdd_paired_t",
    "min_achievable_p",
    "power_of",
]

TESTS = ("t", "wilcoxon")
MIN_SEEDS_T = 3     # fewest seeds for which a paired t-test may star a difference (see the module docstring)
POWER = 0.8         # the power every MDD is stated at
ALPHA = 0.05


class SeedMismatchError(ConfigError):
    """An arm and the base do not hold the same seeds, so a paired comparison is refused."""


@dataclass(frozen=True)
class Summary:
    """Mean, sample std and 95% t-interval of n values (std and interval are nan when n < 2)."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    @property
    def ci_half(self) -> float:
        return (self.ci_high - self.ci_low) / 2.0


@dataclass(frozen=True)
class PairedResult:
    """Arm minus base over matched seeds. ``p`` is raw; ``p_holm`` is filled by ``compare_to_base``."""

    n: int
    diff: float        # mean of (arm - base)
    statistic: float   # t (test="t") or the signed-rank statistic W (test="wilcoxon")
    p: float
    effect: float      # Cohen's d_z
    test: str
    p_holm: float = math.nan


@dataclass(frozen=True)
class FriedmanResult:
    statistic: float           # chi-square with tie correction
    p: float
    avg_ranks: np.ndarray      # (k,) average rank per arm, 1 = best
    n_datasets: int
    cd: float                  # Nemenyi critical difference at alpha = 0.05


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, std (ddof=1) and the two-sided t confidence interval of ``values`` (shape (n,))."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("summarize: need a non-empty 1-d sequence")
    n = int(x.size)
    mean = float(x.mean())
    if n < 2:
        return Summary(n, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


def _matched(arm: Mapping, base: Mapping, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``arm`` and ``base`` (dicts seed -> value) in the same seed order; refuse mismatches."""
    a_seeds, b_seeds = set(arm), set(base)
    if a_seeds != b_seeds:
        only_a = sorted(a_seeds - b_seeds, key=str)
        only_b = sorted(b_seeds - a_seeds, key=str)
        raise SeedMismatchError(
            f"{label}: seeds do not match the base arm (only in arm: {only_a or 'none'}, "
            f"only in base: {only_b or 'none'}); a paired test needs the same seeds in every arm "
            "(rerun the missing cells, e.g. `mcrlab ablate SPEC --resume`)")
    seeds = sorted(a_seeds, key=str)
    return (np.array([arm[s] for s in seeds], dtype=np.float64),
            np.array([base[s] for s in seeds], dtype=np.float64))


def paired_diffs(arm: Mapping, base: Mapping, label: str = "arm") -> np.ndarray:
    """arm - base over matched seeds (sorted by seed), shape (n,); refuses mismatched seeds."""
    a, b = _matched(arm, base, label)
    return a - b


def paired_test(arm: Mapping, base: Mapping, test: str = "t", label: str = "arm") -> PairedResult:
    """Paired comparison of two dicts ``seed -> value`` with identical seed sets.

    ``test="t"``: paired t, t = mean(d) / (std(d) / sqrt(n)), two-sided p on n-1 dof.
    ``test="wilcoxon"``: scipy's signed-rank test (exact for small n, zero differences dropped).
    Degenerate cases, both tests: one seed -> p, statistic and effect are nan; all differences zero
    -> p = 1 (no evidence of a difference); for the t-test, identical non-zero differences -> p = 0
    and |t| = inf (as scipy).
    """
    if test not in TESTS:
        raise ConfigError(f"test: {test!r} is not one of {', '.join(TESTS)}")
    a, b = _matched(arm, base, label)
    d = a - b
    n = int(d.size)
    if n < 2:  # nothing to test with one seed: report the difference, leave p and effect undefined
        return PairedResult(n, float(d.mean()) if n else math.nan, math.nan, math.nan, math.nan, test)
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd > 0:
        effect = mean / sd
    else:
        effect = 0.0 if mean == 0 else math.copysign(math.inf, mean)
    if np.all(d == 0):
        return PairedResult(n, 0.0, 0.0, 1.0, 0.0, test)
    if test == "t":
        if sd == 0:
            return PairedResult(n, mean, math.copysign(math.inf, mean), 0.0, effect, test)
        t = mean / (sd / math.sqrt(n))
        p = float(2.0 * sps.t.sf(abs(t), n - 1))
        return PairedResult(n, mean, float(t), p, effect, test)
    res = sps.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    return PairedResult(n, mean, float(res.statistic), float(res.pvalue), effect, test)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, shape (m,) in the input order; nan entries stay nan.

    Sorted ascending p_(1..m): adj_(i) = max_{j <= i} min(1, (m - j + 1) * p_(j)).
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for i, idx in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[idx]))
        out[idx] = running
    return out


def compare_to_base(values: Mapping[str, Mapping], base: str, test: str = "t",
                    label: str = "") -> dict[str, PairedResult]:
    """Each non-base arm against ``base``: ``{arm: {seed: value}}`` -> ``{arm: PairedResult}``.

    The arms of one call form one Holm family (one metric on one dataset).
    """
    if base not in values:
        raise ConfigError(f"{label or 'compare'}: base arm '{base}' has no runs "
                          f"(arms present: {', '.join(sorted(values))})")
    arms = [a for a in values if a != base]
    raw = {a: paired_test(values[a], values[base], test, label=f"{label}arm '{a}'") for a in arms}
    adj = holm([raw[a].p for a in arms])
    return {a: dataclasses.replace(raw[a], p_holm=float(adj[i])) for i, a in enumerate(arms)}


def average_ranks(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Ranks per dataset (row) averaged over datasets.

    scores: (N datasets, k arms). Returns (k,): rank 1 = best; ties share their mean rank.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or np.isnan(s).any():
        raise ValueError("average_ranks: need a complete (datasets, arms) matrix without nan")
    ranks = sps.rankdata(-s if higher_is_better else s, axis=1)
    return ranks.mean(axis=0)


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of average ranks for k arms over n datasets.

    q_alpha is the studentized range quantile (infinite dof) divided by sqrt(2): 1.960 for k=2,
    2.343 for k=3, 2.569 for k=4 (Demsar 2006, table 5a).
    """
    if k < 2 or n < 1:
        raise ValueError("nemenyi_cd: need k >= 2 arms and n >= 1 datasets")
    q = float(sps.studentized_range.ppf(1.0 - alpha, k, np.inf)) / math.sqrt(2.0)
    return q * math.sqrt(k * (k + 1) / (6.0 * n))


def friedman(scores: np.ndarray, higher_is_better: bool = True) -> FriedmanResult:
    """Friedman test of k arms over N datasets. scores: (N, k). Needs N >= 2 and k >= 2.

    chi2 = 12 N / (k (k+1)) * sum_j (R_j - (k+1)/2)^2, divided by the tie correction
    1 - sum(t^3 - t) / (N k (k^2 - 1)); p from chi-square with k-1 dof (as scipy, which needs k >= 3).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 2 or s.shape[1] < 2:
        raise ValueError("friedman: need at least 2 datasets and 2 arms")
    n, k = s.shape
    ranks = sps.rankdata(-s if higher_is_better else s, axis=1)
    avg = ranks.mean(axis=0)
    ties = 0.0
    for row in ranks:
        _, counts = np.unique(row, return_counts=True)
        ties += float((counts ** 3 - counts).sum())
    correction = 1.0 - ties / (n * k * (k * k - 1))
    chi2 = 12.0 * n / (k * (k + 1)) * float(((avg - (k + 1) / 2.0) ** 2).sum())
    if correction <= 0:  # every dataset ties every arm: no evidence at all
        return FriedmanResult(0.0, 1.0, avg, n, nemenyi_cd(k, n))
    chi2 /= correction
    p = float(sps.chi2.sf(chi2, k - 1))
    return FriedmanResult(chi2, p, avg, n, nemenyi_cd(k, n))


# --------------------------------------------------------------------------------------------------
# power


@dataclass(frozen=True)
class Power:
    """What a paired comparison could detect: MDD at ``power`` and ``alpha_adj`` with n seeds.

    ``mdd`` is inf when the test cannot reach significance at all (``can_reject`` False) and nan when
    s_d is unknown (n < 2)."""

    n: int
    sd_diff: float      # sample std (ddof=1) of the paired differences
    alpha_adj: float    # the alpha the first (strictest) Holm step applies: alpha / m
    power: float
    mdd: float
    min_p: float        # smallest p-value the test can give with these seeds
    can_reject: bool    # min_p < alpha_adj and enough seeds for the test


def paired_power_t(delta: float, sd: float, n: int, alpha: float) -> float:
    """Two-sided power of the paired t-test for a true mean difference ``delta`` and std ``sd``.

    T ~ noncentral t(n - 1, delta sqrt(n) / sd); power = P(T > c) + P(T < -c), c = t_{1-alpha/2, n-1}.
    The far tail is computed as P(T' > c) with T' ~ noncentral t(n - 1, -nc) (the same number by
    symmetry; scipy's cdf there returns nan once it underflows).
    """
    df = n - 1
    c = float(sps.t.ppf(1.0 - alpha / 2.0, df))
    nc = delta * math.sqrt(n) / sd
    near, far = float(sps.nct.sf(c, df, abs(nc))), float(sps.nct.sf(c, df, -abs(nc)))
    return near + (0.0 if math.isnan(far) else far)


def mdd_paired_t(sd: float, n: int, alpha: float = ALPHA, power: float = POWER, method: str = "exact") -> float:
    """Minimal detectable mean difference of a two-sided paired t-test with n pairs.

    method="exact": the delta > 0 with ``paired_power_t(delta, sd, n, alpha) == power`` (noncentral t,
    solved by Brent's method on the noncentrality). method="approx": (t_{1-a/2,n-1} + t_{power,n-1})
    sd / sqrt(n). nan for n < 2 or an unknown sd; 0 when sd == 0 (every non-zero difference shows).
    """
    if method not in ("exact", "approx"):
        raise ValueError(f"mdd_paired_t: method must be exact or approx, got {method!r}")
    if n < 2 or not math.isfinite(sd) or sd < 0:
        return math.nan
    if sd == 0:
        return 0.0
    df = n - 1
    se = sd / math.sqrt(n)
    if method == "approx":
        return (float(sps.t.ppf(1.0 - alpha / 2.0, df)) + float(sps.t.ppf(power, df))) * se

    def gap(nc: float) -> float:
        return paired_power_t(nc * se, sd, n, alpha) - power

    hi = 1.0
    while gap(hi) < 0:  # power grows with the noncentrality: bracket the root
        hi *= 2.0
    from scipy.optimize import brentq

    return float(brentq(gap, 0.0, hi, xtol=1e-12, rtol=1e-12)) * se


def min_achievable_p(test: str, diffs: Sequence[float] | np.ndarray) -> float:
    """The smallest two-sided p the paired test can give with these differences' sample size.

    t: 0 for n >= 2 (|t| is unbounded), nan for n < 2. wilcoxon: the exact 2 / 2**n', n' = the number
    of non-zero differences (zero_method="wilcox" drops zeros), capped at 1.
    """
    d = np.asarray(diffs, dtype=np.float64)
    if test == "t":
        return 0.0 if d.size >= 2 else math.nan
    if test == "wilcoxon":
        nz = int(np.count_nonzero(d))
        return 1.0 if nz == 0 else min(1.0, 2.0 / 2.0 ** nz)
    raise ConfigError(f"test: {test!r} is not one of {', '.join(TESTS)}")


def power_of(diffs: Sequence[float] | np.ndarray, test: str = "t", m: int = 1, alpha: float = ALPHA,
             power: float = POWER) -> Power:
    """Power statement for one arm-vs-base comparison: ``diffs`` (n,) paired differences, ``m`` the
    size of its Holm family (worst case: the first step's alpha / m).

    Wilcoxon's MDD is the t-test's times sqrt(pi / 3) (the inverse square root of its asymptotic
    relative efficiency 3 / pi under normal differences): an approximation, stated as such.
    """
    d = np.asarray(diffs, dtype=np.float64)
    n = int(d.size)
    alpha_adj = alpha / max(1, m)
    sd = float(d.std(ddof=1)) if n >= 2 else math.nan
    min_p = min_achievable_p(test, d)
    enough = n >= MIN_SEEDS_T if test == "t" else n >= 2
    can = bool(enough and not math.isnan(min_p) and min_p < alpha_adj)
    if not can:
        value = math.inf if n >= 2 else math.nan
    else:
        value = mdd_paired_t(sd, n, alpha_adj, power)
        if test == "wilcoxon":
            value *= math.sqrt(math.pi / 3.0)
    return Power(n, sd, alpha_adj, power, value, min_p, can)

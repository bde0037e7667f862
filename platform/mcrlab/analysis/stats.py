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
    "holm",
    "compare_to_base",
    "average_ranks",
    "friedman",
    "nemenyi_cd",
    "TESTS",
]

TESTS = ("t", "wilcoxon")


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

"""Report tables and plots from a tidy results table (no MLflow here)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mcrlab.analysis.files import write_report
from mcrlab.analysis.report import build_report, metric_table, rank_table, render
from mcrlab.analysis.stats import SeedMismatchError
from mcrlab.config import ConfigError

ARMS = {"base": 0.80, "no_game": 0.74, "independent": 0.79}
DATASETS = ["synthetic:competition", "mfeat:fou+kar", "digits"]
SEEDS = [0, 1, 2]


def make_tidy(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A fake but structured result set: arms x datasets x seeds with per-modality diagnostics."""
    rng = np.random.default_rng(seed)
    rows, hist = [], []
    for d_i, dataset in enumerate(DATASETS):
        for arm, level in ARMS.items():
            for s in SEEDS:
                acc = level - 0.05 * d_i + 0.01 * s + rng.normal(0, 0.003)
                rows += [(arm, dataset, s, "test/acc", acc), (arm, dataset, s, "test/f1", acc - 0.02),
                         (arm, dataset, s, "test/probe/a", 0.7 + 0.01 * s),
                         (arm, dataset, s, "test/probe/b", 0.4 + (0.1 if arm == "base" else 0.0)),
                         (arm, dataset, s, "test/head/a", 0.6), (arm, dataset, s, "test/head/b", 0.3),
                         (arm, dataset, s, "test/acc_type/unique1", 0.9),
                         (arm, dataset, s, "test/acc_type/synergy", 0.5)]
                for epoch in range(1, 5):
                    hist += [(arm, dataset, s, "val/D/a", epoch, 0.1 * epoch),
                             (arm, dataset, s, "val/D/b", epoch, 0.02 * epoch * (2 if arm == "base" else 1))]
    tidy = pd.DataFrame(rows, columns=["arm", "dataset", "seed", "metric", "value"])
    history = pd.DataFrame(hist, columns=["arm", "dataset", "seed", "metric", "step", "value"])
    return tidy, history


def test_metric_table_statistics_agree_with_scipy():
    tidy, _ = make_tidy()
    table = metric_table(tidy, "test/acc", "base")
    assert list(table["arm"][:3]) == ["base", "independent", "no_game"]  # base first, then sorted
    d = tidy[(tidy.metric == "test/acc") & (tidy.dataset == "digits")]
    row = table[(table.dataset == "digits") & (table.arm == "no_game")].iloc[0]
    arm = d[d.arm == "no_game"].sort_values("seed")["value"].to_numpy()
    base = d[d.arm == "base"].sort_values("seed")["value"].to_numpy()
    assert row["mean"] == pytest.approx(arm.mean())
    assert row["std"] == pytest.approx(arm.std(ddof=1))
    lo, hi = sps.t.interval(0.95, 2, loc=arm.mean(), scale=sps.sem(arm))
    assert (row.ci_low, row.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    ref = sps.ttest_rel(arm, base)
    assert row.p == pytest.approx(ref.pvalue)
    assert row["diff"] == pytest.approx((arm - base).mean())
    # Holm over the two non-base arms on this dataset
    other = table[(table.dataset == "digits") & (table.arm == "independent")].iloc[0]
    assert row.p_holm == pytest.approx(min(1.0, max(2 * min(row.p, other.p), row.p if row.p > other.p else 0)))
    assert row.p_holm >= row.p


def test_mismatched_seeds_between_arms_are_refused():
    tidy, _ = make_tidy()
    bad = tidy[~((tidy.arm == "no_game") & (tidy.seed == 2) & (tidy.dataset == "digits"))]
    with pytest.raises(SeedMismatchError, match=r"test/acc on digits: arm 'no_game'.*only in base: \[2\]"):
        build_report(bad)


def test_duplicate_cells_are_refused():
    tidy, _ = make_tidy()
    with pytest.raises(ConfigError, match="several values"):
        build_report(pd.concat([tidy, tidy.iloc[:1]]))


def test_ranks_and_friedman_over_datasets():
    tidy, _ = make_tidy()
    ranks, fr = rank_table(tidy, "test/acc")
    assert list(ranks["arm"]) == ["base", "independent", "no_game"]
    assert ranks["avg_rank"].tolist() == pytest.approx([1.0, 2.0, 3.0])
    means = tidy[tidy.metric == "test/acc"].groupby(["dataset", "arm"])["value"].mean().unstack()
    ref = sps.friedmanchisquare(*[means[a] for a in means.columns])
    assert fr.statistic == pytest.approx(ref.statistic) and fr.p == pytest.approx(ref.pvalue)
    # D_m ranks lower-is-better? no: D is a diagnostic, but the rule is explicit and checked here
    ranks_d, _ = rank_table(tidy.assign(metric=tidy.metric.str.replace("test/acc", "train/loss")), "train/loss")
    assert list(ranks_d["arm"]) == ["no_game", "independent", "base"]


def test_every_format_renders(tmp_path):
    tidy, history = make_tidy()
    rep = build_report(tidy, history=history)
    md = render(rep, "md")
    assert "## test/acc" in md and "| digits | no_game | 3 |" in md and "Friedman chi2" in md
    tex = render(rep, "tex")
    assert r"\begin{tabular}" in tex and r"test/acc\_type/synergy" in tex and "no\\_game" in tex
    csv = pd.read_csv(pd.io.common.StringIO(render(rep, "csv")))
    assert {"metric", "dataset", "arm", "mean", "ci_low", "p_holm", "effect"} <= set(csv.columns)
    assert len(csv[csv.metric == "test/acc"]) == len(ARMS) * len(DATASETS)
    with pytest.raises(ConfigError, match="--format"):
        render(rep, "html")


def test_write_report_produces_files_and_plots(tmp_path):
    tidy, history = make_tidy()
    files = write_report(build_report(tidy, history=history), tmp_path)
    names = {p.name for p in files}
    assert {"report.md", "report.csv", "report.tex", "ranks.csv", "bars_test_acc.png", "cd_test_acc.png",
            "modalities_digits.png", "modalities_synthetic_competition.png"} <= names
    for p in files:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_seed_and_single_dataset_degrade_gracefully(tmp_path):
    tidy, _ = make_tidy()
    one = tidy[(tidy.seed == 0) & (tidy.dataset == "digits")]
    rep = build_report(one)
    row = rep.tables["test/acc"].iloc[1]
    assert np.isnan(row.p) and np.isnan(row["std"])
    assert rep.ranks["test/acc"][1] is None  # Friedman needs >= 2 datasets
    write_report(rep, tmp_path, formats=["md"])
    assert "needs at least 2 datasets" in (tmp_path / "report.md").read_text()


def test_power_columns_state_what_each_comparison_could_detect():
    from mcrlab.analysis.stats import mdd_paired_t

    tidy, _ = make_tidy()
    table = metric_table(tidy, "test/acc", "base")
    d = tidy[(tidy.metric == "test/acc") & (tidy.dataset == "digits")]
    arm = d[d.arm == "no_game"].sort_values("seed")["value"].to_numpy()
    base = d[d.arm == "base"].sort_values("seed")["value"].to_numpy()
    row = table[(table.dataset == "digits") & (table.arm == "no_game")].iloc[0]
    sd = np.std(arm - base, ddof=1)
    assert row.sd_diff == pytest.approx(sd)
    assert row.alpha_adj == pytest.approx(0.05 / 2)  # two arms against the base: Holm's first step
    assert row.mdd == pytest.approx(mdd_paired_t(sd, 3, 0.05 / 2, 0.8))
    assert table[table.arm == "base"]["mdd"].isna().all()
    md = render(build_report(tidy), "md")
    assert "| sd Δ | MDD |" in md and f"{row.mdd:.4f}" in md and "power 0.8" in md
    csv = pd.read_csv(pd.io.common.StringIO(render(build_report(tidy), "csv")))
    assert {"sd_diff", "alpha_adj", "mdd", "min_p", "can_reject", "significant"} <= set(csv.columns)


def test_no_star_where_the_seeds_cannot_reach_significance():
    # two seeds, identical differences of +0.0005: the t-test's p is ~0, yet no star (and MDD = inf)
    rows = [("base", "x", s, "test/acc", v) for s, v in enumerate([0.5, 0.6])]
    rows += [("arm", "x", s, "test/acc", v + 0.0005) for s, v in enumerate([0.5, 0.6])]
    rep = build_report(pd.DataFrame(rows, columns=["arm", "dataset", "seed", "metric", "value"]), base="base")
    r = rep.tables["test/acc"].set_index("arm").loc["arm"]
    assert r.p_holm < 0.05 and not r.significant and np.isinf(r.mdd)
    md = render(rep, "md")
    assert "| x | arm | 2 |" in md and " *" not in md.split("## test/acc")[1] and "| ∞ |" in md
    # the same with 3 seeds stars it: the rule is about the seeds, not the difference
    rows3 = rows[:2] + [("base", "x", 2, "test/acc", 0.7)] + rows[2:] + [("arm", "x", 2, "test/acc", 0.7006)]
    rep3 = build_report(pd.DataFrame(rows3, columns=["arm", "dataset", "seed", "metric", "value"]), base="base")
    assert bool(rep3.tables["test/acc"].set_index("arm").loc["arm"].significant)
    # Wilcoxon over 5 seeds can never reach 0.05 (exact min p = 0.0625): no star, MDD inf
    five = [("base", "x", s, "test/acc", 0.5 + 0.01 * s) for s in range(5)]
    five += [("arm", "x", s, "test/acc", 0.6 + 0.011 * s) for s in range(5)]
    rw = build_report(pd.DataFrame(five, columns=["arm", "dataset", "seed", "metric", "value"]), base="base",
                      test="wilcoxon").tables["test/acc"].set_index("arm").loc["arm"]
    assert rw.min_p == pytest.approx(0.0625) and not rw.can_reject and not rw.significant

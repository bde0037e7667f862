"""Comparison reports: tidy results -> statistics tables (Markdown, CSV, LaTeX) and plots.

Input is a *tidy* table, one row per measured value, columns ``arm, dataset, seed, metric, value``
(final metrics of each run), and optionally a history table with an extra ``step`` column (per-epoch
metrics such as ``val/D/<modality>``). Nothing here knows MLflow; ``mcrlab.analysis.runs`` builds
the tables from runs.

Per metric, one row per (dataset, arm): seeds n, mean, std, 95% t-interval, mean difference to the
base arm over matched seeds, raw and Holm-adjusted p (Holm over the arms of one metric on one
dataset), and Cohen's d_z. Across datasets (``rank_metrics``): average ranks and the Friedman test.
See ``mcrlab.analysis.stats`` for the choices.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mcrlab.analysis import stats
from mcrlab.config import ConfigError

__all__ = ["Report", "build_report", "metric_table", "rank_table", "render", "FORMATS",
           "TIDY_COLUMNS"]

TIDY_COLUMNS = ("arm", "dataset", "seed", "metric", "value")
FORMATS = ("md", "csv", "tex")
# metrics where smaller is better; everything else (accuracies, F1, probes) ranks higher-is-better
LOWER_IS_BETTER = re.compile(r"(loss|error|/D/)")


@dataclass
class Report:
    base: str
    test: str
    tables: dict[str, pd.DataFrame]                   # metric -> per (dataset, arm) statistics
    ranks: dict[str, tuple[pd.DataFrame, stats.FriedmanResult | None]] = field(default_factory=dict)
    tidy: pd.DataFrame | None = None
    history: pd.DataFrame | None = None

    def long_table(self) -> pd.DataFrame:
        return pd.concat(list(self.tables.values()), ignore_index=True)


def _check_tidy(df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in TIDY_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"results table: missing columns {missing} (need {', '.join(TIDY_COLUMNS)})")
    dup = df.duplicated(subset=["arm", "dataset", "seed", "metric"], keep=False)
    if dup.any():
        row = df[dup].iloc[0]
        raise ConfigError(f"results: arm '{row.arm}', dataset '{row.dataset}', seed {row.seed} has several "
                          f"values of {row.metric} (several finished runs of one cell; narrow the query)")
    return df


def metric_table(df: pd.DataFrame, metric: str, base: str, test: str = "t") -> pd.DataFrame:
    """Statistics of one metric: one row per (dataset, arm), base first. Raises on mismatched seeds."""
    sub = df[df["metric"] == metric]
    rows = []
    for dataset in sorted(sub["dataset"].unique(), key=str):
        d = sub[sub["dataset"] == dataset]
        values = {a: dict(zip(g["seed"], g["value"].astype(float), strict=True)) for a, g in d.groupby("arm", sort=False)}
        arms = _arm_order(values, base)
        paired = stats.compare_to_base(values, base, test, label=f"{metric} on {dataset}: ") \
            if base in values else {}
        family = sum(not math.isnan(r.p) for r in paired.values())  # Holm's m on this dataset
        for arm in arms:
            s = stats.summarize(list(values[arm].values()))
            r = paired.get(arm)
            pw = None
            if r is not None:
                pw = stats.power_of(stats.paired_diffs(values[arm], values[base], arm), test, m=family)
            rows.append({"metric": metric, "dataset": dataset, "arm": arm, "n": s.n, "mean": s.mean,
                         "std": s.std, "ci_low": s.ci_low, "ci_high": s.ci_high,
                         "diff": r.diff if r else (0.0 if arm == base else math.nan),
                         "p": r.p if r else math.nan, "p_holm": r.p_holm if r else math.nan,
                         "effect": r.effect if r else math.nan, "test": test if r else "",
                         "sd_diff": pw.sd_diff if pw else math.nan, "alpha_adj": pw.alpha_adj if pw else math.nan,
                         "mdd": pw.mdd if pw else math.nan, "min_p": pw.min_p if pw else math.nan,
                         "can_reject": bool(pw.can_reject) if pw else False,
                         "significant": bool(r is not None and pw is not None and pw.can_reject
                                             and r.p_holm < stats.ALPHA)})
    return pd.DataFrame(rows)


def _arm_order(values: dict, base: str) -> list[str]:
    return [base] * (base in values) + sorted((a for a in values if a != base), key=str)


def rank_table(df: pd.DataFrame, metric: str, higher_is_better: bool | None = None
               ) -> tuple[pd.DataFrame, stats.FriedmanResult | None]:
    """Average rank of each arm over datasets (seed means per cell) and the Friedman test.

    Only datasets where every arm has results enter. Friedman needs >= 2 datasets and >= 2 arms;
    otherwise the result is None and ranks are still given.
    """
    if higher_is_better is None:
        higher_is_better = not LOWER_IS_BETTER.search(metric)
    means = df[df["metric"] == metric].groupby(["dataset", "arm"])["value"].mean().unstack("arm")
    means = means.dropna(axis=0, how="any")
    if means.empty:
        return pd.DataFrame(columns=["arm", "avg_rank"]), None
    arms = list(means.columns)
    ranks = stats.average_ranks(means.to_numpy(), higher_is_better)
    table = pd.DataFrame({"metric": metric, "arm": arms, "avg_rank": ranks,
                          "n_datasets": len(means)}).sort_values("avg_rank", kind="stable")
    res = stats.friedman(means.to_numpy(), higher_is_better) if means.shape[0] >= 2 and len(arms) >= 2 \
        else None
    return table.reset_index(drop=True), res


def build_report(df: pd.DataFrame, base: str | None = None, metrics: Sequence[str] | None = None,
                 test: str = "t", rank_metrics: Sequence[str] | None = None,
                 history: pd.DataFrame | None = None) -> Report:
    """All tables. ``base`` defaults to an arm named 'base', else the first arm in sorted order."""
    df = _check_tidy(df.copy())
    if df.empty:
        raise ConfigError("results: no finished runs with metrics to compare")
    arms = sorted(df["arm"].astype(str).unique())
    if base is None:
        base = "base" if "base" in arms else arms[0]
    elif base not in arms:
        raise ConfigError(f"--base: arm '{base}' not among the results (arms: {', '.join(arms)})")
    present = list(dict.fromkeys(df["metric"]))
    metrics = [m for m in (metrics or _default_metrics(present)) if m in present]
    if not metrics:
        raise ConfigError(f"metrics: none of the requested metrics is present (present: {', '.join(present)})")
    if rank_metrics is None:
        rank_metrics = [m for m in ("test/acc", "test/f1", "val/best_acc") if m in present][:2] or metrics[:1]
    tables = {m: metric_table(df, m, base, test) for m in metrics}
    ranks = {m: rank_table(df, m) for m in rank_metrics if m in present}
    return Report(base, test, tables, ranks, df, history)


def _default_metrics(present: list[str]) -> list[str]:
    """Headline metrics first, then the per-modality and per-type diagnostics; per-epoch ones skipped."""
    head = [m for m in ("test/acc", "test/f1", "val/best_acc") if m in present]
    diag = sorted(m for m in present if m.startswith(("test/probe/", "test/head/", "test/acc_type/", "test/D/")))
    rest = sorted(m for m in present if m.startswith("test/") and m not in head and m not in diag)
    return head + rest + diag or present


# --------------------------------------------------------------------------------------------------
# text rendering


def _f(v: float, spec: str = ".4f") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _p(v: float) -> str:
    return "" if math.isnan(v) else ("<1e-4" if v < 1e-4 else f"{v:.4f}")


def mdd_text(v: float, inf: str = "∞") -> str:
    """An MDD cell: blank when unknown, ``inf`` (never significant with these seeds), else 4 decimals."""
    return "" if math.isnan(v) else inf if math.isinf(v) else f"{v:.4f}"


def _rows(table: pd.DataFrame, pm: str, inf: str = "∞") -> list[list[str]]:
    out = []
    for r in table.itertuples():
        sig = " *" if r.significant else ""
        ci = f"[{_f(r.ci_low)}, {_f(r.ci_high)}]" if not math.isnan(r.ci_low) else ""
        out.append([str(r.dataset), str(r.arm), str(r.n), f"{_f(r.mean)}{pm}{_f(r.std)}", ci,
                    _f(r.diff, "+.4f"), _f(r.sd_diff), mdd_text(r.mdd, inf), _p(r.p), _p(r.p_holm) + sig,
                    _f(r.effect, ".2f")])
    return out


HEADER = ["dataset", "arm", "n", "mean ± std", "95% CI", "Δ base", "sd Δ", "MDD", "p", "p Holm", "d_z"]


def render_markdown(rep: Report) -> str:
    lines = [f"# Comparison report\n\nBase arm: `{rep.base}`. Test: {_test_name(rep.test)} over matched "
             "seeds, Holm-corrected over the arms of each metric and dataset (* = p Holm < 0.05, "
             "given only where the test can reach it with these seeds); d_z = mean difference / std of "
             "differences; 95% CI is the t-interval over seeds. Power: sd Δ is the seed-to-seed std of the "
             "paired differences; MDD is the smallest true difference the test detects with power 0.8 at "
             f"the worst-case Holm alpha (0.05 / m, m = arms per dataset){_mdd_how(rep.test)}; "
             "∞ = no difference can come out significant with these seeds.\n"]
    for metric, (ranks, fr) in rep.ranks.items():
        lines.append(f"## Ranks across datasets: {metric}\n")
        lines.append("| arm | average rank |\n|---|---|")
        lines += [f"| {r.arm} | {r.avg_rank:.2f} |" for r in ranks.itertuples()]
        lines.append("\n" + _friedman_line(fr) + "\n")
    for metric, table in rep.tables.items():
        lines.append(f"## {metric}\n")
        lines.append("| " + " | ".join(HEADER) + " |")
        lines.append("|" + "---|" * len(HEADER))
        lines += ["| " + " | ".join(row) + " |" for row in _rows(table, " ± ")]
        lines.append("")
    return "\n".join(lines)


def _mdd_how(test: str) -> str:
    if test == "wilcoxon":
        return (" (the paired t-test's noncentral-t MDD times sqrt(pi/3), Wilcoxon's efficiency under normal "
                "differences; no star below the exact minimum p 2/2^n)")
    return f" (noncentral t, s_d taken as the true std; no star with fewer than {stats.MIN_SEEDS_T} seeds)"


def _test_name(test: str) -> str:
    return {"t": "paired t-test", "wilcoxon": "Wilcoxon signed-rank test"}.get(test, test)


def _friedman_line(fr: stats.FriedmanResult | None) -> str:
    if fr is None:
        return "Friedman test: needs at least 2 datasets with results for every arm."
    return (f"Friedman chi2 = {fr.statistic:.3f}, p = {_p(fr.p)} over {fr.n_datasets} datasets; "
            f"Nemenyi critical difference (alpha 0.05) = {fr.cd:.3f}.")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(s: str) -> str:
    return "".join(_TEX.get(c, c) for c in s)


def render_latex(rep: Report) -> str:
    """One booktabs table per metric (needs \\usepackage{booktabs})."""
    out = [f"% mcrlab comparison report; base arm: {rep.base}; {_test_name(rep.test)}, Holm-corrected"]
    head = ["dataset", "arm", "$n$", r"mean $\pm$ std", r"95\% CI", r"$\Delta$ base", r"$s_\Delta$", "MDD",
            "$p$", "$p_{\\mathrm{Holm}}$", "$d_z$"]
    for metric, table in rep.tables.items():
        out += [r"\begin{table}[t]", r"\centering", f"\\caption{{{_tex(metric)} (base: {_tex(rep.base)})}}",
                r"\begin{tabular}{llrlllrrrrr}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
        for row in _rows(table, " $\\pm$ ", inf="$\\infty$"):
            row[0], row[1] = _tex(row[0]), _tex(row[1])
            row[8], row[9] = row[8].replace("<", "$<$"), row[9].replace("<", "$<$").replace(" *", "$^*$")
            out.append(" & ".join(row) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    for metric, (ranks, fr) in rep.ranks.items():
        out += [r"\begin{table}[t]", r"\centering", f"\\caption{{Average ranks: {_tex(metric)}. "
                f"{_tex(_friedman_line(fr))}}}", r"\begin{tabular}{lr}", r"\toprule", r"arm & avg.\ rank \\",
                r"\midrule"]
        out += [f"{_tex(str(r.arm))} & {r.avg_rank:.2f} \\\\" for r in ranks.itertuples()]
        out += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(out)


def render(rep: Report, fmt: str) -> str:
    if fmt == "md":
        return render_markdown(rep)
    if fmt == "tex":
        return render_latex(rep)
    if fmt == "csv":
        return rep.long_table().to_csv(index=False)
    raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")


def slug(text: str) -> str:
    """A file-name-safe form of a metric or dataset name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def seed_interval(values: np.ndarray) -> tuple[float, float]:
    """(mean, CI half-width) of values over seeds, half-width 0 with one seed (for error bars)."""
    s = stats.summarize(list(np.asarray(values, dtype=float)))
    return s.mean, 0.0 if math.isnan(s.ci_half) else s.ci_half

"""Plots of a comparison report (matplotlib, Agg backend: no display needed on cluster nodes).

* ``bars_<metric>.png``: per dataset, one bar per arm (mean over seeds) with its 95% t-interval;
  ``*`` marks arms that differ from the base at Holm-corrected p < 0.05.
* ``cd_<metric>.png``: critical-difference diagram (Demsar 2006): average ranks on an axis, the
  Nemenyi CD as a scale bar, and thick lines joining arms whose ranks differ by less than CD.
* ``modalities_<dataset>.png``: per-modality behaviour per arm: linear-probe accuracy of each frozen
  encoder (the weak modality's under-training shows here), each modality's own head accuracy,
  accuracy per information type (synthetic data), and D_m per epoch (mean over seeds) when the
  per-epoch history is present.

Scaled for many arms (the paper grid has 17): a palette of distinct colours for up to 20 arms (tab10, then
tab20, then evenly spaced hues), one y-range shared by every panel of a figure that shows the same quantity,
legends outside the axes (a figure legend to the right; ``bbox_inches="tight"`` keeps it in the file), and
figures that widen with the number of arms so tick labels do not collide. Each ``*_figure`` function builds
the figure (tests inspect it); ``plot_*`` saves and closes it.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mcrlab.analysis import stats  # noqa: E402
from mcrlab.analysis.report import Report, seed_interval, slug  # noqa: E402

__all__ = ["plot_all", "plot_bars", "plot_cd", "plot_modalities", "bars_figure", "cd_figure", "modalities_figure",
           "arm_colors"]

FAMILIES = (("test/probe/", "linear probe accuracy (frozen encoder)"),
            ("test/head/", "own-head accuracy in the fused model"),
            ("test/acc_type/", "accuracy per information type"))


def arm_colors(arms: list[str]) -> dict[str, tuple]:
    """One distinct colour per arm, in order: tab10 up to 10 arms, tab20 up to 20, evenly spaced hues beyond
    (never a repeated colour)."""
    n = len(arms)
    if n <= 10:
        cmap, pick = plt.get_cmap("tab10"), list(range(n))
    elif n <= 20:
        # tab20 pairs a dark and a light shade; darks first keeps neighbours in the legend apart
        cmap, pick = plt.get_cmap("tab20"), ([2 * i for i in range(10)] + [2 * i + 1 for i in range(10)])[:n]
    else:
        cmap = plt.get_cmap("hsv")
        return {a: cmap(i / n) for i, a in enumerate(arms)}
    return {a: cmap(i) for a, i in zip(arms, pick, strict=True)}


_colors = arm_colors


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")  # tight: the legends outside the axes stay in the file
    plt.close(fig)
    return path


def plot_all(rep: Report, out: Path) -> list[Path]:
    files = []
    for metric in list(rep.tables)[:4]:  # headline metrics; diagnostics get the modality figure
        if not metric.startswith(("test/probe/", "test/head/", "test/acc_type/", "test/D/")):
            files.append(plot_bars(rep, metric, out / f"bars_{slug(metric)}.png"))
    for metric, (ranks, fr) in rep.ranks.items():
        if fr is not None:
            files.append(plot_cd(ranks, fr, metric, out / f"cd_{slug(metric)}.png"))
    if rep.tidy is not None:
        for dataset in sorted(rep.tidy["dataset"].unique(), key=str):
            path = plot_modalities(rep, dataset, out / f"modalities_{slug(dataset)}.png")
            if path is not None:
                files.append(path)
    return files


def _arms(rep: Report) -> list[str]:
    arms = sorted({str(a) for t in rep.tables.values() for a in t["arm"]})
    return [rep.base] * (rep.base in arms) + [a for a in arms if a != rep.base]


def plot_bars(rep: Report, metric: str, path: Path) -> Path:
    return _save(bars_figure(rep, metric), path)


def bars_figure(rep: Report, metric: str) -> plt.Figure:
    """Per dataset one panel, all panels on one y-range (the same metric)."""
    table = rep.tables[metric]
    datasets = list(dict.fromkeys(table["dataset"]))
    arms = _arms(rep)
    colors = _colors(arms)
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(4.0, 0.32 * len(arms) + 1.5) * len(datasets), 3.8),
                             squeeze=False, sharey=True)
    lows, tops = [], []
    for ax, dataset in zip(axes[0], datasets, strict=True):
        t = table[table["dataset"] == dataset].set_index("arm")
        present = [a for a in arms if a in t.index]
        x = np.arange(len(present))
        means = t.loc[present, "mean"].to_numpy()
        err = np.nan_to_num((t.loc[present, "ci_high"] - t.loc[present, "ci_low"]).to_numpy() / 2.0)
        ax.bar(x, means, yerr=err, capsize=4, color=[colors[a] for a in present], edgecolor="black",
               linewidth=[1.8 if a == rep.base else 0.5 for a in present])
        top = float(np.nanmax(means + err)) if len(means) else 1.0
        for i, a in enumerate(present):
            p = t.loc[a, "p_holm"]
            if not math.isnan(p) and p < 0.05:
                ax.text(i, means[i] + err[i], "*", ha="center", va="bottom", fontsize=14)
        lows.append(float(np.nanmin(means - err)) if len(means) else 0.0)
        tops.append(top)
        # many arms: names at 60 degrees and smaller, so neighbours do not collide
        ax.set_xticks(x, present, rotation=35 if len(present) <= 8 else 60, ha="right",
                      fontsize=8 if len(present) <= 8 else 7)
        ax.set_title(str(dataset), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    lo, top = min(lows, default=0.0), max(tops, default=1.0)
    span = max(top - lo, 1e-6)
    axes[0][0].set_ylim(max(0.0, lo - 0.5 * span) if lo >= 0 else lo - 0.5 * span, top + 0.25 * span)
    axes[0][0].set_ylabel(metric)
    fig.suptitle(f"{metric}: mean over seeds, 95% CI (* Holm p<0.05 vs {rep.base}, thick edge = base)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def plot_cd(ranks: pd.DataFrame, fr: stats.FriedmanResult, metric: str, path: Path) -> Path:
    return _save(cd_figure(ranks, fr, metric), path)


def cd_figure(ranks: pd.DataFrame, fr: stats.FriedmanResult, metric: str) -> plt.Figure:
    """Critical-difference diagram: rank 1 (best) on the left."""
    arms = list(ranks["arm"])
    r = ranks["avg_rank"].to_numpy(dtype=float)
    k = len(arms)
    half = (k + 1) // 2
    depth = half * 0.5 + 0.6
    fig, ax = plt.subplots(figsize=(max(8.0, 0.5 * k + 4.0), 1.4 + 0.45 * depth))
    ax.set_xlim(-1.8, k + 2.8)
    ax.set_ylim(-depth, 1.8)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black", linewidth=1)
    for tick in range(1, k + 1):
        ax.vlines(tick, 0, 0.12, color="black")
        ax.text(tick, 0.2, str(tick), ha="center", fontsize=8)
    # CD scale bar above the axis
    ax.hlines(1.0, 1, 1 + fr.cd, color="firebrick", linewidth=2)
    ax.text(1 + fr.cd / 2, 1.15, f"CD = {fr.cd:.2f}", ha="center", fontsize=8, color="firebrick")
    # arm labels: the better half to the left of the axis, the rest to the right
    for i, (arm, rank) in enumerate(zip(arms, r, strict=True)):
        left = i < half
        y = -(i + 1) * 0.5 if left else -(k - i) * 0.5
        x_end = 0.6 if left else k + 0.4
        ax.plot([rank, rank, x_end], [0, y, y], color="black", linewidth=0.8)
        ax.text(x_end - 0.05 if left else x_end + 0.05, y, f"{arm} ({rank:.2f})",
                ha="right" if left else "left", va="center", fontsize=8)
    # cliques: maximal runs of arms (sorted by rank) spanning less than CD
    order = np.argsort(r)
    cliques: list[tuple[int, int]] = []
    for i in range(k):
        j = i
        while j + 1 < k and r[order[j + 1]] - r[order[i]] < fr.cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in cliques):
            cliques.append((i, j))
    for n, (i, j) in enumerate(cliques):
        y = -0.15 - 0.12 * n
        ax.hlines(y, r[order[i]] - 0.03, r[order[j]] + 0.03, color="dimgray", linewidth=3)
    ax.set_title(f"{metric}: average rank over {fr.n_datasets} datasets "
                 f"(Friedman p = {fr.p:.3g}; joined = not different at Nemenyi 0.05)", fontsize=9)
    fig.tight_layout()
    return fig


def _grouped_bars(ax, df: pd.DataFrame, prefix: str, arms: list[str], colors: dict) -> bool:
    sub = df[df["metric"].str.startswith(prefix)]
    if sub.empty:
        return False
    names = sorted({m[len(prefix):] for m in sub["metric"]})
    width = 0.8 / max(1, len(arms))
    for j, arm in enumerate(arms):
        vals = [seed_interval(sub[(sub["arm"] == arm) & (sub["metric"] == prefix + n)]["value"].to_numpy())
                if ((sub["arm"] == arm) & (sub["metric"] == prefix + n)).any() else (np.nan, 0.0)
                for n in names]
        x = np.arange(len(names)) + (j - (len(arms) - 1) / 2) * width
        ax.bar(x, [v[0] for v in vals], width, yerr=[v[1] for v in vals], capsize=2, label=arm,
               color=colors[arm], edgecolor="black", linewidth=0.4)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return True


def plot_modalities(rep: Report, dataset: str, path: Path) -> Path | None:
    """Per-modality diagnostics of every arm on one dataset; None when no diagnostic is present."""
    fig = modalities_figure(rep, dataset)
    return None if fig is None else _save(fig, path)


def modalities_figure(rep: Report, dataset: str) -> plt.Figure | None:
    """The accuracy panels share one y-range; one arm legend (colours) outside on the right, the D_m panel's
    line styles (modalities) in a legend below it."""
    assert rep.tidy is not None, "a report built from a tidy table"
    df = rep.tidy[rep.tidy["dataset"] == dataset]
    arms = [a for a in _arms(rep) if a in set(df["arm"].astype(str))]
    colors = _colors(_arms(rep))
    hist = None
    if rep.history is not None and not rep.history.empty:
        h = rep.history
        hist = h[(h["dataset"] == dataset) & h["metric"].str.startswith("val/D/")]
    panels = [(p, title) for p, title in FAMILIES if df["metric"].str.startswith(p).any()]
    n_panels = len(panels) + (hist is not None and not hist.empty)
    if n_panels == 0:
        return None
    width = 4.2 + 0.12 * max(0, len(arms) - 4)  # grouped bars widen with the arms
    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, 3.6), squeeze=False)
    for ax, (prefix, title) in zip(axes[0], panels, strict=False):
        _grouped_bars(ax, df, prefix, arms, colors)
        if prefix == "test/probe/":  # the weak modality: the lowest probe accuracy under the base arm
            probe = df[df["metric"].str.startswith(prefix) & (df["arm"] == (arms[0] if arms else ""))]
            if not probe.empty:
                weak = probe.groupby("metric")["value"].mean().idxmin()[len(prefix):]
                title += f" (weak: {weak})"
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("accuracy (mean, 95% CI)", fontsize=8)
    if panels:  # the accuracy panels: one y-range
        lo = min(ax.get_ylim()[0] for ax in axes[0][:len(panels)])
        hi = max(ax.get_ylim()[1] for ax in axes[0][:len(panels)])
        for ax in axes[0][:len(panels)]:
            ax.set_ylim(lo, hi)
    if hist is not None and not hist.empty:
        ax = axes[0][-1]
        styles = ["-", "--", ":", "-."]
        mods = sorted({m[len("val/D/"):] for m in hist["metric"]})
        for arm in arms:
            for i, mod in enumerate(mods):
                curve = hist[(hist["arm"] == arm) & (hist["metric"] == "val/D/" + mod)]
                if curve.empty:
                    continue
                mean = curve.groupby("step")["value"].mean()
                ax.plot(mean.index, mean.to_numpy(), styles[i % 4], color=colors[arm], linewidth=1.2)
        ax.set_title("val D_m per epoch (seed mean; colour = arm)", fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        style_handles = [plt.Line2D([], [], color="black", linestyle=styles[i % 4], label=mod)
                         for i, mod in enumerate(mods)]
        ax.legend(handles=style_handles, title="modality", fontsize=7, title_fontsize=7,
                  loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(4, len(mods)), frameon=False)
    fig.suptitle(f"per-modality diagnostics on {dataset}", fontsize=10)
    fig.tight_layout()
    arm_handles = [plt.Rectangle((0, 0), 1, 1, facecolor=colors[a], edgecolor="black", linewidth=0.4, label=a)
                   for a in arms]
    fig.legend(handles=arm_handles, title="arm", fontsize=7, title_fontsize=8, loc="center left",
               bbox_to_anchor=(1.0, 0.5), ncol=1 + len(arms) // 18, frameon=False)
    return fig

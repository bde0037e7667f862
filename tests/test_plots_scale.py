"""Every plot kind of a comparison report, rendered with 2 and with 17 arms (the paper grid's size).

Checked on the rendered figures: the file is a non-trivial PNG; every arm has its own colour; panels of one
figure share their y-range; no legend overlaps any axes (matplotlib's tight bounding boxes after a draw);
x tick labels of the bar panels do not collide.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mcrlab.analysis import plots
from mcrlab.analysis.report import build_report

DATASETS = ["synthetic:competition", "mfeat:fou+kar", "digits"]


def _report(n_arms: int):
    rng = np.random.default_rng(n_arms)
    arms = ["base"] + [f"arm_with_a_long_name_{i:02d}" for i in range(1, n_arms)]
    rows, hist = [], []
    for d_i, dataset in enumerate(DATASETS):
        for a_i, arm in enumerate(arms):
            level = 0.8 - 0.01 * a_i - 0.1 * d_i
            for s in range(3):
                acc = level + 0.01 * s + rng.normal(0, 0.004)
                rows += [(arm, dataset, s, "test/acc", acc), (arm, dataset, s, "test/probe/a", 0.7 + 0.01 * s),
                         (arm, dataset, s, "test/probe/b", 0.3 + 0.01 * a_i),
                         (arm, dataset, s, "test/head/a", 0.6), (arm, dataset, s, "test/head/b", 0.2),
                         (arm, dataset, s, "test/acc_type/synergy", 0.5 + 0.005 * a_i)]
                for epoch in range(1, 4):
                    hist += [(arm, dataset, s, "val/D/a", epoch, 0.1 * epoch),
                             (arm, dataset, s, "val/D/b", epoch, 0.02 * epoch * (1 + a_i / 10))]
    tidy = pd.DataFrame(rows, columns=["arm", "dataset", "seed", "metric", "value"])
    history = pd.DataFrame(hist, columns=["arm", "dataset", "seed", "metric", "step", "value"])
    return build_report(tidy, history=history), arms


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _check_legends_clear_of_axes(fig) -> int:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for legend in legends:
        box = legend.get_tightbbox(renderer)
        for ax in fig.axes:
            assert not _overlap(box, ax.get_window_extent(renderer)), (legend, ax.get_title())
    return len(legends)


@pytest.mark.parametrize("n_arms", [2, 17])
def test_every_plot_kind_scales_to_many_arms(tmp_path, n_arms):
    rep, arms = _report(n_arms)
    colors = plots.arm_colors(arms)
    assert len(set(colors.values())) == n_arms  # no repeated colour

    fig = plots.bars_figure(rep, "test/acc")
    ylims = {ax.get_ylim() for ax in fig.axes}
    assert len(fig.axes) == len(DATASETS) and len(ylims) == 1  # one y-range for the same metric
    fig.canvas.draw()
    for ax in fig.axes:
        labels = [t for t in ax.get_xticklabels() if t.get_text()]
        assert len(labels) == n_arms
        # rotated labels are parallel strips: neighbours do not collide when the strips' distance
        # (tick spacing x sin(rotation)) is at least the text height
        xs = [ax.transData.transform((tick, 0))[0] for tick in ax.get_xticks()]
        label = labels[0]
        height = label.get_fontsize() * fig.dpi / 72
        assert min(np.diff(xs)) * np.sin(np.radians(label.get_rotation())) >= height
    assert _check_legends_clear_of_axes(fig) == 0  # bars name arms on the axis, no legend needed

    ranks, fr = rep.ranks["test/acc"]
    fig = plots.cd_figure(ranks, fr, "test/acc")
    assert len(fig.axes) == 1

    fig = plots.modalities_figure(rep, DATASETS[0])
    accuracy_panels = fig.axes[:3]
    assert len({ax.get_ylim() for ax in accuracy_panels}) == 1
    assert _check_legends_clear_of_axes(fig) == 2  # the arm legend and the D_m panel's modality legend
    (arm_legend,) = fig.legends
    assert [t.get_text() for t in arm_legend.get_texts()] == arms

    files = plots.plot_all(rep, tmp_path)
    kinds = {f.name.split("_")[0] for f in files}
    assert kinds == {"bars", "cd", "modalities"}
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f.stat().st_size > 5000

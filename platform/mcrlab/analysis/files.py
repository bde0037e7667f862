"""Writing a report to a folder: its tables in each format, the rank tables, and its plots.

Kept apart from ``report`` (tables, no matplotlib) and ``plots`` (figures, which read a ``Report``) so that
neither imports the other's dependents.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mcrlab.analysis.report import FORMATS, Report, render

__all__ = ["write_report"]


def write_report(rep: Report, out_dir: str | Path, formats: Sequence[str] = FORMATS,
                 plots: bool = True) -> list[Path]:
    """Write report.<fmt> for each format, ranks.csv, and the plots; returns the files written."""
    from mcrlab.analysis import plots as plots_module  # matplotlib only when plotting

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for fmt in formats:
        path = out / f"report.{fmt}"
        path.write_text(render(rep, fmt))
        files.append(path)
    if rep.ranks:
        path = out / "ranks.csv"
        pd.concat([t for t, _ in rep.ranks.values()], ignore_index=True).to_csv(path, index=False)
        files.append(path)
    if plots:
        files += plots_module.plot_all(rep, out)
    return files

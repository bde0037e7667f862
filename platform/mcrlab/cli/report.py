"""``mcrlab report SWEEP``: a sweep's analysis - parameter importances and Optuna's plots, logged to MLflow.

SWEEP is a sweep folder (``runs/sweeps/<sweep id>``) or a sweep id under ``--storage``. The files
(``mcrlab.analysis.sweep_report``) go to ``<sweep folder>/report/<study>/`` (or ``--out``) and onto the
sweep's MLflow run under ``report/<study>/``. ``mcrlab sweep`` writes the same report when it ends.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register", "cmd_report", "report_and_log"]


def report_and_log(info: Any, out: str | None = None, *, log: bool = True,
                   tracking_uri: str | None = None) -> dict:
    """Write the sweep's report; log it to the sweep's MLflow run when there is one. Returns the reports."""
    from mcrlab.analysis.sweep_report import log_sweep_report, sweep_report

    reports = sweep_report(info, out)
    uri = tracking_uri or info.tracking_uri
    if log and uri and info.run_id:
        try:
            log_sweep_report(uri, info.run_id, reports)
        except Exception as err:  # noqa: BLE001 - the files are on disk; say why MLflow has none
            print(f"mcrlab report: could not log to MLflow run {info.run_id} at {uri}: "
                  f"{type(err).__name__}: {err}", file=sys.stderr)
    return reports


def print_reports(reports: dict, out: Any = None) -> None:
    from mcrlab.analysis.sweep_report import format_importances, format_pareto, importances_for

    out = out or sys.stdout
    for name, rep in reports.items():
        counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(rep.counts.items()))
        print(f"  {name}: {counts}", file=out)
        if rep.importances:
            print(f"    parameter importances (Optuna){importances_for(rep)}:", file=out)
            for line in format_importances(rep.importances):
                print(f"      {line}", file=out)
        if len(rep.objectives) > 1:
            print(f"    Pareto front ({len(rep.pareto)} trials; table: pareto_front.csv):", file=out)
            for line in format_pareto(rep.pareto):
                print(f"      {line}", file=out)
        for plot, why in rep.skipped.items():
            print(f"    {plot}: skipped ({why})", file=out)
        if rep.files:
            print(f"    plots: {rep.files[0].parent}", file=out)


def cmd_report(args: argparse.Namespace) -> int:
    from mcrlab.analysis.sweep_report import find_sweep

    info = find_sweep(args.sweep, args.storage)  # ConfigError -> exit 2
    reports = report_and_log(info, args.out, log=not args.no_log, tracking_uri=args.tracking_uri)
    print(f"sweep {info.sweep_id}: report", file=sys.stdout)
    print_reports(reports)
    if info.run_id and not args.no_log:
        print(f"  logged to MLflow run {info.run_id} under report/", file=sys.stdout)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="a sweep's analysis: parameter importances, optimisation history, parallel coordinates, "
                       "slice and contour plots (logged to the sweep's MLflow run)",
        description="Read the Optuna studies of a sweep and write, per study, parameter importances "
                    "and Optuna's plots (optimisation history, importances, parallel coordinates, slice, "
                    "contour) as PNG files; log them to the sweep's MLflow run under report/<study>/.")
    p.add_argument("sweep", metavar="SWEEP", help="sweep folder (runs/sweeps/<id>) or sweep id")
    p.add_argument("--storage", default="runs", metavar="PATH", help="run folder holding sweeps/ (default ./runs)")
    p.add_argument("--out", metavar="DIR", help="write the files here (default <sweep folder>/report)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the one the sweep used)")
    p.add_argument("--no-log", action="store_true", help="do not log the files to MLflow")
    p.set_defaults(func=cmd_report)

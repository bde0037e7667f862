"""``mcrlab ablate`` and ``mcrlab compare``: run an ablation grid; compare arms from any MLflow runs.

compare reads runs (an experiment, an ablation or sweep run with everything nested under it, or an
MLflow filter), turns them into the tidy table of ``mcrlab.report`` (arm, dataset, seed, metric, value)
and writes the report. Column sources, first found wins:
  arm      tag mcrlab.arm, else the param named by --group-by (default method.name)
  dataset  tag mcrlab.dataset, else param data.name
  seed     tag mcrlab.seed, else param train.seed
Only FINISHED runs that are not marked stale enter; runs that have children (ablation, arm, sweep and
study runs) are containers and are skipped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from mcrlab.config import ConfigError

__all__ = ["register", "collect_runs", "tidy_from_runs", "compare", "cmd_ablate", "cmd_compare"]

K = "mcrlab."
PARENT = "mlflow.parentRunId"
HISTORY_PREFIXES = ("val/D/",)


def collect_runs(uri: str, experiment: str | None = None, run_id: str | None = None,
                 filter_string: str = "") -> list:
    """MLflow ``Run`` objects selected by experiment, by a root run (all descendants) or by a filter."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise ConfigError(f"--experiment: no MLflow experiment named '{experiment}' in {uri}")
        exp_ids = [exp.experiment_id]
    else:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    if run_id is not None:
        try:
            root = client.get_run(run_id)
        except MlflowException:
            raise ConfigError(f"--run: no MLflow run '{run_id}' in {uri}") from None
        exp_ids = [root.info.experiment_id]
        # MLflow's filter has no IN for tags: fetch the experiment once and walk parentRunId in memory
        children: dict[str, list] = {}
        for r in client.search_runs(exp_ids, max_results=50000):
            children.setdefault(r.data.tags.get(PARENT), []).append(r)
        runs, frontier = [], [run_id]
        while frontier:
            level = [c for pid in frontier for c in children.get(pid, [])]
            runs += level
            frontier = [c.info.run_id for c in level]
        if filter_string:
            keep = {r.info.run_id for r in client.search_runs(exp_ids, filter_string, max_results=50000)}
            runs = [r for r in runs if r.info.run_id in keep]
        return runs
    try:
        return client.search_runs(exp_ids, filter_string=filter_string, max_results=50000)
    except MlflowException as err:
        raise ConfigError(f"--filter: MLflow rejected the filter {filter_string!r}: "
                          f"{str(err).splitlines()[0]}") from None


def _field(run, tag: str, param: str | None, default: Any = None) -> Any:
    if f"{K}{tag}" in run.data.tags:
        return run.data.tags[f"{K}{tag}"]
    if param is not None and param in run.data.params:
        return run.data.params[param]
    return default


def tidy_from_runs(runs: list, group_by: str = "method.name", uri: str | None = None,
                   history: bool = True):
    """(tidy, history) DataFrames from MLflow runs; history holds per-epoch val/D/* when ``history``."""
    import pandas as pd

    parents = {r.data.tags.get(PARENT) for r in runs}
    rows, hist = [], []
    client = None
    if history and uri is not None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
    for r in runs:
        if r.info.status != "FINISHED" or r.data.tags.get(f"{K}stale") == "true" or r.info.run_id in parents:
            continue
        if not r.data.metrics:
            continue
        arm = _field(r, "arm", group_by, "all")
        dataset = _field(r, "dataset", "data.name", "all")
        seed = _field(r, "seed", "train.seed", r.info.run_id[:8])
        seed = int(seed) if str(seed).lstrip("-").isdigit() else seed
        for metric, value in r.data.metrics.items():
            rows.append((str(arm), str(dataset), seed, metric, float(value)))
            if client is not None and metric.startswith(HISTORY_PREFIXES):
                for m in client.get_metric_history(r.info.run_id, metric):
                    hist.append((str(arm), str(dataset), seed, metric, m.step, float(m.value)))
    tidy = pd.DataFrame(rows, columns=["arm", "dataset", "seed", "metric", "value"])
    hist_df = pd.DataFrame(hist, columns=["arm", "dataset", "seed", "metric", "step", "value"])
    return tidy, hist_df


def compare(uri: str, *, experiment: str | None = None, run_id: str | None = None, filter_string: str = "",
            formats: list[str] | tuple[str, ...] = ("md", "csv", "tex"), out: str | Path | None = None,
            base: str | None = None, test: str = "t", metrics: list[str] | None = None,
            group_by: str = "method.name", plots: bool = True, log_to: str | None = None):
    """Build and write the report; log it as artifacts of ``log_to`` (an ablation run) when given.

    Returns (report, files). Raises ConfigError for mismatched seeds, missing runs or bad options.
    """
    from mcrlab.report import build_report, write_report
    from mcrlab.tracking import Tracker

    runs = collect_runs(uri, experiment, run_id, filter_string)
    tidy, hist = tidy_from_runs(runs, group_by, uri)
    if tidy.empty:
        what = experiment and f"experiment '{experiment}'" or run_id and f"run {run_id}" or "the store"
        raise ConfigError(f"compare: no FINISHED runs with metrics under {what} "
                          f"(filter: {filter_string or 'none'})")
    rank_metrics = None
    if log_to is not None:
        headline = Tracker(uri).client.get_run(log_to).data.params.get("metric")
        rank_metrics = [headline] if headline else None
    rep = build_report(tidy, base=base, metrics=metrics, test=test, history=hist, rank_metrics=rank_metrics)
    tmp = None
    if out is None:
        tmp = tempfile.mkdtemp(prefix="mcrlab-report-")
        out = tmp
    files = write_report(rep, out, formats, plots=plots)
    if log_to is not None:
        Tracker(uri).log_artifacts(log_to, out, "report")
    return rep, files


def cmd_compare(args: argparse.Namespace) -> int:
    from mcrlab.report import render
    from mcrlab.tracking import check_tracking, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking(uri)
    if not (args.experiment or args.run or args.filter):
        raise ConfigError("compare: give --experiment NAME, --run ID or --filter EXPR")
    log_to = None
    if args.run:
        from mcrlab.tracking import Tracker

        try:
            tags = Tracker(uri).client.get_run(args.run).data.tags
        except Exception:  # reported below by collect_runs with a clear message
            tags = {}
        log_to = args.run if tags.get(f"{K}kind") == "ablation" and not args.no_log else None
    rep, files = compare(uri, experiment=args.experiment, run_id=args.run, filter_string=args.filter or "",
                         formats=[args.format], out=args.out, base=args.base, test=args.test,
                         metrics=args.metric or None, group_by=args.group_by, plots=not args.no_plots,
                         log_to=log_to)
    print(render(rep, args.format))
    where = f" (logged to run {log_to} under report/)" if log_to else ""
    print(f"mcrlab compare: wrote {len(files)} files to {files[0].parent}{where}", file=sys.stderr)
    return 0


def cmd_ablate(args: argparse.Namespace) -> int:
    from mcrlab.ablation import load_spec
    from mcrlab.ablation_runner import describe, dumps, run_ablation
    from mcrlab.tracking import check_tracking, check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    (check_tracking_uri if args.dry_run else check_tracking)(uri)  # a dry run creates nothing
    spec = load_spec(args.spec, smoke=args.smoke, tracking_uri=uri)
    if args.dry_run:
        print(dumps(describe(spec)))
        return 0
    print(f"mcrlab ablate: {spec.ablation_id}: {len(spec.arms)} arms x {len(spec.datasets)} datasets x "
          f"{len(spec.seeds)} seeds = {len(spec.cells)} cells; tracking {uri}", file=sys.stderr)
    outcome = run_ablation(spec, uri, resume=args.resume, verbose=args.verbose)
    print(f"mcrlab ablate: ran {len(outcome.ran)}, already done {len(outcome.skipped)}, failed "
          f"{len(outcome.failed)}; ablation run {outcome.ablation_run_id}", file=sys.stderr)
    if outcome.failed:
        print(f"mcrlab ablate: failed cells {outcome.failed}; rerun with --resume", file=sys.stderr)
        return 1
    rep, files = compare(uri, run_id=outcome.ablation_run_id, out=args.out, test=args.test,
                         log_to=outcome.ablation_run_id)
    print(Path(files[0]).read_text())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ablate", help="run an ablation grid (arms x datasets x seeds) as Ray Tune trials, tracked in MLflow",
        description="Run the cells of an ablation spec (search_spaces/ablation_*.yaml) as Ray Tune trials; "
                    "each cell is an MLflow run nested under its arm under the ablation run. At the end the "
                    "comparison report is written and logged to the ablation run.")
    p.add_argument("spec", help="ablation spec YAML")
    p.add_argument("--resume", action="store_true", help="run only the missing or failed cells of this ablation")
    p.add_argument("--smoke", action="store_true", help="the spec's smoke variant (seconds)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    p.add_argument("--dry-run", action="store_true", help="validate the spec, print the grid, run nothing")
    p.add_argument("--out", help="also write the report here (default: a temporary folder)")
    p.add_argument("--test", choices=("t", "wilcoxon"), default="t", help="paired test (default: t)")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="Ray Tune verbosity")
    p.set_defaults(func=cmd_ablate)

    c = sub.add_parser(
        "compare", help="compare arms over seeds and datasets: tables with CI, paired tests, ranks, plots",
        description="Per metric, a table of arms x datasets: mean, std, 95% t-interval over seeds; the "
                    "difference to the base arm with a paired t-test (or Wilcoxon) over matched seeds, Holm-"
                    "corrected, with Cohen's d_z; average ranks and the Friedman test across datasets. "
                    "Refuses when arms do not share the same seeds.")
    src = c.add_argument_group("which runs (one or more)")
    src.add_argument("--experiment", help="MLflow experiment name")
    src.add_argument("--run", help="a root run id (ablation or sweep): all runs nested under it")
    src.add_argument("--filter", help="an MLflow filter string, e.g. \"tags.`mcrlab.ablation_id` = 'x'\"")
    c.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    c.add_argument("--format", choices=("md", "csv", "tex"), default="md", help="table format printed/written")
    c.add_argument("--out", help="folder for the report files and plots (default: a temporary folder)")
    c.add_argument("--base", help="base arm (default: 'base' if present, else the first arm)")
    c.add_argument("--metric", action="append", help="metric to report (repeatable; default: test/*)")
    c.add_argument("--group-by", default="method.name",
                   help="param naming the arm when runs have no mcrlab.arm tag (default method.name)")
    c.add_argument("--test", choices=("t", "wilcoxon"), default="t", help="paired test (default: t)")
    c.add_argument("--no-plots", action="store_true", help="tables only")
    c.add_argument("--no-log", action="store_true", help="do not log the report to the ablation run")
    c.set_defaults(func=cmd_compare)

"""``mcrlab ablate`` and ``mcrlab compare``: run an ablation grid; compare arms from any MLflow runs
(the selection and the tidy table are ``mcrlab.analysis.runs``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcrlab.analysis.runs import compare
from mcrlab.config import ConfigError

__all__ = ["register", "cmd_ablate", "cmd_compare"]


def cmd_compare(args: argparse.Namespace) -> int:
    from mcrlab.analysis.report import render
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
        if tags.get("mcrlab.kind") in ("sweep", "study"):
            # a sweep's trials are different configurations, not seeds of arms: comparing them as arms would
            # average unrelated points; the sweep's own analysis is the report
            sweep = tags.get("mcrlab.sweep_id", "SWEEP_ID")
            raise ConfigError(f"--run {args.run}: a sweep run (its trials are different configurations, not seeds "
                              f"of arms); use: mcrlab report {sweep}")
        log_to = args.run if tags.get("mcrlab.kind") == "ablation" and not args.no_log else None
    rep, files = compare(uri, experiment=args.experiment, run_id=args.run, filter_string=args.filter or "",
                         formats=[args.format], out=args.out, base=args.base, test=args.test,
                         metrics=args.metric or None, group_by=args.group_by, plots=not args.no_plots,
                         log_to=log_to)
    print(render(rep, args.format))
    where = f" (logged to run {log_to} under report/)" if log_to else ""
    print(f"mcrlab compare: wrote {len(files)} files to {files[0].parent}{where}", file=sys.stderr)
    return 0


BEST_OF = "best-of:"


def resolve_base_run(value: str, uri: str) -> str:
    """``--base-run``: an MLflow run id as is, or ``best-of:SWEEP_ID[/DATASET]`` -> the run of that sweep's best
    trial (of its one study, or of the study of DATASET)."""
    from mcrlab.tracking import find_runs

    if not value.startswith(BEST_OF):
        return value
    sweep, _, dataset = value[len(BEST_OF):].partition("/")
    studies = [r for r in find_runs(uri, kind="study", tags={"sweep_id": sweep})
               if not dataset or r["tags"].get("mcrlab.study") == dataset]
    names = sorted(r["tags"].get("mcrlab.study", "?") for r in studies)
    if not studies:
        raise ConfigError(f"--base-run {value}: no study of sweep '{sweep}'" + (f" on '{dataset}'" if dataset else "")
                          + f" in {uri}")
    if len(studies) > 1:
        raise ConfigError(f"--base-run {value}: sweep '{sweep}' has {len(studies)} studies; name one: "
                          + ", ".join(f"{BEST_OF}{sweep}/{n}" for n in names))
    study = studies[0]["tags"]
    best = study.get("mcrlab.best_trial_id")
    runs = find_runs(uri, kind="trial", tags={"sweep_id": sweep, "study": study.get("mcrlab.study"),
                                               "trial_id": best}) if best else []
    if not runs:
        raise ConfigError(f"--base-run {value}: the study of '{study.get('mcrlab.study')}' has no finished best trial")
    return runs[0]["run_id"]


def cmd_ablate(args: argparse.Namespace) -> int:
    from mcrlab.ablate.runner import check_cells, describe, dumps, run_ablation
    from mcrlab.ablate.spec import load_spec, parse_spec
    from mcrlab.config import read_yaml
    from mcrlab.tracking import check_tracking, check_tracking_uri, resolve_tracking_uri
    from mcrlab.trials.display import quiet_libraries

    quiet_libraries(verbose=args.verbose > 0)
    uri = resolve_tracking_uri(args.tracking_uri)
    (check_tracking_uri if args.dry_run else check_tracking)(uri)  # a dry run creates nothing
    if args.base_run:  # the spec's base replaced by a run's config (a sweep's best trial): its lineage parent
        raw = read_yaml(args.spec)
        if isinstance(raw, dict):
            raw = {k: v for k, v in raw.items() if k != "base"} | {"base_run": resolve_base_run(args.base_run, uri)}
        spec = parse_spec(raw, args.spec, smoke=args.smoke, tracking_uri=uri)
    else:
        spec = load_spec(args.spec, smoke=args.smoke, tracking_uri=uri)
    if args.dry_run:
        check_cells(spec, missing_ok=True)
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
    p.add_argument("--smoke", action="store_true", help="the spec's smoke variant (tiny cells: about 30 s)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or runs/mlflow.db)")
    p.add_argument("--base-run", metavar="RUN_ID|best-of:SWEEP_ID[/DATASET]",
                   help="use this MLflow run's config as the base instead of the spec's (a sweep's best trial: "
                        "best-of:SWEEP_ID); the run becomes the lineage parent of every cell")
    p.add_argument("--dry-run", action="store_true", help="validate the spec, print the grid, run nothing")
    p.add_argument("--out", help="also write the report here (default: a temporary folder)")
    p.add_argument("--test", choices=("t", "wilcoxon"), default="t", help="paired test (default: t)")
    p.add_argument("--verbose", type=int, nargs="?", const=1, default=0, choices=(0, 1, 2), metavar="LEVEL",
                   help="also show Ray Tune's tables (LEVEL 1, or 2 for every result), MLflow's and Optuna's "
                        "logs; default: only mcrlab's live display")
    p.set_defaults(func=cmd_ablate)

    c = sub.add_parser(
        "compare", help="compare arms over seeds and datasets: tables with CI, paired tests, ranks, plots",
        description="Per metric, a table of arms x datasets: mean, std, 95% t-interval over seeds; the "
                    "difference to the base arm with a paired t-test (or Wilcoxon) over matched seeds, Holm-"
                    "corrected, with Cohen's d_z; average ranks and the Friedman test across datasets. "
                    "Refuses when arms do not share the same seeds.")
    src = c.add_argument_group("which runs (one or more)")
    src.add_argument("--experiment", help="MLflow experiment name")
    src.add_argument("--run", help="a root run id (an ablation): all runs nested under it (a sweep: mcrlab report)")
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

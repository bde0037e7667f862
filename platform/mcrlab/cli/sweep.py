"""``mcrlab sweep SPACE``: run (or ``--resume``) a sweep and print the best configuration per dataset."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "sweep_command", "print_summary"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="hyperparameter search: one Optuna study per dataset on Ray Tune, tracked in MLflow",
        description="Run the search space SPACE (search_spaces/*.yaml): one Optuna study per dataset, "
                    "trials on Ray Tune (single-process, or data-parallel when scaling.workers > 1), "
                    "every trial an MLflow run. Defaults: a local Ray, the SQLite store ./runs/mlflow.db.")
    p.add_argument("space", metavar="SPACE", help="search-space YAML file")
    p.add_argument("--num-samples", type=int, default=None, help="trials per dataset (default: the file's)")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray started here)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<runs>/mlflow.db)")
    p.add_argument("--smoke", action="store_true", help="the space's smoke variant: few trials, tiny epochs")
    # dest is not "resume": cli.app reads args.resume as `mcrlab train --resume` (needs --checkpoint-dir)
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="SWEEP_ID", dest="resume_sweep",
                   help="continue the newest sweep of this space (or the one named): finished trials are "
                        "kept, unfinished ones continue from their last checkpoint")
    p.add_argument("--storage", default=None, metavar="PATH", help="run folder (default ./runs)")
    p.add_argument("--optuna-storage", default=None, metavar="URL",
                   help="keep the Optuna studies in this database (sqlite:///PATH.db on a shared disk, "
                        "postgresql://USER@HOST/DB; no password in the URL: PGPASSWORD or ~/.pgpass) instead "
                        "of the sweep's own file: every driver started with the same URL and --study adds "
                        "its trials to the same studies")
    p.add_argument("--study", default=None, metavar="NAME",
                   help="name of the shared studies with --optuna-storage (default: the space's name); "
                        "each dataset's study is NAME/<dataset>")
    p.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="wall-clock limit of this command, e.g. 90s, 30m, 2h (plain number: seconds). When it "
                        "ends, running trials are stopped and recorded (Optuna: PRUNED, MLflow: KILLED, tag "
                        "mcrlab.stopped_by) and no new trial or study starts; --resume continues, re-running "
                        "the stopped trials' points (a resume has only the budget its own command gives)")
    p.add_argument("--concurrent-studies", default=None, metavar="N",
                   help="dataset studies run at the same time (default: the space's scaling.concurrent_studies, "
                        "else 1: one after another); auto: as many as the cluster fits, each with its "
                        "max_concurrent trials. Studies running together share the cluster: each gets at most "
                        "its share of the trials that fit at once")
    p.add_argument("--verbose", type=int, nargs="?", const=1, default=0, choices=(0, 1, 2), metavar="LEVEL",
                   help="also show Ray Tune's tables (LEVEL 1, or 2 for every result), MLflow's and Optuna's "
                        "logs; default: only mcrlab's live display")
    p.set_defaults(func=sweep_command)


def sweep_command(args: argparse.Namespace) -> int:
    from mcrlab.trials.display import quiet_libraries
    from mcrlab.tune.budget import parse_duration
    from mcrlab.tune.runner import StudyFailed, run_sweep
    from mcrlab.tune.space import load_space

    space = load_space(args.space)  # ConfigError -> exit 2 before anything starts
    budget_s = None if args.time_budget is None else parse_duration(args.time_budget)
    quiet_libraries(verbose=args.verbose > 0)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    try:
        result = run_sweep(space, num_samples=args.num_samples,
                           address=args.address or os.environ.get("RAY_ADDRESS"), tracking_uri=args.tracking_uri,
                           smoke=args.smoke, resume=args.resume_sweep, storage_path=args.storage,
                           verbose=args.verbose, time_budget_s=budget_s, optuna_storage=args.optuna_storage,
                           study=args.study, concurrent_studies=args.concurrent_studies)
    except StudyFailed as err:  # concurrent studies: the failed one's traceback, then one line naming it
        import traceback

        if err.__cause__ is not None:
            traceback.print_exception(err.__cause__, file=sys.stderr)
        print(f"mcrlab: error: {err}", file=sys.stderr)
        return 1
    reports = _report(result)
    print_summary(result, reports=reports)
    return 0


def _report(result: Any) -> dict:
    """The sweep's analysis (importances, Optuna's plots), written and logged like ``mcrlab report``."""
    from mcrlab.analysis.sweep_report import SweepInfo
    from mcrlab.cli.report import report_and_log

    info = SweepInfo(sweep_id=result.sweep_id, sweep_dir=Path(result.sweep_dir), optuna_storage=result.optuna_storage,
                     tracking_uri=result.tracking_uri, run_id=result.run_id,
                     studies=[s.optuna_study for s in result.studies.values()])
    try:
        return report_and_log(info)
    except Exception as err:  # noqa: BLE001 - the sweep is done; a failed report must not hide its result
        print(f"mcrlab sweep: report failed ({type(err).__name__}: {err}); retry with "
              f"mcrlab report {result.sweep_dir}", file=sys.stderr)
        return {}


def best_run(result: Any, dataset: str) -> dict | None:
    """The MLflow run of a study's best trial (``find_runs`` dict), or None."""
    from mcrlab.tracking import find_runs

    study = result.studies[dataset]
    try:
        runs = find_runs(result.tracking_uri, result.experiment, kind="trial",
                         tags={"sweep_id": result.sweep_id, "study": dataset, "trial_id": study.best_trial_id})
    except Exception:  # noqa: BLE001 - a summary line is not worth a failure
        return None
    return runs[0] if runs else None


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in MLflow's UI (a local store: as served by ``mlflow ui`` on its default port)."""
    host = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{host}/#/experiments/{experiment_id}/runs/{run_id}"


def print_summary(result: Any, out: Any = None, reports: dict | None = None) -> None:
    from mcrlab.analysis.sweep_report import format_importances, format_pareto, importances_for
    from mcrlab.tune.budget import format_duration
    from mcrlab.tune.runner import study_slug

    out = out or sys.stdout
    reports = reports or {}
    budget_ended = getattr(result, "budget_ended", False)
    status = f"time budget ({format_duration(result.time_budget_s)}) ended the sweep" if budget_ended else "done"
    at_once = getattr(result, "studies_at_once", 1)
    print(f"\nsweep {result.sweep_id}: {status}{f' ({at_once} studies at a time)' if at_once > 1 else ''}", file=out)
    for dataset, study in result.studies.items():
        stopped = f", {study.budget_stopped} stopped by the time budget" if study.budget_stopped else ""
        if not study.best_trial_id:
            print(f"  {dataset}: no trial finished before the time budget ended ({study.num_trials} trials"
                  f"{stopped})", file=out)
            continue
        objectives: tuple = tuple(getattr(study, "objectives", ()) or ())
        best = (f"best {objectives[0][0]} (first of {len(objectives)} objectives)" if len(objectives) > 1
                else "best objective")
        print(f"  {dataset}: {best} {study.best_objective:.4f} (trial {study.best_trial_id}, "
              f"{study.num_trials} trials, {study.num_errors} errors{stopped})", file=out)
        for key, value in sorted(study.best_params.items()):
            print(f"      {key} = {value}", file=out)
        run = best_run(result, dataset)
        if run is not None:
            print(f"    best run: {run['run_id']}   {run_url(result.tracking_uri, run['experiment_id'], run['run_id'])}",
                  file=out)
            print(f"    retrain:  mcrlab train --from-run {run['run_id']}   (add overrides, e.g. train.epochs=50)",
                  file=out)
        if len(objectives) > 1:
            print(f"    Pareto front ({len(study.pareto)} of {study.num_trials} trials, "
                  f"{', '.join(f'{m} {d}' for m, d in objectives)}):", file=out)
            for line in format_pareto(study.pareto):
                print(f"      {line}", file=out)
        rep = reports.get(study.optuna_study) or reports.get(f"{result.sweep_id}/{study_slug(dataset)}")
        if rep is not None and rep.importances:
            print(f"    parameter importances (Optuna){importances_for(rep)}:", file=out)
            for line in format_importances(rep.importances):
                print(f"      {line}", file=out)
        if rep is not None and rep.files:
            print(f"    plots:    {rep.files[0].parent}   (also on the sweep's MLflow run under report/)", file=out)
    for dataset in getattr(result, "not_started", []):
        print(f"  {dataset}: not started (the time budget had ended)", file=out)
    if budget_ended:
        source = getattr(result, "space_source", "") or "SPACE"
        run_folder = Path(result.sweep_dir).parent.parent
        storage = "" if run_folder == Path("runs").resolve() else f" --storage {run_folder}"
        print(f"  resume:  mcrlab sweep {source} --resume {result.sweep_id}{storage}   (stopped trials run "
              f"again; add --time-budget for another limit)", file=out)
    if result.tracking_uri.startswith(("http://", "https://")):
        print(f"  MLflow:  open {result.tracking_uri}   (experiment '{result.experiment}')", file=out)
    else:
        print(f"  MLflow:  mlflow ui --backend-store-uri {result.tracking_uri}   "
              f"(experiment '{result.experiment}')", file=out)
    print(f"  Optuna:  pip install optuna-dashboard && optuna-dashboard {result.optuna_storage}", file=out)
    if result.optuna_storage.startswith("sqlite:"):  # logged by run_sweep: it outlives a temporary run folder
        print(f"           (a copy: artifact optuna/optuna.db of the sweep's MLflow run {result.run_id})", file=out)
    print(f"  report:  mcrlab report {result.sweep_dir}", file=out)
    print(f"  files:   {result.sweep_dir}", file=out)

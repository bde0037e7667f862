"""``mcrlab sweep SPACE``: run (or ``--resume``) a sweep and print the best configuration per dataset."""

from __future__ import annotations

import argparse
import os
import sys
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
    p.add_argument("--verbose", type=int, nargs="?", const=1, default=0, choices=(0, 1, 2), metavar="LEVEL",
                   help="also show Ray Tune's tables (LEVEL 1, or 2 for every result), MLflow's and Optuna's "
                        "logs; default: only mcrlab's live display")
    p.set_defaults(func=sweep_command)


def sweep_command(args: argparse.Namespace) -> int:
    from mcrlab.trials.display import quiet_libraries
    from mcrlab.tune.runner import run_sweep
    from mcrlab.tune.space import load_space

    space = load_space(args.space)  # ConfigError -> exit 2 before anything starts
    quiet_libraries(verbose=args.verbose > 0)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    result = run_sweep(space, num_samples=args.num_samples, address=args.address or os.environ.get("RAY_ADDRESS"),
                       tracking_uri=args.tracking_uri, smoke=args.smoke, resume=args.resume_sweep,
                       storage_path=args.storage, verbose=args.verbose)
    print_summary(result)
    return 0


def print_summary(result: Any, out: Any = None) -> None:
    out = out or sys.stdout
    print(f"\nsweep {result.sweep_id}: done", file=out)
    for dataset, study in result.studies.items():
        print(f"  {dataset}: best objective {study.best_objective:.4f} (trial {study.best_trial_id}, "
              f"{study.num_trials} trials, {study.num_errors} errors)", file=out)
        for key, value in sorted(study.best_params.items()):
            print(f"      {key} = {value}", file=out)
    if result.tracking_uri.startswith(("http://", "https://")):
        print(f"  MLflow:  open {result.tracking_uri}   (experiment '{result.experiment}')", file=out)
    else:
        print(f"  MLflow:  mlflow ui --backend-store-uri {result.tracking_uri}   "
              f"(experiment '{result.experiment}')", file=out)
    print(f"  Optuna:  optuna-dashboard {result.optuna_storage}", file=out)
    print(f"  files:   {result.sweep_dir}", file=out)

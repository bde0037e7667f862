r"""Per-trial platform overhead of a sweep, and the start-up cost of a data-parallel trial.

    python jobs/bench_sweep_overhead.py --trials 6 --epochs 2            # CPU, a few minutes
    python jobs/bench_sweep_overhead.py --trials 2 --epochs 1 --smoke    # seconds of work, for tests

1. The same N short trials (same sampler seed -> same points) run twice, one at a time:
   (a) through ``run_sweep`` (Ray Tune + OptunaSearch + checkpoints + MLflow, single-process backend),
   (b) in this process with plain Optuna calling ``fit`` (no Ray, no tracking).
   overhead per trial = (wall(a) - wall(b)) / N; Ray's start-up is timed apart and not counted.
2. Data-parallel start-up: ``fit_distributed`` (TorchTrainer, --workers workers) of one trial minus
   the same fit in-process: the cost of the worker group, process group and checkpoint plumbing.
Prints one JSON object (seconds) and writes it to --out if given.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _space(trials: int, epochs: int):
    from mcrlab.tune.space import parse_space

    return parse_space({
        "name": "bench", "datasets": ["synthetic:competition"],
        "base": {"data": {"n_train": 256}, "model": {"hidden": 16, "latent": 8, "depth": 1},
                 "method": {"name": "mcr", "num_perms": 4},
                 "train": {"epochs": epochs, "batch_size": 64, "probe_epochs": 0, "eval_perms": 1,
                           "device": "cpu"}},
        "sampler": {"name": "random", "seed": 0}, "num_samples": trials,
        "scaling": {"workers": 1, "cpus_per_worker": 1, "max_concurrent": 1},
        "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                   "method.lambda_m": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
    }, "<bench>")


def plain_optuna(space, trials: int) -> float:
    """The same trials with plain Optuna in this process: the floor the sweep is compared with."""
    import optuna

    from mcrlab.data import load_dataset
    from mcrlab.engine.fit import fit
    from mcrlab.tune.space import compile_space, make_sampler, trial_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dataset = space.datasets[0]
    data = load_dataset(trial_config(space, dataset, {}, 0).data)
    define = compile_space(space)

    def objective(trial):
        consts = define(trial)
        cfg = trial_config(space, dataset, {**trial.params, **consts}, space.objective.seed)
        return fit(cfg, dataset=data)[space.metric]

    study = optuna.create_study(direction="maximize", sampler=make_sampler(space))
    start = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="data-parallel workers for the start-up figure")
    ap.add_argument("--smoke", action="store_true", help="2 trials of 1 epoch")
    ap.add_argument("--skip-dp", action="store_true", help="skip the data-parallel start-up figure")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.smoke:
        args.trials, args.epochs = 2, 1

    import ray

    from mcrlab.tune.runner import run_sweep
    from mcrlab.tune.space import trial_config

    space = _space(args.trials, args.epochs)
    out: dict = {"trials": args.trials, "epochs": args.epochs, "cpus": os.cpu_count()}
    t0 = time.perf_counter()
    if not ray.is_initialized():
        from mcrlab.trials.session import start_ray

        start_ray(include_dashboard=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    out["ray_init_s"] = time.perf_counter() - t0

    plain = plain_optuna(space, args.trials)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run_sweep(space, storage_path=Path(tmp) / "runs", progress=False)
        sweep = time.perf_counter() - t0
    out.update(plain_optuna_s=plain, sweep_s=sweep, overhead_per_trial_s=(sweep - plain) / args.trials)

    if not args.skip_dp:
        from mcrlab.engine.fit import fit
        from mcrlab.trials.data_parallel import fit_distributed

        cfg = trial_config(space, space.datasets[0], {}, 0)
        t0 = time.perf_counter()
        fit(cfg)
        single = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            fit_distributed(cfg, workers=args.workers, name="bench", storage_path=tmp)
            dp = time.perf_counter() - t0
        out.update(dp_workers=args.workers, fit_in_process_s=single, fit_data_parallel_s=dp,
                   dp_startup_s=dp - single)
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()

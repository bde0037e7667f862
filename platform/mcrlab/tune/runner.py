"""``run_sweep``: one Optuna study per dataset through Ray Tune, every trial recorded in MLflow.

On disk (run folder, default ./runs, always resolved to an absolute path)::

    runs/mlflow.db                          default MLflow store (+ runs/mlartifacts)
    runs/sweeps/<sweep id>/sweep.json       what --resume needs (space, MLflow run ids, studies done)
    runs/sweeps/<sweep id>/optuna.db        the Optuna studies (optuna-dashboard sqlite:///...)
    runs/sweeps/<sweep id>/ray/<study>/     Tune experiment (Tuner.restore) + data-parallel Train runs
    runs/sweeps/<sweep id>/rungs-<study>.json   in-trial ASHA state (data-parallel backend)
    runs/sweeps/<sweep id>/finished-<study>.json   finished trials and their final results (trials.finished)

Studies run one after another, each with as many concurrent trials as the cluster fits
(``max_concurrent``: Tune does not count nested Train workers, so the cap is computed here).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcrlab.config import ConfigError, check_name
from mcrlab.tracking import (
    DEFAULT_RUN_FOLDER,
    TAG_PREFIX,
    Tracker,
    check_tracking,
    check_tracking_uri,
    find_runs,
    lineage_tags,
    resolve_tracking_uri,
)
from mcrlab.trials import diskfull
from mcrlab.trials.backends import RungBoard, pick_backend
from mcrlab.trials.recorder import fail_fast_on_outages
from mcrlab.trials.resources import max_concurrent
from mcrlab.trials.session import NAMESPACE, start_ray
from mcrlab.trials.storage import MANIFEST, FolderLock, check_private, private_dir, sign_tree, verify_tree
from mcrlab.tune.space import SearchSpace, compile_space, make_sampler, trial_config
from mcrlab.tune.study import StudyPlan, scaling_of

__all__ = ["run_sweep", "SweepResult", "StudyResult", "study_slug"]

TRIAL_RETRIES = 2  # restarts of a trial whose process was lost, each from its last checkpoint


@dataclass
class StudyResult:
    dataset: str
    best_params: dict[str, Any]  # Optuna's point of the best trial
    best_config: dict[str, Any]  # the resolved RunConfig of that point (first objective seed)
    best_objective: float
    best_trial_id: str
    num_trials: int
    num_errors: int
    run_id: str  # MLflow study run
    optuna_study: str
    result_grid: Any = field(default=None, repr=False)


@dataclass
class SweepResult:
    sweep_id: str
    sweep_dir: Path
    tracking_uri: str
    experiment: str
    run_id: str  # MLflow sweep run
    optuna_storage: str
    studies: dict[str, StudyResult] = field(default_factory=dict)


def study_slug(dataset: str) -> str:
    """A file-name-safe study name: ``synthetic:competition`` -> ``synthetic-competition``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset).strip("-") or "dataset"


def check_storage(run_folder: Path, flag: str = "--storage") -> None:
    """The run folder must be a directory we can write to (created if missing): a path that is a file,
    lies under a file, is read-only or on a full disk fails with a ConfigError naming ``flag``."""
    import tempfile

    try:
        run_folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_folder) as probe:  # a full disk or read-only mount shows here
            probe.write(b"mcrlab")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as err:
        raise ConfigError(f"{flag}: cannot use {run_folder} as a folder to write to: "
                          f"{err.strerror or type(err).__name__}") from None


def _storage_full(space: SearchSpace, sweep_id: str, run_folder: Path, where: str) -> diskfull.StorageFull:
    """The one line a sweep stopped by a full disk ends with: what was full, and the command that resumes."""
    return diskfull.StorageFull(
        f"sweep {sweep_id} stopped: a disk is full ({where}). Finished trials are kept and unfinished ones "
        f"continue from their last checkpoint: free space, then run  mcrlab sweep {space.source} --resume "
        f"{sweep_id} --storage {run_folder}")


def _new_sweep_id(space: SearchSpace) -> str:
    return f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _latest_sweep(sweeps: Path, name: str) -> str | None:
    found = []
    for meta in sweeps.glob("*/sweep.json"):
        data = json.loads(meta.read_text())
        if data.get("space_name") == name:
            found.append((meta.stat().st_mtime, data["sweep_id"]))
    return max(found)[1] if found else None


def run_sweep(space: SearchSpace, *, num_samples: int | None = None, address: str | None = None,
              tracking_uri: str | None = None, smoke: bool = False, resume: bool | str = False,
              storage_path: str | Path | None = None, callbacks: list | None = None,
              progress: bool = True, verbose: int = 0) -> SweepResult:
    """Run (or, with ``resume``, continue) a sweep; returns the best configuration per dataset.

    ``resume=True`` continues the newest sweep of this space under the run folder, a string names the
    sweep id. ``storage_path`` is the run folder (default ./runs). Extra Tune ``callbacks`` are for tests.
    ``verbose`` is Ray Tune's own verbosity (0: only the live display).
    """
    if smoke:
        space = space.smoked()
    if num_samples is not None:
        if num_samples < 1:
            raise ConfigError("--num-samples: must be >= 1")
        space = _with_samples(space, num_samples)
    from mcrlab.tune.check import preflight

    run_folder = Path(storage_path or DEFAULT_RUN_FOLDER).expanduser().resolve()
    uri = resolve_tracking_uri(tracking_uri, run_folder)
    check_tracking_uri(uri)  # its form; nothing created or contacted yet
    # every dataset loads and reports the metric: a typo fails now, not after every trial has trained
    fingerprints = preflight(space)
    check_storage(run_folder)  # an unusable run folder fails here, before the store or Ray are touched
    sweeps = run_folder / "sweeps"
    check_tracking(uri)  # before anything starts: an unreachable server fails in seconds
    fail_fast_on_outages(uri)

    # private from here on: Tune's files (which restore unpickles) are created 0600 in 0700 folders,
    # including those of a local Ray started below (its processes inherit the mask)
    old_umask = os.umask(0o077)
    lock = None
    try:
        sweeps = private_dir(sweeps)
        if resume:
            if isinstance(resume, str):
                check_name(resume, "--resume")  # a sweep id, never a path
            sweep_id = resume if isinstance(resume, str) else _latest_sweep(sweeps, space.name)
            if sweep_id is None or not (sweeps / sweep_id / "sweep.json").is_file():
                raise ConfigError(f"--resume: no sweep of space '{space.name}' under {sweeps}")
            sweep_dir = sweeps / sweep_id
            check_private(sweep_dir, sweep_dir / "ray")  # before the lock file is created in it
            lock = FolderLock(sweep_dir, "sweep").acquire()
            meta = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8"))
        else:
            sweep_id = _new_sweep_id(space)
            while (sweeps / sweep_id).exists():
                time.sleep(1.0)
                sweep_id = _new_sweep_id(space)
            meta = {"sweep_id": sweep_id, "space_name": space.name, "space_source": space.source,
                    "tracking_uri": uri, "studies": {}}
            sweep_dir = private_dir(sweeps / sweep_id)
            lock = FolderLock(sweep_dir, "sweep").acquire()
        diskfull.arm()
        try:
            return _run_locked(space, meta, sweep_id=sweep_id, sweep_dir=sweep_dir, uri=uri,
                               run_folder=run_folder, address=address, smoke=smoke, resume=resume,
                               callbacks=callbacks, progress=progress, fingerprints=fingerprints, verbose=verbose)
        except Exception as err:
            full = diskfull.triggered() or (str(err) if diskfull.is_disk_full(err) else None)
            if full is None:
                raise
            raise _storage_full(space, sweep_id, run_folder, full) from err
    finally:
        diskfull.disarm()
        if lock is not None:
            lock.release()
        os.umask(old_umask)


def _run_locked(space: SearchSpace, meta: dict, *, sweep_id: str, sweep_dir: Path, uri: str, run_folder: Path,
                address: str | None, smoke: bool, resume: bool | str, callbacks: list | None,
                progress: bool, fingerprints: dict[str, str], verbose: int = 0) -> SweepResult:
    """``run_sweep`` once the sweep folder is chosen, checked and locked."""
    import ray

    start_ray(address)  # under the 077 umask set by run_sweep; the token file is kept 0600
    backend = pick_backend(scaling_of(space))
    concurrency = max_concurrent(backend.trial_resources(), ray.cluster_resources(),
                                 space.scaling.max_concurrent)

    tracker = Tracker(uri, run_folder)
    experiment = f"sweep/{sweep_id}"
    exp_id = tracker.experiment(experiment)
    from mcrlab.trials.conventions import describe_experiment

    describe_experiment(tracker.client, exp_id, space.description or (
        f"Sweep of search space '{space.name}' ({space.source}): {space.sampler.name} sampler, {space.num_samples} "
        f"trials per dataset on {', '.join(space.datasets)}; objective {space.metric} ({space.mode})."))
    sweep_tags = lineage_tags("sweep", sweep_id=sweep_id, space=space.name)
    sweep_run = tracker.start_run(exp_id, sweep_id, tags=sweep_tags,
                                  key_tags=(f"{TAG_PREFIX}kind", f"{TAG_PREFIX}sweep_id"),
                                  params={"space": space.name, "metric": space.metric, "mode": space.mode,
                                          "sampler": space.sampler.name, "num_samples": space.num_samples,
                                          "datasets": list(space.datasets), "backend": backend.name,
                                          "workers": space.scaling.workers, "smoke": smoke,
                                          "objective.seeds": space.objective.seeds,
                                          "objective.aggregate": space.objective.aggregate,
                                          "scheduler": space.scheduler.name})
    meta["mlflow_run_id"] = sweep_run
    _write_meta(sweep_dir, meta)
    if not resume:
        tracker.log_dict(sweep_run, space.raw, "search_space.yaml")

    optuna_storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    result = SweepResult(sweep_id=sweep_id, sweep_dir=sweep_dir, tracking_uri=uri, experiment=experiment,
                         run_id=sweep_run, optuna_storage=optuna_storage)
    failed = False
    try:
        for dataset in space.datasets:
            study = _run_study(space, dataset, backend=backend, sweep_id=sweep_id, sweep_dir=sweep_dir,
                               tracker=tracker, exp_id=exp_id, sweep_run=sweep_run, uri=uri,
                               run_folder=run_folder, optuna_storage=optuna_storage, concurrency=concurrency,
                               resume=bool(resume), callbacks=callbacks or [], progress=progress,
                               fingerprint=fingerprints[dataset], verbose=verbose)
            result.studies[dataset] = study
            meta["studies"][dataset] = {"done": True, "best_trial": study.best_trial_id,
                                        "best_objective": study.best_objective}
            _write_meta(sweep_dir, meta)
    except BaseException:
        failed = True
        raise
    finally:
        if failed:
            try:
                tracker.end_run(sweep_run, "KILLED")
            except Exception as err:  # noqa: BLE001 - never hide why the sweep failed (a full store, say)
                print(f"mcrlab: cannot mark sweep run {sweep_run} KILLED ({type(err).__name__})", file=sys.stderr)
    for dataset, study in result.studies.items():
        tracker.log_summary(sweep_run, {f"best_objective/{study_slug(dataset)}": study.best_objective})
    tracker.log_dict(sweep_run, {d: {"params": s.best_params, "objective": s.best_objective,
                                     "trial_id": s.best_trial_id} for d, s in result.studies.items()},
                     "best_per_dataset.json")
    tracker.end_run(sweep_run, "FINISHED")
    return result


def _with_samples(space: SearchSpace, n: int) -> SearchSpace:
    from dataclasses import replace

    return replace(space, num_samples=n, points_to_evaluate=space.points_to_evaluate[:n])


def _write_meta(sweep_dir: Path, meta: dict) -> None:
    tmp = sweep_dir / "sweep.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    tmp.replace(sweep_dir / "sweep.json")


def _run_study(space: SearchSpace, dataset: str, *, backend, sweep_id: str, sweep_dir: Path, tracker: Tracker,
               exp_id: str, sweep_run: str, uri: str, run_folder: Path, optuna_storage: str,
               concurrency: int, resume: bool, callbacks: list, progress: bool, fingerprint: str,
               verbose: int = 0) -> StudyResult:
    import optuna
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from mcrlab.trials.display import LiveDisplay
    from mcrlab.trials.recorder import TrialRecorder
    from mcrlab.trials.signer import StateSigner
    from mcrlab.tune.searcher import ResumableOptunaSearch

    slug = study_slug(dataset)
    ray_dir = sweep_dir / "ray"
    exp_path = ray_dir / slug
    manifest = sweep_dir / MANIFEST
    study_tags = lineage_tags("study", sweep_id=sweep_id, study=dataset, dataset_fingerprint=fingerprint)
    study_run = tracker.start_run(exp_id, f"study-{slug}", tags=study_tags, parent_run_id=sweep_run,
                                  key_tags=tuple(f"{TAG_PREFIX}{k}" for k in ("kind", "sweep_id", "study")),
                                  params={"dataset": dataset, "num_samples": space.num_samples,
                                          "max_concurrent": concurrency})
    study_name = f"{sweep_id}/{slug}"
    plan = StudyPlan(space=space, dataset=dataset, sweep_id=sweep_id, storage_path=str(ray_dir / "train"),
                     study_run_id=study_run, fingerprint=fingerprint,
                     finished_path=str(sweep_dir / f"finished-{slug}.json"))
    max_t = plan.max_iterations({})

    board, board_actor = None, None
    if space.scheduler.name == "asha" and backend.stops_inside_trial:
        board = f"rungs-{sweep_id}-{slug}"
        # keep the handle until the study ends: a named actor without handles is garbage-collected
        board_actor = ray.remote(num_cpus=0)(RungBoard).options(
            name=board, namespace=NAMESPACE, get_if_exists=True).remote(
            space.scheduler.grace_period, space.scheduler.reduction_factor, max_t, space.mode,
            str(sweep_dir / f"rungs-{slug}.json"))
        plan = dataclasses.replace(plan, board=board)
    trainable = backend.trainable(plan)

    def new_tuner(name: str, num_samples: int, points: list[dict] | None) -> Any:
        scheduler = None
        if space.scheduler.name == "asha" and not backend.stops_inside_trial:
            scheduler = ASHAScheduler(time_attr="trial_iteration", metric="objective", mode=space.mode,
                                      max_t=max_t, grace_period=space.scheduler.grace_period,
                                      reduction_factor=space.scheduler.reduction_factor)
        # metric and mode go to OptunaSearch itself: with a define-by-run space, TuneConfig's are ignored;
        # the study is loaded if it exists (a top-up after a resume continues the same study)
        searcher = ResumableOptunaSearch(space=compile_space(space), metric="objective", mode=space.mode,
                                         points_to_evaluate=points or None, sampler=make_sampler(space),
                                         study_name=study_name, storage=optuna.storages.RDBStorage(optuna_storage),
                                         metric_name=space.metric, max_iterations=max_t)
        recorder = TrialRecorder(plan, uri=uri, run_folder=str(run_folder), experiment_id=exp_id,
                                 optuna=(optuna_storage, study_name))
        display = LiveDisplay(dataset, plan, total=num_samples, concurrency=concurrency)
        cbs = [StateSigner(str(ray_dir), str(manifest)), recorder, *([display] if progress else []), *callbacks]
        return tune.Tuner(
            trainable,
            # reuse_actors: Ray 2.60's default (False) starts a fresh Python process for every trial, which
            # re-imports torch and the platform: ~7 s of a sweep's per-trial overhead on a 2-core machine
            # (jobs/bench_sweep_overhead.py). Trials keep no state between runs in their process.
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
                                        max_concurrent_trials=concurrency, reuse_actors=True),
            run_config=tune.RunConfig(
                name=name, storage_path=str(ray_dir), callbacks=cbs, verbose=verbose,
                # a trial whose process dies (lost worker, OOM kill, node loss) restarts from its last
                # checkpoint; a NaN/inf trial is not retried (the recorder sees its flag first)
                failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                # every checkpoint is kept: the experiment state is saved every few seconds, and a driver
                # killed between a checkpoint's deletion and the next save resumes its running trials from
                # a checkpoint that is gone ("does not exist on storage anymore", ray#27790) - tested by
                # tests/reliability/test_driver_kill.py. Checkpoints are small (one model + optimizer).
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None, checkpoint_score_attribute=space.metric,
                                                        checkpoint_score_order=space.mode),
            ),
        )

    restored = resume and tune.Tuner.can_restore(str(exp_path))
    if restored:
        # Tune's restore unpickles this folder's state: it must be ours, private and signed by our key
        check_private(sweep_dir, ray_dir)
        verify_tree(ray_dir, manifest, under=exp_path)
        tuner = tune.Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        tuner = new_tuner(slug, space.num_samples, [dict(p) for p in space.points_to_evaluate])
    grids = []
    diskfull.reserve(sweep_dir)  # freed on the first full-disk error: room for the last state and records
    try:
        try:
            grids.append(tuner.fit())
        except Exception as err:
            if diskfull.is_disk_full(err):  # e.g. Optuna's study file: room for the signatures below
                diskfull.trigger("the sweep's Tune experiment or Optuna study", err)
            raise
        if diskfull.triggered():
            raise diskfull.StorageFull(diskfull.triggered())  # run_sweep words the line (and how to resume)
        missing = space.num_samples - len(grids[0])
        if restored and missing > 0:
            # a driver killed right after it started leaves a Tune snapshot with fewer trials than its
            # searcher had already handed out; the restored searcher then believes it is done. Top the
            # study up with a new experiment on the same Optuna study (its history is kept).
            grids.append(new_tuner(f"{slug}-topup-{int(time.time())}", missing, None).fit())
            if diskfull.triggered():
                raise diskfull.StorageFull(diskfull.triggered())
    finally:
        try:  # the last word: what Tune wrote after the callback's last step
            sign_tree(ray_dir, manifest)
        except OSError as err:  # never hide the study's own outcome (a full disk shows there too)
            print(f"mcrlab: cannot update {manifest} ({err.strerror or err}); a resume of this sweep may be "
                  "refused", file=sys.stderr, flush=True)
        if board_actor is not None:
            ray.kill(board_actor)
    if restored:
        _close_lost_trials(tracker, sweep_id, dataset, grids)
        _fail_lost_optuna_trials(study_name, optuna_storage)
    return _summarise(space, dataset, grids, tracker, study_run, study_name, optuna_storage)


def _fail_lost_optuna_trials(study_name: str, optuna_storage: str) -> None:
    """Tell Optuna that trials still RUNNING once a resumed study has ended are FAIL: they were handed out by
    a killed driver and never resumed (see ``_close_lost_trials``), so no result will ever come for them."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _close_lost_trials(tracker: Tracker, sweep_id: str, dataset: str, grids: list) -> None:
    """End the MLflow runs of trials that a killed driver started but its last Tune snapshot did not hold.

    Tune never resumes such a trial (the study is topped up with new ones instead), so its run would stay
    RUNNING forever. It ends KILLED and tagged ``mcrlab.stale`` (as an interrupted ablation cell): kept for the
    record, never counted as a result.
    """
    known = {(r.metrics or {}).get("trial_id") for grid in grids for r in grid}  # no metrics: failed at start
    running = find_runs(tracker.uri, kind="trial", tags={"sweep_id": sweep_id, "study": dataset},
                        filter_string="attributes.status = 'RUNNING'")
    for run in running:
        if run["tags"].get(f"{TAG_PREFIX}trial_id") not in known:
            tracker.client.set_tag(run["run_id"], f"{TAG_PREFIX}stale", "true")
            tracker.end_run(run["run_id"], "KILLED")


def _summarise(space: SearchSpace, dataset: str, grids: list, tracker: Tracker, study_run: str,
               study_name: str, optuna_storage: str) -> StudyResult:
    """The study's best trial over its ResultGrid(s): one, or two after a resume that topped it up."""
    import optuna

    results = [r for grid in grids for r in grid]
    errors = sum(1 for r in results if r.error is not None)
    ok = [r for r in results if r.error is None and isinstance((r.metrics or {}).get("objective"), (int, float))
          and math.isfinite(r.metrics["objective"])]
    if not ok:
        tracker.end_run(study_run, "FAILED")
        raise RuntimeError(f"study {dataset}: no trial finished ({errors} errors); see the trial logs")
    pick = max if space.mode == "max" else min
    best = pick(ok, key=lambda r: r.metrics["objective"])  # = ResultGrid.get_best_result(scope="last")
    params = {k: v for k, v in best.config.items()}
    cfg = trial_config(space, dataset, params, space.objective.seed)
    objective = float(best.metrics["objective"])
    # once per value: a resumed sweep summarises its finished studies again
    tracker.log_summary(study_run, {"best_objective": objective, "trials": len(results), "errors": errors})
    tracker.set_tags(study_run, {f"{TAG_PREFIX}best_trial_id": best.metrics.get("trial_id", "")})
    tracker.log_dict(study_run, {"params": params, "objective": objective, "config": cfg.to_dict()},
                     "best_config.json")
    try:  # fANOVA needs >= 2 finished trials with varying params; a smoke sweep may not have them
        study = optuna.load_study(study_name=study_name, storage=optuna_storage)
        importances = {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
        tracker.log_dict(study_run, importances, "param_importances.json")
    except Exception as err:  # noqa: BLE001 - importances are a report, never a reason to fail the sweep
        tracker.log_dict(study_run, {"unavailable": f"{type(err).__name__}: {err}"}, "param_importances.json")
    tracker.end_run(study_run, "FINISHED")
    return StudyResult(dataset=dataset, best_params=params, best_config=cfg.to_dict(), best_objective=objective,
                       best_trial_id=str(best.metrics.get("trial_id", "")), num_trials=len(results),
                       num_errors=errors, run_id=study_run, optuna_study=study_name, result_grid=grids[0])

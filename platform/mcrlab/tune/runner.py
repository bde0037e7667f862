"""``run_sweep``: one Optuna study per dataset through Ray Tune, every trial recorded in MLflow.

On disk (run folder, default ./runs, always resolved to an absolute path)::

    runs/mlflow.db                          default MLflow store (+ runs/mlartifacts)
    runs/sweeps/<sweep id>/sweep.json       what --resume needs (space, MLflow run ids, studies done)
    runs/sweeps/<sweep id>/optuna.db        the Optuna studies (optuna-dashboard sqlite:///...), unless the
                                            studies are shared (--optuna-storage, see tune/shared.py)
    runs/sweeps/<sweep id>/ray/<study>/     Tune experiment (Tuner.restore) + data-parallel Train runs
    runs/sweeps/<sweep id>/rungs-<study>.json   in-trial ASHA state (data-parallel backend)
    runs/sweeps/<sweep id>/finished-<study>.json   finished trials and their final results (trials.finished)

Studies run one after another, each with as many concurrent trials as the cluster fits
(``max_concurrent``: Tune does not count nested Train workers, so the cap is computed here). With
``scaling.concurrent_studies`` > 1 (or ``auto``) several run at once, each in a thread of this driver with
everything it has alone (Tune experiment, Optuna study, MLflow study run, resume, top-ups, ASHA, time budget,
finished-trial record), each capped at its share of the trials that fit (``plan_concurrency``: Ray does not
officially support concurrent Tune runs on one cluster, which each schedule as if alone). Only the main
thread starts Ray and catches Ctrl+C; Tune's registry is guarded (``_register_trainable``); a stop (Ctrl+C,
a full disk) reaches every study through ``trials.interrupt``; sweep.json is written under one lock.

Multi-objective search (``metric``/``mode`` lists): trials report ``objective/0``, ``objective/1``, ...
and Optuna's study has one direction per objective; ASHA is refused at load time. A trial's values are those
of its last report (as for one objective); its best checkpoint is ranked by the first objective, and the
study's "best" trial (best_config.json, ``train --from-run``) is the one best on the first objective. The
Pareto front is Optuna's ``best_trials`` (COMPLETE trials only).

Time budget (``time_budget_s``, see ``budget``): when it ends, running trials are stopped, told PRUNED to
Optuna (user attr ``mcrlab.stopped_by``) and their MLflow runs end KILLED, tagged ``mcrlab.stopped_by``;
datasets not reached are not started. They count for nothing: ``--resume`` runs the stopped trials' points
again from the start (then new samples up to num_samples) and the studies not started.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
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
from mcrlab.trials import diskfull, interrupt
from mcrlab.trials.backends import RungBoard, pick_backend
from mcrlab.trials.recorder import fail_fast_on_outages
from mcrlab.trials.resources import max_concurrent
from mcrlab.trials.session import NAMESPACE, start_ray
from mcrlab.trials.storage import (
    MANIFEST,
    FolderLock,
    TrustError,
    check_private,
    private_dir,
    recover_tree,
    sign_tree,
    verify_tree,
)
from mcrlab.tune import budget
from mcrlab.tune.space import SearchSpace, compile_space, grid_of, make_sampler, trial_config
from mcrlab.tune.study import StudyPlan, scaling_of

__all__ = ["run_sweep", "SweepResult", "StudyResult", "StudyFailed", "study_slug", "plan_concurrency",
           "check_concurrent_studies", "STOPPED_ATTR"]

STOPPED_ATTR = "mcrlab.stopped_by"  # Optuna user attr / MLflow tag of a trial the time budget stopped
REQUEUED_ATTR = "mcrlab.requeued"  # Optuna study user attr: numbers of stopped trials whose points re-ran
TRIAL_RETRIES = 2  # restarts of a trial whose process was lost, each from its last checkpoint
_REGISTRY_LOCK = threading.Lock()  # Ray Tune's trainable registry is not thread-safe (_register_trainable)
_META_LOCK = threading.Lock()  # sweep.json is rewritten by every study as it ends (concurrent studies)


class StudyFailed(RuntimeError):
    """A study of a sweep whose studies run concurrently failed (the message names it and the others)."""


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
    objectives: tuple[tuple[str, str], ...] = ()  # (metric, mode) of each objective
    # multi-objective: the Pareto front, one dict per trial (number, trial_id, run_id, values, params)
    pareto: list[dict] = field(default_factory=list)
    budget_stopped: int = 0  # trials the time budget stopped (or kept from starting)
    budget_ended: bool = False  # the time budget ended this study before all its trials had run


@dataclass
class SweepResult:
    sweep_id: str
    sweep_dir: Path
    tracking_uri: str
    experiment: str
    run_id: str  # MLflow sweep run
    optuna_storage: str
    studies: dict[str, StudyResult] = field(default_factory=dict)
    time_budget_s: float | None = None
    budget_ended: bool = False  # the time budget ended the sweep
    not_started: list[str] = field(default_factory=list)  # datasets the budget left unstarted
    space_source: str = ""
    studies_at_once: int = 1  # dataset studies run at the same time (scaling.concurrent_studies)


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


def _new_sweep_id(space: SearchSpace, shared: bool = False) -> str:
    # drivers of a shared study may start in the same second: a random tail keeps their MLflow runs apart
    tail = f"-{os.urandom(2).hex()}" if shared else ""
    return f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}{tail}"


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
              progress: bool = True, verbose: int = 0, optuna_storage: str | None = None,
              study: str | None = None, time_budget_s: float | None = None,
              concurrent_studies: int | str | None = None) -> SweepResult:
    """Run (or, with ``resume``, continue) a sweep; returns the best configuration per dataset.

    ``time_budget_s``: wall-clock seconds for this command, from its start (a resume gets its own budget).

    ``resume=True`` continues the newest sweep of this space under the run folder, a string names the
    sweep id. ``storage_path`` is the run folder (default ./runs). Extra Tune ``callbacks`` are for tests.
    ``verbose`` is Ray Tune's own verbosity (0: only the live display). ``optuna_storage`` (an RDB URL)
    holds the studies instead of the sweep's own SQLite file, named ``<study>/<dataset>`` (``study``,
    default the space's name), shared with every other driver using the same URL and name (tune/shared.py).
    ``concurrent_studies`` (an integer >= 1 or ``auto``) replaces the space's ``scaling.concurrent_studies``.
    """
    if smoke:
        space = space.smoked()
    if concurrent_studies is not None:
        space = dataclasses.replace(space, scaling=dataclasses.replace(
            space.scaling, concurrent_studies=check_concurrent_studies(concurrent_studies)))
    if num_samples is not None:
        if num_samples < 1:
            raise ConfigError("--num-samples: must be >= 1")
        grid = grid_of(space.params) if space.sampler.name == "grid" else None
        size = math.prod(len(v) for v in grid.values()) if grid is not None else None
        if size is not None and num_samples > size:
            raise ConfigError(f"--num-samples: {num_samples} is more than the grid's {size} points")
        space = _with_samples(space, num_samples)
    if time_budget_s is not None and not (math.isfinite(time_budget_s) and time_budget_s > 0):
        raise ConfigError("--time-budget: must be a positive duration")
    from mcrlab.tune.check import check_init_runs, preflight

    run_folder = Path(storage_path or DEFAULT_RUN_FOLDER).expanduser().resolve()
    uri = resolve_tracking_uri(tracking_uri, run_folder)
    check_tracking_uri(uri)  # its form; nothing created or contacted yet
    shared, prefix = _shared_study(space, optuna_storage, study)  # reachable, or one line and nothing started
    # every dataset loads and reports the metric: a typo fails now, not after every trial has trained
    layouts: dict = {}
    fingerprints = preflight(space, layouts)
    check_storage(run_folder)  # an unusable run folder fails here, before the store or Ray are touched
    sweeps = run_folder / "sweeps"
    check_tracking(uri)  # before anything starts: an unreachable server fails in seconds
    check_init_runs(space, layouts, uri)  # model.init=<run id>: the run exists, is finished, its model fits
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
            recovered = _trust_stored_state(sweep_dir)  # before any study runs (their signers sign the tree)
            meta = json.loads((sweep_dir / "sweep.json").read_text(encoding="utf-8"))
            saved = meta.get("optuna_storage")
            if shared is not None and shared != saved:
                raise ConfigError(f"--optuna-storage: sweep {sweep_id} keeps its studies in "
                                  f"{saved or 'its own optuna.db'}; resume it without --optuna-storage")
            if study is not None and (saved is None or study != meta.get("study_prefix")):
                raise ConfigError(f"--study: sweep {sweep_id} runs study '{meta.get('study_prefix') or sweep_id}'; "
                                  "resume it without --study")
            shared, prefix = saved, meta.get("study_prefix")
            if shared is not None:  # the database of a shared study must still answer, before Ray starts
                from mcrlab.tune.shared import check_optuna_storage

                check_optuna_storage(shared, flag=f"--resume: {sweep_id}: optuna_storage")
        else:
            recovered = frozenset()
            sweep_id = _new_sweep_id(space, shared is not None)
            while (sweeps / sweep_id).exists():
                time.sleep(1.0)
                sweep_id = _new_sweep_id(space, shared is not None)
            meta = {"sweep_id": sweep_id, "space_name": space.name, "space_source": space.source,
                    "tracking_uri": uri, "studies": {}}
            if shared is not None:  # this driver's own sampler seed, kept for a resume's top-up trials
                from mcrlab.tune.shared import driver_seed

                meta.update(optuna_storage=shared, study_prefix=prefix,
                            driver_seed=driver_seed(space.sampler.seed, sweep_id))
            sweep_dir = private_dir(sweeps / sweep_id)
            lock = FolderLock(sweep_dir, "sweep").acquire()
        budget.set_deadline(sweep_id, time_budget_s)  # from here: the lock is ours, Ray starts next
        diskfull.arm()
        try:
            return _run_locked(space, meta, sweep_id=sweep_id, sweep_dir=sweep_dir, uri=uri,
                               run_folder=run_folder, address=address, smoke=smoke, resume=resume,
                               callbacks=callbacks, progress=progress, fingerprints=fingerprints, verbose=verbose,
                               shared=shared, prefix=prefix, time_budget_s=time_budget_s, recovered=recovered)
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


def _shared_study(space: SearchSpace, optuna_storage: str | None, study: str | None) -> tuple[str | None, str | None]:
    """``(storage URL, study prefix)`` of a shared study, checked (server reachable); ``(None, None)`` without."""
    from mcrlab.tune.shared import check_optuna_storage, study_prefix

    if optuna_storage is None:
        if study is not None:
            raise ConfigError("--study: names a study shared through --optuna-storage; give that URL too")
        return None, None
    return check_optuna_storage(optuna_storage), study_prefix(study, space.name)


def _run_locked(space: SearchSpace, meta: dict, *, sweep_id: str, sweep_dir: Path, uri: str, run_folder: Path,
                address: str | None, smoke: bool, resume: bool | str, callbacks: list | None,
                progress: bool, fingerprints: dict[str, str], verbose: int = 0, shared: str | None = None,
                prefix: str | None = None, time_budget_s: float | None = None,
                recovered: frozenset[str] = frozenset()) -> SweepResult:
    """``run_sweep`` once the sweep folder is chosen, checked and locked. ``recovered``: the experiment
    folders whose state ``_trust_stored_state`` rolled back or set aside."""
    import ray

    from mcrlab.tune.shared import driver_seed

    start_ray(address)  # under the 077 umask set by run_sweep; the token file is kept 0600
    backend = pick_backend(scaling_of(space))
    at_once, concurrency = plan_concurrency(space.scaling.concurrent_studies, len(space.datasets),
                                            backend.trial_resources(), ray.cluster_resources(),
                                            space.scaling.max_concurrent, space.num_samples)

    tracker = Tracker(uri, run_folder)
    experiment = f"sweep/{sweep_id}"
    exp_id = tracker.experiment(experiment)
    from mcrlab.trials.conventions import describe_experiment

    describe_experiment(tracker.client, exp_id, space.description or (
        f"Sweep of search space '{space.name}' ({space.source}): {space.sampler.name} sampler, {space.num_samples} "
        f"trials per dataset on {', '.join(space.datasets)}; "
        f"objective{'s' if space.multi_objective else ''} {', '.join(f'{m} ({d})' for m, d in space.objectives)}."))
    sweep_tags = lineage_tags("sweep", sweep_id=sweep_id, space=space.name,
                              optuna_study=f"{prefix}/*" if shared else None)
    # a shared study: this driver's own sampler seed, or two drivers would propose the same points
    seed = meta.get("driver_seed", driver_seed(space.sampler.seed, sweep_id)) if shared else None
    sweep_run = tracker.start_run(exp_id, sweep_id, tags=sweep_tags,
                                  key_tags=(f"{TAG_PREFIX}kind", f"{TAG_PREFIX}sweep_id"),
                                  params={"space": space.name,
                                          "metric": list(space.metrics) if space.multi_objective else space.metric,
                                          "mode": list(space.modes) if space.multi_objective else space.mode,
                                          "sampler": space.sampler.name, "num_samples": space.num_samples,
                                          "datasets": list(space.datasets), "backend": backend.name,
                                          "workers": space.scaling.workers, "smoke": smoke,
                                          "objective.seeds": space.objective.seeds,
                                          "objective.aggregate": space.objective.aggregate,
                                          "scheduler": space.scheduler.name,
                                          **({"optuna_storage": shared, "optuna_study": prefix,
                                              "driver_seed": seed} if shared else {})})
    # a tag, not a param: a resume may give another budget (MLflow params cannot change)
    tracker.set_tags(sweep_run, {f"{TAG_PREFIX}time_budget_s": "" if time_budget_s is None else f"{time_budget_s:g}",
                                 f"{TAG_PREFIX}concurrent_studies": str(at_once)})  # studies run at once
    meta["mlflow_run_id"] = sweep_run
    _write_meta(sweep_dir, meta)
    if not resume:
        tracker.log_dict(sweep_run, space.raw, "search_space.yaml")

    optuna_storage = shared or f"sqlite:///{sweep_dir / 'optuna.db'}"
    result = SweepResult(sweep_id=sweep_id, sweep_dir=sweep_dir, tracking_uri=uri, experiment=experiment,
                         run_id=sweep_run, optuna_storage=optuna_storage, time_budget_s=time_budget_s,
                         space_source=space.source, studies_at_once=at_once)

    def not_started(dataset: str) -> None:  # no study starts after the budget; --resume runs it
        with _META_LOCK:
            result.not_started.append(dataset)
            meta["studies"].setdefault(dataset, {})["done"] = False
            _write_meta(sweep_dir, meta)

    def run_one(dataset: str) -> StudyResult:
        study = _run_study(space, dataset, backend=backend, sweep_id=sweep_id, sweep_dir=sweep_dir,
                           tracker=tracker, exp_id=exp_id, sweep_run=sweep_run, uri=uri,
                           run_folder=run_folder, optuna_storage=optuna_storage, concurrency=concurrency,
                           resume=bool(resume), callbacks=callbacks or [], progress=progress,
                           fingerprint=fingerprints[dataset], verbose=verbose, prefix=prefix,
                           driver_seed=seed, recovered=recovered)
        with _META_LOCK:  # studies ending at the same time must not lose each other's entries
            result.studies[dataset] = study
            meta["studies"][dataset] = {"done": not study.budget_ended, "best_trial": study.best_trial_id,
                                        "best_objective": study.best_objective, "optuna_study": study.optuna_study}
            _write_meta(sweep_dir, meta)
        return study

    failed = False
    try:
        if at_once == 1:
            for dataset in space.datasets:
                if budget.expired(sweep_id):
                    not_started(dataset)
                    continue
                run_one(dataset)
        else:
            from mcrlab.tune.shared import open_storage

            open_storage(optuna_storage)  # Optuna's schema once, before the studies' threads open the file
            _run_concurrently(space.datasets, run_one, at_once, sweep_id=sweep_id, not_started=not_started)
            result.studies = {d: result.studies[d] for d in space.datasets if d in result.studies}  # file order
    except BaseException:
        failed = True
        raise
    finally:
        if failed:
            try:
                tracker.end_run(sweep_run, "KILLED")
            except Exception as err:  # noqa: BLE001 - never hide why the sweep failed (a full store, say)
                print(f"mcrlab: cannot mark sweep run {sweep_run} KILLED ({type(err).__name__})", file=sys.stderr)
    result.budget_ended = bool(result.not_started) or any(st.budget_ended for st in result.studies.values())
    for dataset, study in result.studies.items():  # once per value: a resumed sweep summarises again
        tracker.log_summary(sweep_run, {f"best_objective/{study_slug(dataset)}": study.best_objective})
    tracker.log_dict(sweep_run, {d: {"params": s.best_params, "objective": s.best_objective,
                                     "trial_id": s.best_trial_id} for d, s in result.studies.items()
                                 if s.best_trial_id}, "best_per_dataset.json")
    _log_optuna_db(tracker, sweep_run, optuna_storage)
    if result.budget_ended:
        tracker.set_tags(sweep_run, {STOPPED_ATTR: "time_budget"})
    tracker.end_run(sweep_run, "FINISHED")
    return result


def check_concurrent_studies(value: int | str, flag: str = "--concurrent-studies") -> int | str:
    """``auto`` or an integer >= 1 (also given as text: the CLI flag); ConfigError naming ``flag`` otherwise."""
    text = str(value).strip()
    if text == "auto":
        return "auto"
    if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= 1000:
        raise ConfigError(f"{flag}: expected an integer from 1 to 1000 or auto, got {text[:40]!r}")
    return int(text)


def plan_concurrency(setting: int | str, n_studies: int, trial: dict[str, float], cluster: dict[str, float],
                     cap: int = 0, num_samples: int | None = None) -> tuple[int, int]:
    """``(studies at once, trials at once in each study)`` for ``scaling.concurrent_studies`` = ``setting``.

    The cluster fits F trials at once (CPUs and GPUs, ``trial`` = one whole trial's resources). One study
    at a time runs min(F, ``cap``) trials (``cap`` = max_concurrent, 0: no cap), as before. Several share
    the cluster: each runs at most F // studies trials, so that together they never ask for more than it has
    (Tune schedules each experiment as if it were alone). ``auto``: as many studies as fit with each study's
    own need, min(F, cap, ``num_samples``) trials. Never more studies than datasets, nor than F.
    """
    fits = max_concurrent(trial, cluster, 0)  # ConfigError when not even one trial fits
    own = min(fits, cap) if cap else fits
    if setting == "auto":
        wanted = max(1, fits // max(1, min(own, num_samples or own)))
    else:
        wanted = int(setting)
    at_once = max(1, min(wanted, n_studies, fits))
    return at_once, (own if at_once == 1 else max(1, min(own, fits // at_once)))


def _run_concurrently(datasets: tuple[str, ...], run_one: Callable[[str], StudyResult], at_once: int, *,
                      sweep_id: str, not_started: Callable[[str], None]) -> None:
    """``run_one(dataset)`` for every dataset in file order, ``at_once`` studies at a time, each in a thread
    of its own (Ray and the trainables' registry are set up by the caller and ``_run_study``'s lock).

    - a study starts only when a slot is free; none starts after the time budget (``not_started``);
    - Ctrl+C (caught here, on the main thread: Tune's own handler exists only for a ``fit`` on the main
      thread) stops every study as Tune's handler would (``trials.interrupt``): the experiments are saved
      with their running trials unfinished, and ``--resume`` continues them; a second Ctrl+C ends at once.
      A full disk stops them the same way (``trials.diskfull``);
    - a study that fails lets the running ones finish (their results are recorded) and starts no other;
      then ``StudyFailed`` names the failed studies.
    """
    import signal
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    pending = list(datasets)
    running: dict[Any, str] = {}  # future -> dataset
    failures: list[tuple[str, BaseException]] = []
    asked = {"interrupted": False}

    def on_sigint(sig: int, frame: Any) -> None:
        asked["interrupted"] = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl+C: KeyboardInterrupt now
        interrupt.stop_runs()

    old_handler = None
    if threading.current_thread() is threading.main_thread():
        old_handler = signal.signal(signal.SIGINT, on_sigint)
    try:
        with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="mcrlab-study") as pool:
            while pending or running:
                while pending and len(running) < at_once and not failures and not interrupt.stop_requested():
                    dataset = pending.pop(0)
                    if budget.expired(sweep_id):
                        not_started(dataset)
                        continue
                    running[pool.submit(run_one, dataset)] = dataset
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    dataset = running.pop(future)
                    err = future.exception()
                    if isinstance(err, diskfull.StorageFull) or (err is not None and diskfull.triggered()):
                        interrupt.stop_runs()  # normally done already, by whoever saw the full disk
                    if err is not None:
                        failures.append((dataset, err))
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
    if asked["interrupted"]:
        raise KeyboardInterrupt
    full = [err for _, err in failures if isinstance(err, diskfull.StorageFull)]
    if full or diskfull.triggered():
        raise full[0] if full else diskfull.StorageFull(diskfull.triggered())
    if failures:
        dataset, err = failures[0]
        others = "".join(f"; study {d} failed too ({type(e).__name__}: {e})" for d, e in failures[1:])
        raise StudyFailed(f"study {dataset} failed ({type(err).__name__}: {err}){others}; the studies that were "
                          "running finished and are recorded; --resume runs the rest") from err


def _log_optuna_db(tracker: Tracker, run_id: str, optuna_storage: str) -> None:
    """The Optuna database, when it is a file, as the sweep run's artifact ``optuna/optuna.db``: it survives a
    run folder that does not (a cluster's temporary job folder, ``cluster down``). A consistent snapshot,
    since other drivers of a shared study may be writing; a failure is a warning, never the sweep's end."""
    import tempfile

    from mcrlab.tune.shared import snapshot_sqlite, sqlite_path

    src = sqlite_path(optuna_storage)
    if src is None or not src.is_file():
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tracker.log_artifact(run_id, snapshot_sqlite(src, Path(tmp) / "optuna.db"), "optuna")
    except Exception as err:  # noqa: BLE001 - see above
        print(f"mcrlab: could not log {src} to MLflow ({type(err).__name__}: {err})", file=sys.stderr, flush=True)


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
               verbose: int = 0, prefix: str | None = None, driver_seed: int | None = None,
               recovered: frozenset[str] = frozenset()) -> StudyResult:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from mcrlab.trials.display import LiveDisplay
    from mcrlab.trials.recorder import TrialRecorder
    from mcrlab.trials.seeds import objective_key
    from mcrlab.trials.signer import StateSigner, restoring_into
    from mcrlab.tune.searcher import BudgetStopper, ResumableOptunaSearch
    from mcrlab.tune.shared import SWEEP_ATTR, has_trials, open_storage

    slug = study_slug(dataset)
    ray_dir = sweep_dir / "ray"
    exp_path = ray_dir / slug
    manifest = sweep_dir / MANIFEST
    study_name = f"{prefix or sweep_id}/{slug}"
    study_tags = lineage_tags("study", sweep_id=sweep_id, study=dataset, dataset_fingerprint=fingerprint,
                              optuna_study=study_name)
    study_run = tracker.start_run(exp_id, f"study-{slug}", tags=study_tags, parent_run_id=sweep_run,
                                  key_tags=tuple(f"{TAG_PREFIX}{k}" for k in ("kind", "sweep_id", "study")),
                                  params={"dataset": dataset, "num_samples": space.num_samples,
                                          "max_concurrent": concurrency})
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
    trainable = _register_trainable(f"mcrlab-{slug}", backend, plan)

    def new_tuner(name: str, num_samples: int, points: list[dict] | None) -> Any:
        scheduler = None
        if space.scheduler.name == "asha" and not backend.stops_inside_trial:
            scheduler = ASHAScheduler(time_attr="trial_iteration", metric="objective", mode=space.mode,
                                      max_t=max_t, grace_period=space.scheduler.grace_period,
                                      reduction_factor=space.scheduler.reduction_factor)
        # metric and mode go to OptunaSearch itself: with a define-by-run space, TuneConfig's are ignored;
        # the study is loaded if it exists (a top-up after a resume continues the same study; a shared
        # study another driver runs: its starting points were enqueued by the first driver)
        sampler_space = space
        if driver_seed is not None:
            sampler_space = dataclasses.replace(space, sampler=dataclasses.replace(space.sampler, seed=driver_seed))
            if has_trials(optuna_storage, study_name):
                points = None
        if space.multi_objective:  # one direction per objective; Optuna gets no intermediate values
            metric: Any = [objective_key(k) for k in range(len(space.objectives))]
            mode: Any = [m for _, m in space.objectives]
            names: Any = [m for m, _ in space.objectives]
        else:
            metric, mode, names = "objective", space.mode, space.metric
        searcher = ResumableOptunaSearch(space=compile_space(space), metric=metric, mode=mode,
                                         points_to_evaluate=points or None, sampler=make_sampler(sampler_space),
                                         study_name=study_name, storage=open_storage(optuna_storage),
                                         metric_name=names, max_iterations=max_t,
                                         trial_attrs={SWEEP_ATTR: sweep_id}, num_samples=num_samples,
                                         finished_path=plan.finished_path, experiment=name)
        recorder = TrialRecorder(plan, uri=uri, run_folder=str(run_folder), experiment_id=exp_id,
                                 optuna=(optuna_storage, study_name), tune_experiment=name)
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
                stop=BudgetStopper(sweep_id),  # --time-budget (the deadline is this command's, see budget)
                # a trial whose process dies (lost worker, OOM kill, node loss) restarts from its last
                # checkpoint; a NaN/inf trial is not retried (the recorder sees its flag first)
                failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                # every checkpoint is kept: the experiment state is saved every few seconds, and a driver
                # killed between a checkpoint's deletion and the next save resumes its running trials from
                # a checkpoint that is gone ("does not exist on storage anymore", ray#27790) - tested by
                # tests/reliability/test_driver_kill.py. Checkpoints are small (one model + optimizer).
                # Several objectives: the best checkpoint is the first objective's (documented rule).
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None, checkpoint_score_attribute=space.metric,
                                                        checkpoint_score_order=space.mode),
            ),
        )

    # a resume restores the study's first experiment and any top-ups (each continues its unfinished trials)
    experiments = [exp_path, *sorted(p for p in ray_dir.glob(f"{slug}-topup-*")
                                     if re.fullmatch(rf"{re.escape(slug)}-topup-\d+", p.name))] if resume else []
    grids: list = []
    stopped: set[str] = set()  # Tune trial ids the time budget stopped, in this command

    def fit(tuner: Any) -> None:
        try:
            grids.append(tuner.fit())
        except Exception as err:
            if diskfull.is_disk_full(err):  # e.g. Optuna's study file: room for the signatures below
                diskfull.trigger("the sweep's Tune experiment or Optuna study", err)
            raise
        if budget.fired(sweep_id):
            stopped.update(_record_budget_stops(tracker, sweep_id, dataset, study_name, optuna_storage))
        if diskfull.triggered():
            raise diskfull.StorageFull(diskfull.triggered())  # run_sweep words the line (and how to resume)
        if interrupt.stop_requested():  # Ctrl+C of concurrent studies: saved unfinished, nothing summarised
            raise KeyboardInterrupt

    restored = refused = False
    set_aside = any(p.name in recovered for p in experiments)  # rolled back or set aside before the studies
    diskfull.reserve(sweep_dir)  # freed on the first full-disk error: room for the last state and records
    try:
        for path in experiments:
            if budget.expired(sweep_id) or not tune.Tuner.can_restore(str(path)):
                continue
            # Tune's restore unpickles this folder's state: it must be ours, private and signed by our key
            try:  # (checked for the whole tree before any study ran: _trust_stored_state; again just before use)
                check_private(sweep_dir, ray_dir)
                verify_tree(ray_dir, manifest, under=path)
            except TrustError:
                refused = True  # and nothing is signed below: a refused file must stay refused
                raise
            if not tune.Tuner.can_restore(str(path)):  # its only snapshot was never signed: set aside
                continue
            with restoring_into(str(ray_dir), str(manifest)):  # the signer Tune saved signs this folder
                fit(_restore(path, trainable, backend, plan))
            restored = True
        if not restored and not budget.expired(sweep_id):
            fit(new_tuner(slug, space.num_samples, [dict(p) for p in space.points_to_evaluate]))
        elif restored and not budget.expired(sweep_id):
            # Trials that count: finished or errored (a budget-stopped one does not). Missing ones: a driver
            # killed right after it started leaves a Tune snapshot with fewer trials than its searcher had
            # handed out (the restored searcher believes it is done), and a budget-stopped trial is run again.
            # Top the study up with a new experiment on the same Optuna study (its history is kept): first
            # the stopped trials' points, then new samples.
            counted, rerun = _progress([*grids, _recorded_only(grids, plan)], study_name, optuna_storage)
            missing = space.num_samples - counted
            if missing > 0:
                points = rerun[:missing]
                _mark_requeued(study_name, optuna_storage, [n for n, _ in points])
                fit(new_tuner(f"{slug}-topup-{int(time.time())}", missing, [p for _, p in points]))
    finally:
        try:  # the last word: what Tune wrote after the callback's last step
            if not refused:
                sign_tree(ray_dir, manifest, closed=True)
        except OSError as err:  # never hide the study's own outcome (a full disk shows there too)
            print(f"mcrlab: cannot update {manifest} ({err.strerror or err}); a resume of this sweep may be "
                  "refused", file=sys.stderr, flush=True)
        if board_actor is not None:
            ray.kill(board_actor)
    if restored or set_aside:  # (set aside without restoring: the killed driver's trials are lost too)
        _close_lost_trials(tracker, sweep_id, dataset, grids)
        _fail_lost_optuna_trials(study_name, optuna_storage, sweep_id if prefix else None)
    ended = budget.fired(sweep_id)
    if restored:  # trials finished after the killed driver's last snapshot count too
        grids = [*grids, _recorded_only(grids, plan)]
    return _summarise(space, dataset, grids, tracker, study_run, study_name, optuna_storage,
                      stopped=_stopped_ids(study_name, optuna_storage) if (ended or restored) else stopped,
                      budget_ended=ended)


def _trust_stored_state(sweep_dir: Path) -> frozenset[str]:
    """Before a resume starts anything: undo what a driver killed while Tune saved left in each experiment
    folder (``storage.recover_tree``, one line each on stderr), then verify every file of the sweep's Tune
    tree (a TrustError: one line, exit 2). Whole-tree and up front because every study's signer signs the
    whole tree: a file planted in one study's folder must be refused before another study's signer runs.
    Returns the names of the experiment folders recovered."""
    ray_dir, manifest = sweep_dir / "ray", sweep_dir / MANIFEST  # (check_private: run_sweep, just before)
    recovered = set()
    for exp in sorted(p for p in ray_dir.iterdir() if p.is_dir() and p.name != "train") if ray_dir.is_dir() else []:
        for line in recover_tree(ray_dir, manifest, under=exp):
            print(f"mcrlab: {line}", file=sys.stderr, flush=True)
            recovered.add(exp.name)
    verify_tree(ray_dir, manifest)
    return frozenset(recovered)


def _register_trainable(name: str, backend: Any, plan: StudyPlan) -> str:
    """Register the study's trainable with Tune under ``name`` (its own, the same in every command on the
    sweep: restore checks it against the experiment's) and return the name, which Tuner and restore get.

    Tune's registry is not thread-safe: studies running in threads that each hand Tuner (or restore) a
    function, which Tune registers inside ``fit``, fail with "dictionary changed size during iteration"
    (``flush_values``). Here every registration of a study - ``with_parameters``' object-store put and the
    trainable itself - happens under one lock, and nothing is registered inside ``fit``.
    """
    from ray import tune

    with _REGISTRY_LOCK:
        tune.register_trainable(name, backend.trainable(plan))
    return name


def _restore(path: Path, name: str, backend: Any, plan: StudyPlan) -> Any:
    """``Tuner.restore`` of one of the study's experiments, continuing its unfinished and errored trials."""
    from ray import tune

    try:
        return tune.Tuner.restore(str(path), trainable=name, resume_unfinished=True, resume_errored=True)
    except ValueError as err:  # started by an mcrlab whose trainables had no names of their own
        if "Invalid `trainable`" not in str(err):
            raise
        if threading.current_thread() is not threading.main_thread():  # Tune would register it in fit
            raise ConfigError(f"--resume: {path.name} was started by an older mcrlab; resume it one study at "
                              "a time (--concurrent-studies 1)") from None
        return tune.Tuner.restore(str(path), trainable=backend.trainable(plan), resume_unfinished=True,
                                  resume_errored=True)


def _stopped_ids(study_name: str, optuna_storage: str) -> set[str]:
    """Tune trial ids of every trial the time budget stopped in this study (any command: Optuna keeps them)."""
    import optuna

    from mcrlab.trials.conventions import TUNE_TRIAL_ATTR

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    return {str(t.user_attrs.get(TUNE_TRIAL_ATTR)) for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get(STOPPED_ATTR)}


def _record_budget_stops(tracker: Tracker, sweep_id: str, dataset: str, study_name: str,
                         optuna_storage: str) -> set[str]:
    """After an experiment the time budget ended: its trials still RUNNING in Optuna got no result (Tune stops
    them without a completion hook). Each is marked (user attr ``mcrlab.stopped_by``) and told PRUNED (a
    single objective keeps its last reported value, as Optuna does for pruned trials); its MLflow run, if it
    started, is tagged and ends KILLED. Returns their Tune trial ids."""
    import optuna

    from mcrlab.trials.conventions import TUNE_TRIAL_ATTR

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    ids = {}
    from mcrlab.tune.shared import SWEEP_ATTR

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get(SWEEP_ATTR, sweep_id) != sweep_id:  # a shared study: another driver's trial
            continue
        optuna.trial.Trial(study, t._trial_id).set_user_attr(STOPPED_ATTR, "time_budget")
        with contextlib.suppress(RuntimeError):  # a grid sampler's study.stop() outside optimize
            study.tell(t.number, state=optuna.trial.TrialState.PRUNED)
        ids[str(t.user_attrs.get(TUNE_TRIAL_ATTR))] = t.number
    running = find_runs(tracker.uri, kind="trial", tags={"sweep_id": sweep_id, "study": dataset},
                        filter_string="attributes.status = 'RUNNING'")
    for run in running:
        if run["tags"].get(f"{TAG_PREFIX}trial_id") in ids:
            tracker.set_tags(run["run_id"], {STOPPED_ATTR: "time_budget", f"{TAG_PREFIX}early_stopped": "true"})
            tracker.end_run(run["run_id"], "KILLED")
    return set(ids)


@dataclass(frozen=True)
class _RecordedTrial:
    """A ResultGrid row's look-alike (``metrics``, ``config``, ``error``) for a trial the finished-trial record
    holds but no restored Tune experiment returns: one a killed driver handed out, and that finished, after
    its last snapshot (``trials.finished``)."""

    metrics: dict
    config: dict
    error: None = None


def _recorded_only(grids: list, plan: StudyPlan) -> list[_RecordedTrial]:
    """The recorded finished trials of the study that ``grids`` lack, as rows to count with theirs."""
    from mcrlab.trials.finished import finished_trials

    known = {str((r.metrics or {}).get("trial_id")) for grid in grids for r in grid}
    rows = []
    for tid, t in finished_trials(plan.finished_path).items():
        if tid in known:
            continue
        metrics = {**t.result, "trial_id": tid}
        if t.config is None:  # recorded by an older version, without its point: counted, never the best
            metrics.pop("objective", None)
        rows.append(_RecordedTrial(metrics, dict(t.config or {})))
    return rows


def _progress(grids: list, study_name: str, optuna_storage: str) -> tuple[int, list[tuple[int, dict]]]:
    """(trials that count: finished or errored, not stopped by the budget; the (number, point) of each
    budget-stopped Optuna trial whose point has not been queued again yet)."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    stopped = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(STOPPED_ATTR)]
    from mcrlab.trials.conventions import TUNE_TRIAL_ATTR

    stopped_ids = {str(t.user_attrs.get(TUNE_TRIAL_ATTR)) for t in stopped}
    counted = 0
    for r in (r for grid in grids for r in grid):
        tid = (r.metrics or {}).get("trial_id")
        if r.error is not None or (tid is not None and str(tid) not in stopped_ids):
            counted += 1  # a trial that never reported and has no error never ran (the budget kept it back)
    done = set(study.user_attrs.get(REQUEUED_ATTR, []))
    return counted, [(t.number, dict(t.params)) for t in stopped if t.number not in done]


def _mark_requeued(study_name: str, optuna_storage: str, numbers: list[int]) -> None:
    import optuna

    if numbers:
        study = optuna.load_study(study_name=study_name, storage=optuna_storage)
        study.set_user_attr(REQUEUED_ATTR, sorted({*study.user_attrs.get(REQUEUED_ATTR, []), *numbers}))


def _fail_lost_optuna_trials(study_name: str, optuna_storage: str, only_sweep: str | None = None) -> None:
    """Tell Optuna that trials still RUNNING once a resumed study has ended are FAIL: they were handed out by
    a killed driver and never resumed (see ``_close_lost_trials``), so no result will ever come for them.
    ``only_sweep``: a shared study, where RUNNING trials of other drivers are alive and left alone."""
    import optuna

    from mcrlab.tune.shared import SWEEP_ATTR

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if only_sweep is None or trial.user_attrs.get(SWEEP_ATTR) == only_sweep:
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
               study_name: str, optuna_storage: str, stopped: set[str] | None = None,
               budget_ended: bool = False) -> StudyResult:
    """The study's best trial over its ResultGrid(s): one, or more after a resume that topped it up.

    Trials the time budget stopped (``stopped``, Tune ids) are partial: never the best. Several objectives:
    the best is the best on the first objective, and the Pareto front comes from Optuna.
    """
    import optuna

    stopped = stopped or set()
    results = [r for grid in grids for r in grid]
    errors = sum(1 for r in results if r.error is not None)
    ok = [r for r in results if r.error is None and isinstance((r.metrics or {}).get("objective"), (int, float))
          and math.isfinite(r.metrics["objective"]) and str(r.metrics.get("trial_id")) not in stopped]
    n_stopped = sum(1 for r in results if r.error is None and str((r.metrics or {}).get("trial_id")) in stopped
                    or (r.error is None and not (r.metrics or {}).get("trial_id")))
    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    if not ok and not budget_ended:
        tracker.end_run(study_run, "FAILED")
        raise RuntimeError(f"study {dataset}: no trial finished ({errors} errors); see the trial logs")
    tracker.log_summary(study_run, {"trials": len(results), "errors": errors, "budget_stopped": n_stopped})
    if budget_ended:
        tracker.set_tags(study_run, {STOPPED_ATTR: "time_budget"})
    from mcrlab.analysis.sweep_report import pareto_rows

    pareto = pareto_rows(study) if space.multi_objective else []
    if pareto:
        tracker.log_dict(study_run, {"objectives": [list(o) for o in space.objectives], "front": pareto},
                         "pareto_front.json")
    if not ok:  # the budget ended the study before any trial finished
        tracker.end_run(study_run, "FINISHED")
        return StudyResult(dataset=dataset, best_params={}, best_config={}, best_objective=math.nan,
                           best_trial_id="", num_trials=len(results), num_errors=errors, run_id=study_run,
                           optuna_study=study_name, result_grid=grids[0] if grids else None,
                           objectives=space.objectives, budget_stopped=n_stopped, budget_ended=True)
    pick = max if space.mode == "max" else min
    best = pick(ok, key=lambda r: r.metrics["objective"])  # = ResultGrid.get_best_result(scope="last")
    params = {k: v for k, v in best.config.items()}
    cfg = trial_config(space, dataset, params, space.objective.seed)
    objective = float(best.metrics["objective"])
    tracker.log_summary(study_run, {"best_objective": objective})  # once per value (a resume summarises again)
    tracker.set_tags(study_run, {f"{TAG_PREFIX}best_trial_id": best.metrics.get("trial_id", "")})
    tracker.log_dict(study_run, {"params": params, "objective": objective, "config": cfg.to_dict()},
                     "best_config.json")
    try:  # fANOVA needs >= 2 finished trials with varying params; a smoke sweep may not have them
        if space.multi_objective:  # one importance table per objective (as the report computes them)
            from mcrlab.analysis.sweep_report import importances_per_objective

            importances: dict = importances_per_objective(study)
        else:
            importances = {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
        tracker.log_dict(study_run, importances, "param_importances.json")
    except Exception as err:  # noqa: BLE001 - importances are a report, never a reason to fail the sweep
        tracker.log_dict(study_run, {"unavailable": f"{type(err).__name__}: {err}"}, "param_importances.json")
    tracker.end_run(study_run, "FINISHED")
    return StudyResult(dataset=dataset, best_params=params, best_config=cfg.to_dict(), best_objective=objective,
                       best_trial_id=str(best.metrics.get("trial_id", "")), num_trials=len(results),
                       num_errors=errors, run_id=study_run, optuna_study=study_name,
                       result_grid=grids[0] if grids else None, objectives=space.objectives, pareto=pareto,
                       budget_stopped=n_stopped, budget_ended=budget_ended)


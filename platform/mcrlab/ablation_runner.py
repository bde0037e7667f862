"""Run an ablation grid (arms x datasets x seeds) as Ray Tune trials, tracked in MLflow, resumable.

MLflow layout (one writer: this driver process, through a Tune callback)::

    ablation run     kind=ablation, mcrlab.ablation_id, mcrlab.base_run_id, spec.yaml + base config
      arm run        kind=arm, mcrlab.arm, mcrlab.delta (JSON)
        cell run     kind=cell, mcrlab.{ablation_id, arm, delta, dataset, seed, base_run_id, git_commit,
                     config_hash, dataset_fingerprint}; params = the resolved config; per-epoch metrics

Tune runs ``tune.grid_search`` over cell indices (no Optuna: OptunaSearch rejects grids). A cell with
one worker is a single-process function trainable calling ``mcrlab.train.fit``; with ``resources.workers``
> 1 it drives a TorchTrainer (``mcrlab.ray_train.make_trainer``, as the sweeps' data-parallel backend). Resume is by MLflow, not by Tune's
experiment state: a cell counts as done when a FINISHED cell run with the same ablation id, arm,
dataset, seed and config hash exists; everything else runs again, and its stale RUNNING/FAILED runs
are marked KILLED so that comparisons never see them. The granularity is the cell (tiny cells make
mid-cell checkpoints not worth their I/O here).

The sweeps' backends (mcrlab.tune.backends) are bound to Optuna-sampled points with objective seeds,
so cells use their own two small trainables built on the same pieces (fit, ray_train.make_trainer).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcrlab.ablation import AblationSpec, Cell
from mcrlab.config import ConfigError, RunConfig
from mcrlab.tracking import Tracker, lineage_tags, tag_filter

__all__ = ["AblationOutcome", "run_ablation", "finished_cells", "cell_trainable", "ablation_run_id"]

K = "mcrlab."
DRIVER_CPU = 0.01  # what a data-parallel cell's Tune function holds besides its Train workers


@dataclass
class AblationOutcome:
    ablation_run_id: str
    ran: list[tuple[str, str, str]] = field(default_factory=list)        # cells run this time
    skipped: list[tuple[str, str, str]] = field(default_factory=list)    # already finished
    failed: list[tuple[str, str, str]] = field(default_factory=list)


def cell_trainable(config: dict, cells: list[dict] | None = None) -> None:
    """Tune function trainable: one cell = one ``fit`` (imports torch only inside the trial)."""
    from ray import tune

    from mcrlab.train import fit

    cell = cells[config["cell"]]
    cfg = RunConfig.from_dict(cell["config"], f"cell {cell['arm']}/{cell['dataset']}/{cell['seed']}")

    def report(metrics: dict, checkpoint_dir: str | None = None) -> None:
        tune.report({k: float(v) for k, v in metrics.items()})

    fit(cfg, report)


def data_parallel_cell(config: dict, cells: list[dict] | None = None, workers: int = 2, cpus: float = 1.0,
                       gpus: float = 0.0, storage_path: str = "", ablation_id: str = "") -> None:
    """Tune function driving one TorchTrainer run of a cell (the sweeps' data-parallel backend pattern).

    The Train run is named from the ablation id and the cell, so a cell re-run after a crash finds
    its Train run and continues from the latest checkpoint.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    from mcrlab.ray_train import make_trainer, run_name
    from mcrlab.report import slug

    cell = cells[config["cell"]]
    name = run_name(ablation_id, slug(f"{cell['arm']}-{cell['dataset']}-s{cell['seed']}"))
    trainer = make_trainer(_data_parallel_worker, {"run": cell["config"]}, name=name, storage_path=storage_path,
                           workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus,
                           callbacks=[TuneReportCallback()])
    trainer.fit()


def _data_parallel_worker(config: dict) -> None:
    from mcrlab.ray_train import local_checkpoint_dir, worker_report, worker_resume
    from mcrlab.train import fit

    with worker_resume() as resume_from:
        fit(RunConfig.from_dict(config["run"]), report=worker_report(), checkpoint_dir=local_checkpoint_dir(),
            resume_from=resume_from)


def _trainable(spec: AblationSpec, cells_payload: list[dict], storage: Path):
    """Single-process trial for one-worker cells, else a TorchTrainer-driving trial (holding no CPU:
    its Train workers do, so Tune cannot count them; ``_max_concurrent`` caps the trials instead)."""
    from ray import tune

    r = spec.resources
    if r.workers == 1:
        return tune.with_resources(tune.with_parameters(cell_trainable, cells=cells_payload),
                                   {"cpu": r.cpus, "gpu": r.gpus})
    fn = tune.with_parameters(data_parallel_cell, cells=cells_payload, workers=r.workers, cpus=r.cpus,
                              gpus=r.gpus, storage_path=str(storage / "ray_train"), ablation_id=spec.ablation_id)
    # a trial must request something (an empty request raises "zero bundles" on Ray 2.60): a sliver of CPU,
    # which _max_concurrent accounts for
    return tune.with_resources(fn, {"cpu": DRIVER_CPU})


def _max_concurrent(spec: AblationSpec) -> int | None:
    import ray

    r = spec.resources
    if r.workers == 1:
        return r.max_concurrent or None
    total = ray.cluster_resources()
    fits = int(total.get("CPU", 0) // (r.workers * r.cpus + DRIVER_CPU))
    if r.gpus > 0:
        fits = min(fits, int(total.get("GPU", 0) // (r.workers * r.gpus)))
    if fits < 1:
        raise ConfigError(f"{spec.path}: resources: a cell needs {r.workers} x ({r.cpus} CPU, {r.gpus} GPU), "
                          f"more than the cluster has ({total.get('CPU', 0)} CPU, {total.get('GPU', 0)} GPU)")
    return min(fits, r.max_concurrent) if r.max_concurrent else fits


def ablation_run_id(tracker: Tracker, experiment_id: str, ablation_id: str) -> str | None:
    return tracker.find_run(experiment_id, {f"{K}kind": "ablation", f"{K}ablation_id": ablation_id})


def finished_cells(tracker: Tracker, experiment_id: str, ablation_id: str) -> dict[tuple, list]:
    """``{(arm, dataset, seed): [run, ...]}`` of every cell run of this ablation (any status)."""
    runs = tracker.client.search_runs(
        [experiment_id], filter_string=tag_filter({f"{K}kind": "cell", f"{K}ablation_id": ablation_id}),
        max_results=50000)
    out: dict[tuple, list] = {}
    for r in runs:
        t = r.data.tags
        out.setdefault((t.get(f"{K}arm"), t.get(f"{K}dataset"), t.get(f"{K}seed")), []).append(r)
    return out


class _MlflowCells:
    """Tune callback (driver side): one MLflow run per cell, nested under its arm run."""

    def __init__(self, tracker: Tracker, exp_id: str, spec: AblationSpec, cells: list[Cell],
                 arm_runs: dict[str, str], fingerprints: dict[str, str]):
        self.tracker, self.exp_id, self.spec, self.cells = tracker, exp_id, spec, cells
        self.arm_runs, self.fingerprints = arm_runs, fingerprints
        self.run_of: dict[str, str] = {}      # trial id -> MLflow run id
        self.status: dict[tuple, str] = {}

    def _cell(self, trial) -> Cell:
        return self.cells[trial.config["cell"]]

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        cell = self._cell(trial)
        arm = self.spec.arm(cell.arm)
        tags = lineage_tags("cell", ablation_id=self.spec.ablation_id, arm=cell.arm, delta=arm.delta_json(),
                            dataset=cell.dataset, seed=cell.seed, base_run_id=self.spec.base_run or "inline",
                            config_hash=cell.config_hash,
                            dataset_fingerprint=self.fingerprints.get(cell.dataset, "unknown"),
                            tune_trial_id=trial.trial_id)
        run_id = self.tracker.start_run(self.exp_id, f"{cell.arm}/{cell.dataset}/s{cell.seed}", tags=tags,
                                        parent_run_id=self.arm_runs[cell.arm],
                                        params=RunConfig.from_dict(cell.config).flat())
        self.tracker.log_dict(run_id, cell.config, "config.json")
        self.run_of[trial.trial_id] = run_id

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self.run_of.get(trial.trial_id)
        if run_id is None:
            return
        # our metrics only (Tune adds time_*, training_iteration, ...); step = epoch
        metrics = {k: v for k, v in result.items() if "/" in k and not k.startswith("config/")}
        self.tracker.log_metrics(run_id, metrics, step=int(result.get("epoch", 0)))

    def _end(self, trial, status: str) -> None:
        run_id = self.run_of.get(trial.trial_id)
        if run_id is not None:
            self.tracker.end_run(run_id, status)
        self.status[self._cell(trial).key] = status

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._end(trial, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._end(trial, "FAILED")


def _as_callback(impl: _MlflowCells):
    """Wrap in a real ``ray.tune.Callback`` subclass (imported lazily: the CLI stays Ray-free to load)."""
    from ray.tune import Callback

    class MlflowCells(Callback):
        def on_trial_start(self, *a, **kw):
            impl.on_trial_start(*a, **kw)

        def on_trial_result(self, *a, **kw):
            impl.on_trial_result(*a, **kw)

        def on_trial_complete(self, *a, **kw):
            impl.on_trial_complete(*a, **kw)

        def on_trial_error(self, *a, **kw):
            impl.on_trial_error(*a, **kw)

    return MlflowCells()


def _fingerprints(spec: AblationSpec, cells: list[Cell]) -> dict[str, str]:
    """Dataset identity per dataset name (loaded once on the driver from the first cell's data config)."""
    from mcrlab.config import DataConfig, build_dataclass
    from mcrlab.data import load_dataset

    out = {}
    for cell in cells:
        if cell.dataset not in out:
            try:
                out[cell.dataset] = load_dataset(build_dataclass(DataConfig, cell.config["data"], spec.path,
                                                                 "data")).fingerprint()
            except ConfigError as err:  # name the spec: the data error alone does not say where it came from
                msg = str(err)
                raise ConfigError(msg if msg.startswith(str(spec.path)) else f"{spec.path}: {msg}") from None
    return out


def run_ablation(spec: AblationSpec, uri: str, *, resume: bool = False, storage_path: str | Path = "runs",
                 verbose: int = 0) -> AblationOutcome:
    """Run the missing cells of ``spec`` (all of them on a fresh ablation) and close the MLflow runs."""
    from mcrlab.trials.storage import FolderLock, private_dir

    # one driver per ablation: a second one (e.g. two --resume at once) stops here, before MLflow or Ray
    # load the datasets before the store is touched: a bad data.name fails here, nothing started or written
    fingerprints = _fingerprints(spec, spec.cells)
    with FolderLock(private_dir(Path(storage_path).resolve() / "ablations" / spec.ablation_id), "ablation"):
        return _run_ablation(spec, uri, fingerprints, resume=resume, storage_path=storage_path, verbose=verbose)


def _run_ablation(spec: AblationSpec, uri: str, fingerprints: dict, *, resume: bool, storage_path: str | Path,
                  verbose: int) -> AblationOutcome:
    import ray
    from ray import tune

    tracker = Tracker(uri)
    exp_id = tracker.experiment(spec.experiment)
    abl_id = spec.ablation_id
    existing = ablation_run_id(tracker, exp_id, abl_id)
    if existing and not resume:
        raise ConfigError(f"{spec.path}: name: ablation '{abl_id}' already exists in experiment "
                          f"'{spec.experiment}' (run {existing}); pass --resume to run only its missing cells, "
                          "or choose another name")
    storage = Path(storage_path).resolve()

    base_tags = {"ablation_id": abl_id, "base_run_id": spec.base_run or "inline"}
    root = tracker.start_run(exp_id, abl_id, tags=lineage_tags("ablation", **base_tags, spec=spec.path),
                             key_tags=(f"{K}kind", f"{K}ablation_id"))
    if not existing:
        tracker.log_params(root, {"n_arms": len(spec.arms), "n_datasets": len(spec.datasets),
                                  "n_seeds": len(spec.seeds), "datasets": spec.datasets, "seeds": spec.seeds,
                                  "metric": spec.metric, "tuned": bool(spec.tuning)})
        tracker.log_dict(root, spec.raw, "spec.yaml")
        tracker.log_dict(root, spec.base.to_dict(), "base_config.json")
    arm_runs = {a.name: tracker.start_run(exp_id, a.name, parent_run_id=root,
                                          tags=lineage_tags("arm", **base_tags, arm=a.name, delta=a.delta_json()),
                                          key_tags=(f"{K}kind", f"{K}ablation_id", f"{K}arm"))
                for a in spec.arms}
    cells = spec.cells
    if spec.tuning:
        cells = _tuned_cells(spec, tracker, arm_runs, uri, storage)

    done, todo, stale = [], [], []
    previous = finished_cells(tracker, exp_id, abl_id) if existing else {}
    for i, cell in enumerate(cells):
        runs = previous.get(cell.key, [])
        if any(r.info.status == "FINISHED" and r.data.tags.get(f"{K}config_hash") == cell.config_hash
               for r in runs):
            done.append(cell.key)
        else:
            todo.append(i)
            stale += [r for r in runs if r.info.status != "FINISHED"]
    for r in stale:  # a killed or failed attempt: hide it from comparisons, keep it for the record
        tracker.client.set_tag(r.info.run_id, f"{K}stale", "true")
        if r.info.status == "RUNNING":
            tracker.end_run(r.info.run_id, "KILLED")
    outcome = AblationOutcome(root, skipped=done)
    if todo:
        impl = _MlflowCells(tracker, exp_id, spec, cells, arm_runs, fingerprints)
        if not ray.is_initialized():
            from mcrlab.cluster import ray_init_private  # the token Ray may create is kept 0600

            ray_init_private(configure_logging=False, log_to_driver=verbose > 0)
        cells_payload = [{"arm": c.arm, "dataset": c.dataset, "seed": c.seed, "config": c.config}
                         for c in cells]
        tuner = tune.Tuner(
            _trainable(spec, cells_payload, storage), param_space={"cell": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(max_concurrent_trials=_max_concurrent(spec),
                                        reuse_actors=True,
                                        trial_dirname_creator=lambda t: f"cell_{t.config['cell']}_{t.trial_id}"),
            run_config=tune.RunConfig(name=f"{abl_id}-{int(time.time())}", verbose=verbose,
                                      storage_path=str(storage / "ray_results"),
                                      callbacks=[_as_callback(impl)],
                                      failure_config=tune.FailureConfig(max_failures=0)))
        tuner.fit()
        for i in todo:
            key = cells[i].key
            (outcome.ran if impl.status.get(key) == "FINISHED" else outcome.failed).append(key)
    status = "FAILED" if outcome.failed else "FINISHED"
    for arm, run_id in arm_runs.items():
        arm_failed = any(k[0] == arm for k in outcome.failed)
        tracker.end_run(run_id, "FAILED" if arm_failed else "FINISHED")
    tracker.set_tags(root, {f"{K}cells_done": len(outcome.ran) + len(outcome.skipped),
                            f"{K}cells_total": len(cells)})
    tracker.end_run(root, status)
    return outcome


def _tuned_cells(spec: AblationSpec, tracker: Tracker, arm_runs: dict[str, str], uri: str,
                 storage: Path) -> list[Cell]:
    """Equal tuning budget: one sweep per arm (all datasets), then the cells from each arm's best configs.

    An arm's best configs are logged to its arm run (``tuned.json``) and reused on resume, so resumed
    cells keep their config hashes. Arms with nothing to tune (see ``ablation.tuning_spaces``) run as is.
    """
    import tempfile

    from mcrlab.ablation import make_cells
    from mcrlab.tune.runner import run_sweep
    from mcrlab.tune.space import parse_space

    configs: dict[tuple[str, str], RunConfig] = {}
    for arm in spec.arms:
        untuned = spec.base.replace(arm.delta)
        space_raw = spec.tuning.get(arm.name)
        best: dict[str, dict] = {}
        if space_raw is not None:
            run_id = arm_runs[arm.name]
            if "tuned.json" in {a.path for a in tracker.client.list_artifacts(run_id)}:
                with tempfile.TemporaryDirectory() as tmp:
                    best = json.loads(Path(tracker.client.download_artifacts(run_id, "tuned.json", tmp)).read_text())
            else:
                result = run_sweep(parse_space(space_raw, f"{spec.path}: tune (arm {arm.name})"),
                                   tracking_uri=uri, storage_path=storage, progress=False)
                best = {d: st.best_config for d, st in result.studies.items()}
                tracker.log_dict(run_id, best, "tuned.json")
                tracker.set_tags(run_id, {f"{K}tune_sweep_id": result.sweep_id,
                                          f"{K}tune_sweep_run_id": result.run_id})
        for dataset in spec.datasets:
            configs[(arm.name, dataset)] = RunConfig.from_dict(best[dataset]) if dataset in best else untuned
    return make_cells(configs, spec.seeds, spec.seed_keys, spec.overrides, spec.path)


def describe(spec: AblationSpec) -> dict[str, Any]:
    """A JSON-able summary of the grid (printed by ``mcrlab ablate --dry-run``)."""
    return {"ablation_id": spec.ablation_id, "experiment": spec.experiment, "base_run": spec.base_run,
            "arms": {a.name: a.delta for a in spec.arms}, "datasets": spec.datasets, "seeds": spec.seeds,
            "cells": len(spec.cells)}


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=str)

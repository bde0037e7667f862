"""Run an ablation grid (arms x datasets x seeds) as Ray Tune trials, tracked in MLflow, resumable.

MLflow layout (one writer: this driver process, through the shared trial recorder)::

    ablation run     kind=ablation, mcrlab.ablation_id, mcrlab.base_run_id, spec.yaml + base config
      arm run        kind=arm, mcrlab.arm, mcrlab.delta (JSON)
        cell run     kind=cell, mcrlab.{ablation_id, arm, delta, dataset, seed, base_run_id, git_commit,
                     config_hash, dataset_fingerprint, tune_trial_id}; params = the resolved config;
                     per-epoch metrics; the best checkpoint

Tune runs ``tune.grid_search`` over cell indices (no Optuna: OptunaSearch rejects grids). A cell is a trial
of the shared trial layer (``mcrlab.trials``): a ``CellPlan`` says which config a cell index trains and how
its MLflow run is named and nested, and everything else is the sweeps' - the single-process and
data-parallel backends, checkpoints every epoch and restarts of a lost trial from its last checkpoint
(``FailureConfig``), the recorder's MLflow outage queue, dedupe and error reasons, the concurrency cap.

Resume across drivers is by MLflow: a cell counts as done when a FINISHED cell run with the same ablation id,
arm, dataset, seed and config hash exists; everything else runs again, and its stale RUNNING/FAILED runs are
marked KILLED so that comparisons never see them. A data-parallel cell's Train run is named from the ablation
id and the cell, so a cell re-run after a driver crash continues from its latest checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcrlab.ablate.spec import AblationSpec, Cell
from mcrlab.analysis.report import slug
from mcrlab.config import ConfigError, RunConfig
from mcrlab.engine.pretrain import init_lineage
from mcrlab.tracking import TAG_PREFIX, Tracker, lineage_tags, tag_filter
from mcrlab.trials.plan import RunIdentity, Scaling, TrialPlan

__all__ = ["AblationOutcome", "CellPlan", "run_ablation", "finished_cells", "ablation_run_id"]

K = TAG_PREFIX
TRIAL_RETRIES = 2  # restarts of a cell whose process was lost, each from its last checkpoint


@dataclass
class AblationOutcome:
    ablation_run_id: str
    ran: list[tuple[str, str, str]] = field(default_factory=list)        # cells run this time
    skipped: list[tuple[str, str, str]] = field(default_factory=list)    # already finished
    failed: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class CellPlan(TrialPlan):
    """The cells of one ablation run: a trial's point is ``{"cell": index}``.

    ``metric`` is what checkpoints are ranked by (validation accuracy, as fit's model selection); the
    report's headline metric is the spec's and is read from the runs afterwards.
    """

    cells: tuple[dict, ...]  # {"arm", "dataset", "seed", "config" (nested dict), "config_hash"}
    ablation_id: str
    arm_runs: dict[str, str]  # arm -> MLflow arm run id (the cells' parent)
    deltas: dict[str, str]  # arm -> its delta as JSON
    fingerprints: dict[str, str]  # dataset -> fingerprint
    base_run: str = "inline"
    scaling: Scaling = Scaling()
    storage_path: str = ""
    metric: str = "val/acc"

    @property
    def group_id(self) -> str:  # type: ignore[override]
        return self.ablation_id

    def _cell(self, point: dict[str, Any]) -> dict:
        return self.cells[int(point["cell"])]

    def configs(self, point: dict[str, Any]) -> list[RunConfig]:
        c = self._cell(point)
        return [RunConfig.from_dict(c["config"], f"cell {c['arm']}/{c['dataset']}/s{c['seed']}")]

    def label(self, trial_id: str, point: dict[str, Any]) -> str:
        c = self._cell(point)
        return f"{c['arm']}/{c['dataset']}/s{c['seed']}"

    def train_run_name(self, trial_id: str, point: dict[str, Any]) -> str:
        c = self._cell(point)  # the cell, not the trial id: a re-run cell finds its Train run again
        return f"{self.ablation_id}-" + slug(f"{c['arm']}-{c['dataset']}-s{c['seed']}")

    def identity(self, trial_id: str, point: dict[str, Any]) -> RunIdentity:
        c = self._cell(point)
        fingerprint = self.fingerprints.get(c["dataset"], "unknown")
        tags = lineage_tags("cell", ablation_id=self.ablation_id, arm=c["arm"], delta=self.deltas[c["arm"]],
                            dataset=c["dataset"], seed=c["seed"], base_run_id=self.base_run,
                            config_hash=c["config_hash"], dataset_fingerprint=fingerprint, tune_trial_id=trial_id,
                            **init_lineage(self.configs(point)[0], fingerprint))
        key = tuple(f"{K}{k}" for k in ("kind", "ablation_id", "arm", "dataset", "seed", "tune_trial_id"))
        return RunIdentity(name=self.label(trial_id, point), tags=tags, key_tags=key,
                           parent_run_id=self.arm_runs[c["arm"]], params=self.configs(point)[0].flat(),
                           artifacts={"config.json": c["config"]})


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


def check_cells(spec: AblationSpec, *, missing_ok: bool = False, tracking_uri: str | None = None) -> None:
    """Build each arm's model against each dataset's shapes before anything starts (ConfigError naming
    the spec and the key); ``missing_ok``: a shard folder not on this machine is skipped (dry runs).
    ``tracking_uri``: also check an arm's ``model.init=<MLflow run id>`` against that store (and cache
    the run's weights for the cells)."""
    from mcrlab.config import DataConfig, build_dataclass
    from mcrlab.engine.preflight import check_model_fits, dataset_layout
    from mcrlab.trials.init_source import check_run_init

    layouts: dict[str, Any] = {}
    seen = set()
    for cell in spec.cells:
        if (cell.arm, cell.dataset) in seen:
            continue  # the seeds of one arm share the model's shapes
        seen.add((cell.arm, cell.dataset))
        try:
            if cell.dataset not in layouts:
                layouts[cell.dataset] = dataset_layout(build_dataclass(DataConfig, cell.config["data"],
                                                                       spec.path, "data"), missing_ok=missing_ok)
            if layouts[cell.dataset] is not None:
                cfg = RunConfig.from_dict(cell.config, spec.path)
                check_model_fits(cfg, layouts[cell.dataset])
                if tracking_uri is not None:
                    check_run_init(cfg, layouts[cell.dataset], tracking_uri)
        except ConfigError as err:
            msg = str(err)
            raise ConfigError(msg if msg.startswith(str(spec.path)) else
                              f"{spec.path}: arm {cell.arm}: {msg}") from None


def run_ablation(spec: AblationSpec, uri: str, *, resume: bool = False, storage_path: str | Path = "runs",
                 verbose: int = 0, callbacks: list | None = None) -> AblationOutcome:
    """Run the missing cells of ``spec`` (all of them on a fresh ablation) and close the MLflow runs.

    Extra Tune ``callbacks`` are for tests (fault injection)."""
    from mcrlab.trials.storage import FolderLock, private_dir

    # load the datasets before the store is touched: a bad data.name fails here, nothing started or written
    fingerprints = _fingerprints(spec, spec.cells)
    check_cells(spec, tracking_uri=uri)
    from mcrlab.trials import diskfull

    # one driver per ablation: a second one (e.g. two --resume at once) stops here, before MLflow or Ray
    folder = private_dir(Path(storage_path).resolve() / "ablations" / spec.ablation_id)
    with FolderLock(folder, "ablation"):
        diskfull.arm()  # a full disk stops the cells with one line; finished cells are kept (MLflow)
        diskfull.reserve(folder)
        try:
            return _run_ablation(spec, uri, fingerprints, resume=resume, storage_path=storage_path,
                                 verbose=verbose, callbacks=callbacks)
        except Exception as err:
            full = diskfull.triggered() or (str(err) if diskfull.is_disk_full(err) else None)
            if full is None:
                raise
            raise diskfull.StorageFull(
                f"ablation {spec.ablation_id} stopped: a disk is full ({full}). Finished cells are kept; the "
                f"others run again: free space, then run  mcrlab ablate {spec.path} --resume") from err
        finally:
            diskfull.disarm()


def _run_ablation(spec: AblationSpec, uri: str, fingerprints: dict[str, str], *, resume: bool,
                  storage_path: str | Path, verbose: int, callbacks: list | None) -> AblationOutcome:
    from mcrlab.trials.recorder import fail_fast_on_outages

    fail_fast_on_outages(uri)
    tracker = Tracker(uri)
    exp_id = tracker.experiment(spec.experiment)
    from mcrlab.trials.conventions import describe_experiment

    describe_experiment(tracker.client, exp_id, spec.description or (
        f"Ablation '{spec.ablation_id}' ({spec.path}): {len(spec.arms)} arms x {len(spec.datasets)} datasets x "
        f"{len(spec.seeds)} seeds; metric {spec.metric}."))
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
        from mcrlab.trials.session import start_ray

        start_ray(verbose=verbose > 0)
        plan = CellPlan(
            cells=tuple({"arm": c.arm, "dataset": c.dataset, "seed": c.seed, "config": c.config,
                         "config_hash": c.config_hash} for c in cells),
            ablation_id=abl_id, arm_runs=arm_runs, deltas={a.name: a.delta_json() for a in spec.arms},
            fingerprints=fingerprints, base_run=spec.base_run or "inline",
            scaling=Scaling(workers=spec.resources.workers, cpus=spec.resources.cpus, gpus=spec.resources.gpus,
                            max_concurrent=spec.resources.max_concurrent),
            storage_path=str(storage / "ray_train"))
        results = _run_cells(plan, todo, tracker, exp_id, storage, verbose, callbacks or [])
        for i in todo:
            key = cells[i].key
            (outcome.ran if results.get(i) == "FINISHED" else outcome.failed).append(key)
    status = "FAILED" if outcome.failed else "FINISHED"
    for arm, run_id in arm_runs.items():
        arm_failed = any(k[0] == arm for k in outcome.failed)
        tracker.end_run(run_id, "FAILED" if arm_failed else "FINISHED")
    tracker.set_tags(root, {f"{K}cells_done": len(outcome.ran) + len(outcome.skipped),
                            f"{K}cells_total": len(cells)})
    tracker.end_run(root, status)
    return outcome


def _run_cells(plan: CellPlan, todo: list[int], tracker: Tracker, exp_id: str, storage: Path,
               verbose: int, extra_callbacks: list) -> dict[int, str]:
    """Run the cells ``todo`` (indices into ``plan.cells``) as one Tuner; ``{index: FINISHED | FAILED}``."""
    import ray
    from ray import tune

    from mcrlab.trials.backends import pick_backend
    from mcrlab.trials.display import LiveDisplay
    from mcrlab.trials.recorder import TrialRecorder
    from mcrlab.trials.resources import max_concurrent

    backend = pick_backend(plan.scaling)
    concurrency = max_concurrent(backend.trial_resources(), ray.cluster_resources(), plan.scaling.max_concurrent,
                                 where="resources")
    recorder = TrialRecorder(plan, uri=tracker.uri, run_folder=str(storage), experiment_id=exp_id)
    display = LiveDisplay(plan.ablation_id, plan, total=len(todo), concurrency=concurrency, noun="cells")
    callbacks = [recorder, display, *extra_callbacks]
    tuner = tune.Tuner(
        backend.trainable(plan), param_space={"cell": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True,
                                    trial_dirname_creator=lambda t: f"cell_{t.config['cell']}_{t.trial_id}"),
        run_config=tune.RunConfig(name=f"{plan.ablation_id}-{int(time.time())}", verbose=verbose,
                                  storage_path=str(storage / "ray_results"), callbacks=callbacks,
                                  # a cell whose process dies restarts from its last checkpoint; a NaN cell
                                  # is not retried (the recorder sees its flag first)
                                  failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=None)))
    from mcrlab.trials import diskfull

    try:
        grid = tuner.fit()
    except Exception as err:
        if diskfull.is_disk_full(err):  # Tune's own state: room for the last writes (run_ablation words it)
            diskfull.trigger("the ablation's Tune experiment", err)
        raise
    if diskfull.triggered():
        raise diskfull.StorageFull(diskfull.triggered())
    out: dict[int, str] = {}
    for result in grid:
        index = int(result.config["cell"])
        out[index] = "FAILED" if result.error is not None else "FINISHED"
    return out


def _tuned_cells(spec: AblationSpec, tracker: Tracker, arm_runs: dict[str, str], uri: str,
                 storage: Path) -> list[Cell]:
    """Equal tuning budget: one sweep per arm (all datasets), then the cells from each arm's best configs.

    An arm's best configs are logged to its arm run (``tuned.json``) and reused on resume, so resumed
    cells keep their config hashes. Arms with nothing to tune (see ``ablation.tuning_spaces``) run as is.
    """
    import tempfile

    from mcrlab.ablate.spec import make_cells
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
                space = parse_space(space_raw, f"{spec.path}: tune (arm {arm.name})")
                print(f"mcrlab ablate: tuning arm {arm.name}: {space.num_samples} trials per dataset "
                      f"({', '.join(space.datasets)})", flush=True)
                result = run_sweep(space, tracking_uri=uri, storage_path=storage)
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

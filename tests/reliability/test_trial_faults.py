"""Faults inside a sweep's trials, on a real local Ray with real Optuna and MLflow (SQLite):

- a trial's worker process SIGKILLed mid-trial: the trial restarts from its last checkpoint and ends
  exactly where an undisturbed run ends, in one MLflow run with one metric point per epoch;
- a trial whose loss turns NaN/inf: it stops at that step, is marked failed (Tune ERROR, MLflow
  FAILED with the reason as a tag, Optuna FAIL), is not retried, and the sweep goes on;
- a Ray Train worker of a data-parallel trial SIGKILLed mid-trial: Ray Train restarts the worker group from
  the last checkpoint (no epoch 1 again) and the trial ends where an undisturbed run ends, in one MLflow run;
- two trials at once writing to the tracking store: no metric point is lost (counted), and no secret
  from the environment ends up in MLflow or in the Tune experiment files.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from ray import tune

from mcrlab.tracking import find_runs
from mcrlab.tune.runner import run_sweep
from mcrlab.tune.space import parse_space, trial_config

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TINY = {"data": {"n_train": 128}, "model": {"hidden": 8, "latent": 4, "depth": 1},
        "method": {"name": "joint"},
        "train": {"epochs": 5, "batch_size": 32, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}}


def _space(base: dict, params: dict, **over) -> dict:
    return {"name": "faults", "datasets": ["synthetic:competition"], "base": base, "metric": "val/acc",
            "mode": "max", "sampler": {"name": "random", "seed": 0}, "num_samples": 1,
            "scaling": {"workers": 1, "cpus_per_worker": 1, "max_concurrent": 1}, "params": params, **over}


def _trial_runs(result) -> list[dict]:
    return find_runs(result.tracking_uri, result.experiment, kind="trial")


def _history_steps(uri: str, run_id: str, key: str) -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, key)]


class _KillOnce(tune.Callback):
    """SIGKILLs the trial's process (its pid is in every Tune result) when it reports ``at``."""

    def __init__(self, at: int):
        self.at, self.killed, self.recovered = at, [], 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if not self.killed and result.get("trial_iteration") == self.at:
            os.kill(result["pid"], signal.SIGKILL)
            self.killed.append(result["pid"])

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.recovered += 1


def test_killed_trial_worker_resumes_from_its_checkpoint(ray_local, tmp_path):
    from mcrlab.engine.fit import fit

    space = parse_space(_space(TINY, {"train.lr": {"type": "categorical", "choices": [0.02]}}))
    killer = _KillOnce(at=2)
    result = run_sweep(space, storage_path=tmp_path / "runs", progress=False, callbacks=[killer])
    assert killer.killed and killer.recovered == 1  # the fault happened and Tune restarted the trial

    study = result.studies["synthetic:competition"]
    assert study.num_trials == 1 and study.num_errors == 0
    final = study.result_grid[0].metrics
    assert final["trial_iteration"] == 5 and final["pid"] != killer.killed[0]
    # the undisturbed run of the same configuration, in this process
    reference = fit(trial_config(space, "synthetic:competition", {"train.lr": 0.02}, 0))
    for key in ("val/acc", "test/acc", "test/f1", "train/loss"):
        assert final[key] == pytest.approx(reference[key], abs=1e-6), key  # exact on CPU, resume included

    runs = _trial_runs(result)
    assert len(runs) == 1 and runs[0]["status"] == "FINISHED"  # one MLflow run, not two
    for key in ("objective", "val/acc", "train/loss"):
        assert _history_steps(result.tracking_uri, runs[0]["run_id"], key) == [1, 2, 3, 4, 5]


NAN_BASE = {"data": {"n_train": 128}, "model": {"hidden": 32, "latent": 16, "depth": 2, "fusion": "mlp"},
            "method": {"name": "joint"},
            "train": {"epochs": 4, "batch_size": 32, "optimizer": "sgd", "probe_epochs": 0, "eval_perms": 1,
                      "device": "cpu"}}
# lr 10 with undamped momentum (momentum 1.0) blows the MLP up within a few epochs: a NaN loss at epoch 3
DIVERGES = {"train.lr": 10.0, "train.momentum": 1.0}
CONVERGES = {"train.lr": 0.01, "train.momentum": 0.0}


def test_nonfinite_trial_fails_alone_is_not_retried_and_the_sweep_goes_on(ray_local, tmp_path):
    space = parse_space(_space(NAN_BASE, {"train.lr": {"type": "categorical", "choices": [0.01, 10.0]},
                                          "train.momentum": {"type": "categorical", "choices": [0.0, 1.0]}},
                               num_samples=3, points_to_evaluate=[DIVERGES, CONVERGES]))
    result = run_sweep(space, storage_path=tmp_path / "runs", progress=False)
    study = result.studies["synthetic:competition"]
    grid = study.result_grid
    assert study.num_trials == 3 and 1 <= study.num_errors < 3  # the sweep went on past the NaN

    by_point = {}
    for r in grid:
        point = {k: r.config[k] for k in ("train.lr", "train.momentum")}
        by_point.setdefault(json.dumps(point, sort_keys=True), []).append(r)
    bad = by_point[json.dumps(DIVERGES, sort_keys=True)][0]
    good = by_point[json.dumps(CONVERGES, sort_keys=True)][0]
    assert good.error is None and math.isfinite(good.metrics["objective"])
    assert bad.error is not None and "NonFiniteLoss" in str(bad.error)
    # stopped at once, and not retried: one failure in its error file, no epoch after the NaN
    error_file = Path(bad.path) / "error.txt"
    assert error_file.read_text().count("Failure #") == 1
    assert bad.metrics.get("nonfinite_loss") == 1.0
    assert study.best_objective == max(r.metrics["objective"] for r in grid if r.error is None)

    runs = {r["tags"]["mcrlab.trial_id"]: r for r in _trial_runs(result)}
    assert len(runs) == 3
    errored = {r.metrics["trial_id"] for r in grid if r.error is not None}
    assert len(errored) == study.num_errors
    for tid, run in runs.items():
        if tid in errored:
            assert run["status"] == "FAILED"
            assert run["tags"]["mcrlab.error_reason"].startswith("NonFiniteLoss: non-finite loss")
            assert max(_history_steps(result.tracking_uri, run["run_id"], "train/loss")) < 4
        else:
            assert run["status"] == "FINISHED" and "mcrlab.error_reason" not in run["tags"]

    # the searcher was told: Optuna has FAIL for every errored trial, COMPLETE only with finite values
    ostudy = optuna.load_study(study_name=study.optuna_study, storage=result.optuna_storage)
    states = [t.state for t in ostudy.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == study.num_errors
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3 - study.num_errors
    failed_params = [t.params for t in ostudy.trials if t.state == optuna.trial.TrialState.FAIL]
    assert DIVERGES in failed_params
    assert all(math.isfinite(t.value) for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE)


SECRETS = {"MLFLOW_TRACKING_PASSWORD": "mlflow-pw-5e1f0c", "AWS_SECRET_ACCESS_KEY": "aws-secret-9d3b77",
           "RAY_AUTH_TOKEN": "ray-token-41aa2c"}


def test_parallel_trials_lose_no_metric_and_leak_no_secret(ray_local, tmp_path, monkeypatch):
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    epochs, n = 3, 4
    base = {**TINY, "train": {**TINY["train"], "epochs": epochs}}
    space = parse_space(_space(base, {"train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}},
                               num_samples=n, scaling={"workers": 1, "cpus_per_worker": 1, "max_concurrent": 2}))
    result = run_sweep(space, storage_path=tmp_path / "runs", progress=False)
    grid = result.studies["synthetic:competition"].result_grid
    assert len(grid) == n and all(r.error is None for r in grid)
    # two at once really happened: some pair of trials overlapped in time
    spans = sorted((r.metrics["timestamp"] - r.metrics["time_total_s"], r.metrics["timestamp"]) for r in grid)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans

    uri = result.tracking_uri
    runs = _trial_runs(result)
    assert len(runs) == n
    keys = ["objective", "train/loss", "val/acc", "val/f1", "epoch"]
    points = 0
    for run in runs:
        for key in keys:
            steps = _history_steps(uri, run["run_id"], key)
            assert steps == list(range(1, epochs + 1)), (run["run_id"], key, steps)
            points += len(steps)
    assert points == n * epochs * len(keys)

    # no secret value anywhere in MLflow (params, tags, metric names, artifacts) or Tune's files
    client = MlflowClient(uri)
    blobs = []
    for run in find_runs(uri, result.experiment):
        blobs.append(json.dumps([run["params"], run["tags"], sorted(run["metrics"])]))
        art_dir = tmp_path / "artifacts" / run["run_id"]
        art_dir.mkdir(parents=True)
        for art in client.list_artifacts(run["run_id"]):
            if not art.is_dir:
                blobs.append(Path(client.download_artifacts(run["run_id"], art.path, str(art_dir))).read_text())
    for path in (tmp_path / "runs" / "sweeps").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".txt", ".yaml", ".csv", ".log", ".pkl"):
            blobs.append(path.read_bytes().decode("utf-8", "replace"))
    text = "\n".join(blobs)
    assert len(blobs) > 3 * n
    for key, value in SECRETS.items():
        assert value not in text, key


def _train_worker_pids() -> list[int]:
    """Pids of this machine's Ray Train worker actors (process title ``ray::RayTrainWorker...``)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = cmdline.read_bytes().split(b"\0")[0]
        except OSError:
            continue  # the process is gone
        if title.startswith(b"ray::RayTrainWorker"):
            pids.append(int(cmdline.parent.name))
    return sorted(pids)


class _KillTrainWorkerOnce(_KillOnce):
    """SIGKILLs one Ray Train worker of a data-parallel trial (not the trial's own process) at ``at``."""

    epochs_after: list[int]

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.killed:
            self.epochs_after.append(result["epoch"])
        elif result.get("trial_iteration") == self.at:
            self.epochs_after = []
            workers = _train_worker_pids()
            assert len(workers) == 2, workers
            os.kill(workers[-1], signal.SIGKILL)
            self.killed.append(workers[-1])


def test_killed_train_worker_of_a_data_parallel_trial_resumes_from_its_checkpoint(ray_local, tmp_path):
    from mcrlab.engine.fit import fit

    epochs = 8
    # big enough that the trial is still running when the kill at epoch 2 lands
    base = {**TINY, "data": {"n_train": 2048}, "train": {**TINY["train"], "epochs": epochs}}
    space = parse_space(_space(base, {"train.lr": {"type": "categorical", "choices": [0.02]}},
                               scaling={"workers": 2, "cpus_per_worker": 1, "max_concurrent": 1}))
    killer = _KillTrainWorkerOnce(at=2)
    result = run_sweep(space, storage_path=tmp_path / "runs", progress=False, callbacks=[killer])
    assert killer.killed  # the fault happened
    assert killer.killed[0] not in _train_worker_pids()
    # resumed, not restarted: after the kill the epochs go on from a checkpoint (the new worker group may
    # redo the epochs after it), never from epoch 1 again, and end at the last one
    assert killer.epochs_after and 1 not in killer.epochs_after and killer.epochs_after[-1] == epochs, \
        killer.epochs_after

    study = result.studies["synthetic:competition"]
    assert study.num_trials == 1 and study.num_errors == 0
    final = study.result_grid[0].metrics
    assert final["epoch"] == epochs
    # Ray Train restarted the worker group from the last checkpoint: the trial ends where an undisturbed
    # single-process run ends (two workers with the same global batch match one: tests/test_ray_train.py)
    reference = fit(trial_config(space, "synthetic:competition", {"train.lr": 0.02}, 0))
    for key in ("val/acc", "test/acc", "train/loss"):
        assert final[key] == pytest.approx(reference[key], rel=1e-4, abs=1e-5), key

    runs = _trial_runs(result)
    assert len(runs) == 1 and runs[0]["status"] == "FINISHED"  # one MLflow run, not two
    steps = _history_steps(result.tracking_uri, runs[0]["run_id"], "epoch")
    assert sorted(set(steps)) == list(range(1, epochs + 1))  # every epoch is there

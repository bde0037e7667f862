"""The MLflow server dies mid-sweep (a real ``mlflow server`` process, SIGKILLed while trials run):
training goes on, the outage is reported on stderr, and once the server is back the queued writes
catch up - every trial ends as one FINISHED run with one metric point per epoch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient
from ray import tune

from mcrlab.ops.cluster import free_port
from mcrlab.tracking import find_runs
from mcrlab.tune.runner import run_sweep
from mcrlab.tune.space import parse_space

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS, TRIALS = 4, 3
SPACE = {"name": "outage", "datasets": ["synthetic:competition"],
         "base": {"data": {"n_train": 128}, "model": {"hidden": 8, "latent": 4, "depth": 1},
                  "method": {"name": "joint"},
                  "train": {"epochs": EPOCHS, "batch_size": 32, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}},
         "sampler": {"name": "random", "seed": 0}, "num_samples": TRIALS,
         "scaling": {"workers": 1, "cpus_per_worker": 1, "max_concurrent": 1},
         "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}}


class _Server:
    """A real MLflow tracking server on 127.0.0.1 that the test can kill and start again."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300.0) -> None:
        mlflow = str(Path(sys.executable).parent / "mlflow")
        with open(self.folder / "server.log", "ab") as log:
            self.proc = subprocess.Popen(
                [mlflow, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
                 "--artifacts-destination", str(self.folder / "artifacts")],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.uri}/health", timeout=2).ok:
                    return
            except requests.RequestException:
                pass
            assert self.proc.poll() is None, (self.folder / "server.log").read_text()[-2000:]
            time.sleep(0.5)
        raise AssertionError("mlflow server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its workers: the group we started
            self.proc.wait()


class _KillServerOnce(tune.Callback):
    """Kills the server at the first trial's epoch 1 and starts it again ``down_s`` later."""

    def __init__(self, server: _Server, down_s: float):
        self.server, self.down_s = server, down_s
        self.killed_at: float | None = None
        self.results_while_down = 0
        self.restarted = threading.Event()

    def __getstate__(self) -> dict:
        return {}  # Tune pickles its callbacks into the experiment state; this one lives in the test only

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.killed_at is None and result.get("trial_iteration") == 1:
            self.server.kill()
            self.killed_at = time.monotonic()

            def restart():
                time.sleep(self.down_s)
                self.server.start()
                self.restarted.set()

            threading.Thread(target=restart, daemon=True).start()
        elif self.killed_at is not None and not self.restarted.is_set():
            self.results_while_down += 1  # training went on while tracking was down


def test_mlflow_server_killed_mid_sweep_training_goes_on_and_tracking_catches_up(ray_local, tmp_path, capfd):
    server = _Server(tmp_path)
    server.start()
    try:
        killer = _KillServerOnce(server, down_s=5.0)  # + its start-up: a minute or more here
        result = run_sweep(parse_space(SPACE), tracking_uri=server.uri, storage_path=tmp_path / "runs",
                           progress=False, callbacks=[killer])
        assert killer.killed_at is not None and killer.restarted.is_set()
        assert killer.results_while_down >= 2, "no trial progress while the server was down"
        err = capfd.readouterr().err
        assert "is unreachable" in err and "training goes on" in err and "caught up" in err
        assert "LOST" not in err

        study = result.studies["synthetic:competition"]
        assert study.num_trials == TRIALS and study.num_errors == 0
        runs = find_runs(server.uri, result.experiment, kind="trial")
        assert len(runs) == TRIALS and all(r["status"] == "FINISHED" for r in runs)
        client = MlflowClient(server.uri)
        for run in runs:
            for key in ("objective", "val/acc", "train/loss"):
                steps = [m.step for m in client.get_metric_history(run["run_id"], key)]
                assert steps == list(range(1, EPOCHS + 1)), (run["run_id"], key, steps)
            assert "train.lr" in run["params"]
        sweep = find_runs(server.uri, result.experiment, kind="sweep")
        assert len(sweep) == 1 and sweep[0]["status"] == "FINISHED"
    finally:
        server.kill()

"""Ablation cells run through the sweeps' trial layer, so they have the sweeps' reliability (real Ray, real
MLflow; the faults are injected exactly as in test_trial_faults.py and test_tracking_faults.py):

- a cell's process SIGKILLed mid-cell: the cell restarts from its last checkpoint and ends where an
  undisturbed run ends, as one FINISHED MLflow cell run with one metric point per epoch;
- the MLflow server killed mid-ablation: the cells go on training, the writes are queued and caught up
  once the server is back, and every cell ends as one FINISHED run with every epoch;
- a cell whose loss turns NaN fails alone with its reason tagged, and the other cells finish.
"""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from mcrlab.ablate.runner import run_ablation
from mcrlab.ablate.spec import parse_spec
from mcrlab.config import RunConfig
from mcrlab.tracking import find_runs
from tests.reliability.test_tracking_faults import _KillServerOnce, _Server
from tests.reliability.test_trial_faults import _KillOnce

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS = 4
SPEC = {
    "name": "faults", "experiment": "abl-faults",
    "base": {"data": {"name": "synthetic:competition", "n_train": 128},
             "model": {"hidden": 8, "latent": 4, "depth": 1}, "method": {"name": "joint"},
             "train": {"epochs": EPOCHS, "batch_size": 32, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}},
    "arms": {"lr_high": {"train.lr": 0.01}},
    "datasets": ["synthetic:competition"], "seeds": [0],
    "resources": {"workers": 1, "cpus": 1, "max_concurrent": 1},
}


def _cells(uri: str) -> list[dict]:
    return find_runs(uri, "abl-faults", kind="cell")


def _steps(uri: str, run_id: str, key: str) -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, key)]


def test_killed_cell_process_resumes_from_its_checkpoint(ray_local, mlflow_uri, tmp_path):
    from mcrlab.engine.fit import fit

    spec = parse_spec(SPEC, "faults.yaml")
    killer = _KillOnce(at=2)
    outcome = run_ablation(spec, mlflow_uri, storage_path=tmp_path, callbacks=[killer])
    assert killer.killed and killer.recovered == 1  # the fault happened and Tune restarted the cell
    assert not outcome.failed and len(outcome.ran) == 2

    runs = _cells(mlflow_uri)
    assert len(runs) == 2 and all(r["status"] == "FINISHED" for r in runs)  # one run per cell, not three
    for run in runs:
        assert _steps(mlflow_uri, run["run_id"], "val/acc") == list(range(1, EPOCHS + 1)), run["name"]
        cell = next(c for c in spec.cells if c.arm == run["tags"]["mcrlab.arm"])
        reference = fit(RunConfig.from_dict(cell.config))  # the undisturbed run, in this process
        for key in ("test/acc", "val/acc", "train/loss"):
            assert run["metrics"][key] == pytest.approx(reference[key], abs=1e-6), (run["name"], key)


def test_mlflow_server_killed_mid_ablation_cells_go_on_and_tracking_catches_up(ray_local, tmp_path, capfd):
    server = _Server(tmp_path)
    server.start()
    try:
        killer = _KillServerOnce(server, down_s=5.0)
        spec = parse_spec(SPEC, "faults.yaml", tracking_uri=server.uri)
        outcome = run_ablation(spec, server.uri, storage_path=tmp_path, callbacks=[killer])
        assert killer.killed_at is not None and killer.restarted.is_set()
        assert killer.results_while_down >= 2, "no cell progress while the server was down"
        err = capfd.readouterr().err
        assert "is unreachable" in err and "caught up" in err and "LOST" not in err
        assert not outcome.failed

        runs = _cells(server.uri)
        assert len(runs) == 2 and all(r["status"] == "FINISHED" for r in runs)
        for run in runs:
            for key in ("val/acc", "train/loss"):
                assert _steps(server.uri, run["run_id"], key) == list(range(1, EPOCHS + 1)), (run["name"], key)
        root = find_runs(server.uri, "abl-faults", kind="ablation")
        assert len(root) == 1 and root[0]["status"] == "FINISHED"
    finally:
        server.kill()


def test_nonfinite_cell_fails_alone_with_its_reason(ray_local, mlflow_uri, tmp_path):
    raw = {**SPEC, "base": {**SPEC["base"], "model": {"hidden": 32, "latent": 16, "depth": 2, "fusion": "mlp"},
                            "train": {**SPEC["base"]["train"], "optimizer": "sgd", "momentum": 0.0, "lr": 0.01}},
           "arms": {"diverges": {"train.lr": 10.0, "train.momentum": 1.0}}}
    outcome = run_ablation(parse_spec(raw, "nan.yaml"), mlflow_uri, storage_path=tmp_path)
    assert [k[0] for k in outcome.failed] == ["diverges"] and [k[0] for k in outcome.ran] == ["base"]
    runs = {r["tags"]["mcrlab.arm"]: r for r in _cells(mlflow_uri)}
    assert runs["base"]["status"] == "FINISHED"
    assert runs["diverges"]["status"] == "FAILED"
    assert runs["diverges"]["tags"]["mcrlab.error_reason"].startswith("NonFiniteLoss")

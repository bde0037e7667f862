"""`mcrlab train --track`, `--from-run` and JSON configs: real training (tiny), real MLflow on SQLite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mcrlab.cli import main
from mcrlab.config import RunConfig
from mcrlab.data import load_dataset
from mcrlab.tracking import git_commit

TINY = ["data.n_train=128", "model.hidden=8", "model.latent=4", "model.depth=1", "method.num_perms=2",
        "train.epochs=2", "train.batch_size=64", "train.probe_epochs=0", "train.eval_perms=1", "train.device=cpu"]


def _only_run(uri: str, experiment: str = "train"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_train_track_records_a_run_with_mlflows_standard_fields(tmp_path, mlflow_uri, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["mcrlab", "train", "--track"])
    assert main(["train", *TINY, "--track", "--tracking-uri", mlflow_uri, "--quiet"]) == 0
    client, run = _only_run(mlflow_uri)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["mcrlab.kind"] == "train" and tags["mlflow.source.name"] == "mcrlab train"
    assert tags["mlflow.user"] and tags["mcrlab.config_hash"]
    if git_commit() != "unknown":
        assert tags["mlflow.source.git.commit"] == git_commit().removesuffix("-dirty")
    assert run.data.params["train.epochs"] == "2" and run.data.params["method.name"] == "mcr"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")]
    assert steps == [1, 2]  # one step per epoch
    assert "test/acc" in run.data.metrics
    local = Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path)))
    cfg = RunConfig.from_dict(json.loads(local.read_text()))
    dataset = load_dataset(cfg.data)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == dataset.name and inp.dataset.digest == dataset.fingerprint()[:36]
    assert tags["mcrlab.dataset_fingerprint"] == dataset.fingerprint()
    features = json.loads(json.loads(inp.dataset.schema)["mlflow_tensorspec"]["features"])
    assert [f["name"] for f in features] == dataset.modalities
    assert [f["tensor-spec"]["shape"][1] for f in features] == dataset.dims
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    assert "tracking run" in capsys.readouterr().err

    # promote it: --from-run takes the run's config as the base, overrides on top
    capsys.readouterr()
    assert main(["train", "--from-run", run.info.run_id, "train.epochs=7", "--tracking-uri", mlflow_uri,
                 "--print-config"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["train"]["epochs"] == 7 and got["model"] == cfg.to_dict()["model"]
    assert got == cfg.replace(["train.epochs=7"]).to_dict()


def test_from_run_mistakes_exit_2(tmp_path, mlflow_uri, capsys):
    assert main(["train", "--from-run", "nope", "--tracking-uri", mlflow_uri]) == 2
    assert "--from-run nope: no MLflow run 'nope'" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {epochs: 1}\n")
    assert main(["train", str(cfg), "--from-run", "x", "--tracking-uri", mlflow_uri]) == 2
    assert "not both" in capsys.readouterr().err


def test_train_accepts_a_best_config_json(tmp_path, capsys):
    best = RunConfig.from_dict({}).replace(["method.lambda_m=0.05", "train.epochs=3"]).to_dict()
    wrapped = tmp_path / "best_config.json"
    wrapped.write_text(json.dumps({"params": {"method.lambda_m": 0.05}, "objective": 0.9, "config": best}))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(best))
    for path in (wrapped, plain):
        assert main(["train", str(path), "train.lr=0.02", "--print-config"]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["method"]["lambda_m"] == 0.05 and got["train"]["epochs"] == 3 and got["train"]["lr"] == 0.02
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**best, "trainn": {}}))
    assert main(["train", str(bad), "--print-config"]) == 2  # a plain config's unknown section names the file
    assert "bad.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--bogus"])

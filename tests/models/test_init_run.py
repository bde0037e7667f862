"""``model.init=<MLflow run id>``: a run starts from exactly the encoder weights (and fitting heads) of a
finished run's checkpoint, found in a real SQLite MLflow store; bad sources are refused before anything
starts (exit 2, one line naming model.init and the reason); the source is recorded as lineage."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

import mcrlab.engine.fit as engine
from mcrlab.cli import main
from mcrlab.config import ConfigError, RunConfig
from mcrlab.data import load_dataset
from mcrlab.engine.init_run import selected_weights
from mcrlab.engine.pretrain import apply_init, init_lineage
from mcrlab.models import build_model
from mcrlab.tracking import Tracker
from mcrlab.trials.init_source import fetch_run_state

TINY = ["data.n_train=96", "model.hidden=8", "model.latent=4", "model.depth=1", "train.epochs=2",
        "train.batch_size=32", "train.probe_epochs=0", "train.eval_perms=1", "train.device=cpu"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch, mlflow_uri):
    monkeypatch.setenv("MCRLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)


def _run(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _train_source(uri: str, *extra: str) -> str:
    """A tracked ensemble run (each encoder and head trained on its own modality); its run id."""
    code, err = _run(["train", *TINY, "method.name=ensemble", *extra, "--track", "--tracking-uri", uri, "--quiet"])
    assert code == 0, err
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("train").experiment_id])
    assert run.info.status == "FINISHED"
    return run.info.run_id


def _artifact_weights(uri: str, run_id: str, artifact: str, tmp: Path) -> dict[str, torch.Tensor]:
    local = MlflowClient(uri).download_artifacts(run_id, artifact, str(tmp))
    state = selected_weights(torch.load(local, weights_only=True))
    assert state is not None
    return state


def test_a_run_starts_from_exactly_the_source_runs_encoders_and_heads(mlflow_uri, tmp_path, monkeypatch):
    source = _train_source(mlflow_uri)
    want = _artifact_weights(mlflow_uri, source, "model/state.pt", tmp_path / "dl")
    # what fit's model holds right after model.init (the weights the first step starts from)
    seen: dict[str, torch.Tensor] = {}

    def spy(model, cfg, data, device, cache_dir=None):
        lineage = apply_init(model, cfg, data, device, cache_dir)
        seen.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return lineage

    monkeypatch.setattr(engine, "apply_init", spy)
    code, err = _run(["train", *TINY, "model.fusion=mlp", f"model.init={source}", "--track", "--tracking-uri",
                      mlflow_uri, "--quiet"])
    assert code == 0, err
    enc_heads = [k for k in want if k.startswith(("encoders.", "heads."))]
    assert enc_heads and any(k.startswith("heads.") for k in enc_heads)
    for k in enc_heads:
        assert torch.equal(seen[k], want[k]), k
    # the fusion head is not taken (another fusion here): it is this run's own initialisation
    cfg = RunConfig.from_dict({}).replace([*TINY, "model.fusion=mlp"])
    data = load_dataset(cfg.data)
    torch.manual_seed(cfg.train.seed)
    scratch = build_model(data.shapes, data.num_classes, cfg.model)
    fusion = [k for k in scratch.state_dict() if k.startswith("fusion.")]
    assert fusion and all(torch.equal(seen[k], scratch.state_dict()[k]) for k in fusion)
    assert not all(torch.equal(seen[k], scratch.state_dict()[k]) for k in enc_heads)
    # lineage: the source run id as a param and as tags of the new run
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("train").experiment_id],
                              filter_string=f"params.`model.init` = '{source}'")
    assert len(runs) == 1
    assert runs[0].data.tags["mcrlab.init"] == "run" and runs[0].data.tags["mcrlab.init_run_id"] == source


def test_a_sweep_trials_best_checkpoint_gives_its_best_epochs_encoders(mlflow_uri, tmp_path):
    """The recorder's artifact (fit's state.pt under best_checkpoint/): the best validation epoch's weights."""
    cfg = RunConfig.from_dict({}).replace([*TINY, "train.epochs=3", "method.name=joint"])
    ckpt = tmp_path / "ckpt"
    engine.fit(cfg, checkpoint_dir=str(ckpt))
    blob = engine.load_checkpoint(ckpt)
    tracker = Tracker(mlflow_uri)
    run_id = tracker.start_run(tracker.experiment("sweep"), "trial-x", tags={})
    tracker.log_artifacts(run_id, ckpt, "best_checkpoint")
    tracker.end_run(run_id)
    fetched = fetch_run_state(run_id, mlflow_uri)
    assert fetched["artifact"] == "best_checkpoint/state.pt"
    best = blob["best_state"]["model"]
    keys = [k for k in best if k.startswith(("encoders.", "heads."))]
    assert set(fetched["state"]) == set(keys)
    assert all(torch.equal(fetched["state"][k], best[k]) for k in keys)
    # and a model built for the same config loads them exactly (apply_init, cached now)
    data = load_dataset(cfg.data)
    model = build_model(data.shapes, data.num_classes, cfg.model)
    lineage = apply_init(model, cfg.replace({"model.init": run_id}), data)
    assert lineage["init/run_id"] == run_id and lineage["init/heads"] == "0,1"
    assert all(torch.equal(model.state_dict()[k], best[k]) for k in keys)


def _one_line_refusal(argv: list[str], reason: str, uri: str) -> None:
    client = MlflowClient(uri)
    before = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    code, err = _run(argv)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "model.init" in lines[0] and reason in lines[0], err
    after = len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
    assert after == before  # nothing started: no tracked run was opened


def test_bad_sources_are_refused_before_anything_starts(mlflow_uri):
    source = _train_source(mlflow_uri)
    tracker = Tracker(mlflow_uri)
    exp = tracker.experiment("other")
    bare = tracker.start_run(exp, "no-artifact", tags={})
    tracker.end_run(bare)
    running = tracker.start_run(exp, "still-running", tags={})
    track = ["--track", "--tracking-uri", mlflow_uri, "--quiet"]
    _one_line_refusal(["train", *TINY, "model.init=" + "ab" * 16, *track], "no MLflow run", mlflow_uri)
    _one_line_refusal(["train", *TINY, f"model.init={bare}", *track], "has no model checkpoint artifact",
                      mlflow_uri)
    _one_line_refusal(["train", *TINY, f"model.init={running}", *track], "RUNNING, not FINISHED", mlflow_uri)
    # another width: same parameter names, other shapes
    _one_line_refusal(["train", *TINY, "model.hidden=16", f"model.init={source}", *track],
                      "does not fit model.encoders[0]", mlflow_uri)
    # another depth: the encoders' parameter names differ
    _one_line_refusal(["train", *TINY, "model.depth=2", f"model.init={source}", *track],
                      "another encoder or depth", mlflow_uri)
    # another data set: another input width
    _one_line_refusal(["train", *TINY, "data.name=synthetic:imbalanced", f"model.init={source}", *track],
                      "shape", mlflow_uri)
    code, err = _run(["train", *TINY, "model.init=not-a-run"])
    assert code == 2 and "model.init" in err and "nor an MLflow run id" in err


def test_no_store_is_created_for_a_missing_one(tmp_path):
    uri = f"sqlite:///{tmp_path / 'absent.db'}"
    with pytest.raises(ConfigError, match="no MLflow store"):
        fetch_run_state("a" * 32, uri)
    assert not (tmp_path / "absent.db").exists()


def test_lineage_of_a_run_id():
    rid = "0123456789abcdef0123456789abcdef"
    cfg = RunConfig.from_dict({"model": {"init": rid}})
    assert init_lineage(cfg, "fp") == {"init": "run", "init_run_id": rid}
    assert init_lineage(RunConfig.from_dict({}), "fp") == {}
    assert set(init_lineage(RunConfig.from_dict({"model": {"init": "unimodal"}}), "fp")) == {"init", "init_key"}


@pytest.mark.parametrize("command", ["sweep", "ablate"])
def test_sweeps_and_ablations_refuse_a_bad_source_before_ray(command, mlflow_uri, tmp_path, monkeypatch):
    import sys

    import yaml

    monkeypatch.chdir(tmp_path)
    model = {"hidden": 8, "latent": 4, "depth": 1, "init": "cd" * 16}
    train = {"epochs": 1, "batch_size": 32, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}
    data = "synthetic:competition"
    if command == "sweep":
        doc = {"name": "initrun", "datasets": [data], "base": {"model": model, "train": train}, "metric": "val/acc",
               "mode": "max", "num_samples": 2, "scheduler": "none",
               "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}
    else:
        doc = {"name": "initrun", "experiment": "initrun", "base": {"model": model, "train": train},
               "arms": {"fast": {"train.lr": 0.01}}, "datasets": [data], "seeds": [0], "metric": "test/acc"}
    path = tmp_path / f"{command}.yaml"
    path.write_text(yaml.safe_dump(doc))
    Tracker(mlflow_uri).experiment("warm-up")  # the store exists: the run is what is missing
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    code, err = _run([command, str(path), "--tracking-uri", mlflow_uri])
    assert code == 2, err
    errors = [ln for ln in err.splitlines() if ln.startswith("mcrlab: error:")]
    assert len(errors) == 1 and "model.init" in errors[0] and "no MLflow run" in errors[0], err
    assert path.name in errors[0]
    if not ray_before:
        assert not ("ray" in sys.modules and sys.modules["ray"].is_initialized())


def test_fit_without_the_cached_weights_says_where_they_should_be(tmp_path):
    """A worker that cannot see the driver's cache fails at once, naming model.init and the folder."""
    cfg = RunConfig.from_dict({}).replace([*TINY, "model.init=" + "ef" * 16])
    data = load_dataset(cfg.data)
    model = build_model(data.shapes, data.num_classes, cfg.model)
    with pytest.raises(ConfigError, match=r"model.init: the weights of MLflow run 'efef.*' are not in .*MCRLAB_CACHE_DIR"):
        apply_init(model, cfg, data, cache_dir=tmp_path / "empty")

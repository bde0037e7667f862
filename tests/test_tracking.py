"""MLflow tracking: default store location, fail-fast checks, nested runs, idempotent keys, queries."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mcrlab.config import ConfigError
from mcrlab.tracking import (
    Tracker,
    artifact_location,
    check_tracking,
    find_runs,
    lineage_tags,
    log_nested_run,
    resolve_tracking_uri,
)


def test_default_store_is_absolute_sqlite_in_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    uri = resolve_tracking_uri()
    assert uri == f"sqlite:///{tmp_path.resolve() / 'runs' / 'mlflow.db'}"
    assert Path(uri[len("sqlite:///"):]).is_absolute()
    assert artifact_location(uri) == (tmp_path.resolve() / "runs" / "mlartifacts").as_uri()


def test_explicit_uri_beats_env_and_relative_sqlite_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert resolve_tracking_uri() == "http://example.invalid:5000"
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///rel/m.db") == f"sqlite:///{tmp_path.resolve() / 'rel' / 'm.db'}"


def test_unreachable_server_fails_with_a_clear_message():
    """The call returns (a ConfigError naming the option and the address), it does not retry for minutes.
    How long it takes is a benchmark figure (jobs/bench_cli.py: ``unreachable tracking server``); here the
    thread join only keeps a hang from stalling the suite (a generous bound, not a speed check)."""
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            check_tracking("http://127.0.0.1:9", timeout=2.0)  # port 9 (discard): nothing listens
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome.append(err)

    worker = threading.Thread(target=call, daemon=True)
    worker.start()
    worker.join(timeout=300)
    assert outcome, "check_tracking never returned for a closed port"
    err = outcome[0]
    assert isinstance(err, ConfigError), err
    assert "unreachable" in str(err) and "http://127.0.0.1:9" in str(err) and "--tracking-uri" in str(err)
    assert len(str(err).splitlines()) == 1


def test_file_store_is_refused():
    with pytest.raises(ConfigError, match="file store"):
        check_tracking("./mlruns")


def test_nested_runs_lineage_and_queries(mlflow_uri):
    parent = log_nested_run(mlflow_uri, "abl", "ablation", kind="ablation", tags={"sweep_id": "s1"},
                            key={"ablation_id": "a1"}, params={"method.name": "mcr"})
    arm = log_nested_run(mlflow_uri, "abl", "arm-no-game", kind="arm", parent_run_id=parent,
                         tags={"arm": "no_game"}, key={"arm_id": "a1/no_game"},
                         metrics={"test/acc": 0.7, "bad": float("nan"), "label": "x"},
                         artifacts={"config.json": {"train": {"lr": 0.01}}})
    again = log_nested_run(mlflow_uri, "abl", "arm-no-game", kind="arm", parent_run_id=parent,
                           key={"arm_id": "a1/no_game"})
    assert again == arm  # the key reopens, no duplicate

    arms = find_runs(mlflow_uri, "abl", kind="arm")
    assert [r["run_id"] for r in arms] == [arm]
    run = arms[0]
    assert run["tags"]["mlflow.parentRunId"] == parent
    assert run["tags"]["mcrlab.arm"] == "no_game" and run["tags"]["mcrlab.kind"] == "arm"
    assert "mcrlab.git_commit" in run["tags"]
    assert run["metrics"] == {"test/acc": pytest.approx(0.7)}  # NaN and strings dropped
    assert [r["run_id"] for r in find_runs(mlflow_uri, "abl", parent_run_id=parent)] == [arm]
    assert find_runs(mlflow_uri, "abl", tags={"arm": "other"}) == []
    assert find_runs(mlflow_uri, "missing-experiment") == []
    assert {r["run_id"] for r in find_runs(mlflow_uri)} == {parent, arm}  # every experiment


def test_tracker_steps_and_artifacts(mlflow_uri, tmp_path):
    tracker = Tracker(mlflow_uri, tmp_path)
    exp = tracker.experiment("e")
    assert tracker.experiment("e") == exp
    run = tracker.start_run(exp, "r", tags=lineage_tags("trial", trial_id="t1"), key_tags=("mcrlab.trial_id",))
    assert tracker.last_step(run, "objective") == -1
    for step in (1, 2, 3):
        tracker.log_metrics(run, {"objective": step / 10, "val/acc": 0.5}, step=step)
    assert tracker.last_step(run, "objective") == 3
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "state.pt").write_bytes(b"123")
    tracker.log_artifacts(run, tmp_path / "ck", "best_checkpoint")
    tracker.end_run(run)
    files = [a.path for a in tracker.client.list_artifacts(run, "best_checkpoint")]
    assert files == ["best_checkpoint/state.pt"]
    # the artifact store sits next to the SQLite file, not in the working directory
    assert str(tmp_path) in tracker.client.get_run(run).info.artifact_uri


def test_new_sqlite_store_is_created_atomically(tmp_path):
    """A store appears only complete: no half-migrated file if the creator dies mid-migration."""
    from mcrlab.tracking import open_client

    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    client = open_client(f"sqlite:///{db}")
    assert db.exists() and [p.name for p in db.parent.iterdir()] == ["mlflow.db"]  # no temp file left
    exp = client.create_experiment("e")
    again = open_client(f"sqlite:///{db}")  # an existing store is opened as it is
    assert again.get_experiment(exp).name == "e"


def test_log_summary_writes_each_value_once(mlflow_uri, tmp_path):
    """End-of-study values logged again by a resumed sweep add no duplicate (key, step) point; a value
    that changed (a study topped up with a better trial) gets the next step."""
    tracker = Tracker(mlflow_uri, tmp_path)
    exp = tracker.experiment("summary")
    run = tracker.start_run(exp, "study", tags={"mcrlab.kind": "study"})
    tracker.log_summary(run, {"best_objective": 0.5, "trials": 2, "note": "not a number"})
    tracker.log_summary(run, {"best_objective": 0.5, "trials": 2})  # the resume's summary: nothing new
    tracker.log_summary(run, {"best_objective": 0.75, "trials": 2})
    hist = tracker.client.get_metric_history(run, "best_objective")
    assert [(m.step, m.value) for m in sorted(hist, key=lambda m: m.step)] == [(0, 0.5), (1, 0.75)]
    assert [m.step for m in tracker.client.get_metric_history(run, "trials")] == [0]
    assert "note" not in tracker.client.get_run(run).data.metrics

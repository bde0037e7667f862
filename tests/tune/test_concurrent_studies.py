"""Dataset studies of one sweep running at the same time (``scaling.concurrent_studies``).

- how many studies run at once, and how many trials each, from the cluster's resources (by hand);
- the rich live display of several studies at once: one panel, one part per study, named by its dataset;
- a real sweep of two datasets, two studies at once on the 2-CPU local Ray: the studies overlap (a trial of
  each starts before the other study's last trial ends), and each study's Optuna study, MLflow runs and
  summary are those of a sequential sweep;
- Ctrl+C in the middle of such a sweep, then ``--resume``: every study completes, and no trial that had
  finished is trained again;
- bad values of the knob and the flag: one line, exit 2, nothing started.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from types import SimpleNamespace

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from mcrlab.cli import main
from mcrlab.config import ConfigError
from mcrlab.tracking import find_runs
from mcrlab.tune.runner import check_concurrent_studies, plan_concurrency, run_sweep
from mcrlab.tune.space import parse_space

DATASETS = ["synthetic:competition", "synthetic:balanced"]
EPOCHS = 2
BASE = {"data": {"n_train": 128}, "model": {"hidden": 8, "latent": 4, "depth": 1},
        "method": {"name": "joint"},
        "train": {"epochs": EPOCHS, "batch_size": 64, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}}


def _space(**scaling):
    return {"name": "conc", "datasets": DATASETS, "base": BASE, "metric": "val/acc", "mode": "max",
            "sampler": {"name": "random", "seed": 0}, "num_samples": 2,
            "scaling": {"workers": 1, "cpus_per_worker": 1, **scaling},
            "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}}


def test_studies_at_once_and_trials_per_study_by_hand():
    cpu1, cluster8 = {"CPU": 1.0}, {"CPU": 8.0}
    # 1: one study at a time, with every trial that fits (or max_concurrent), as before the knob
    assert plan_concurrency(1, 3, cpu1, cluster8) == (1, 8)
    assert plan_concurrency(1, 3, cpu1, cluster8, cap=3) == (1, 3)
    # N: the cluster is shared, each study gets its part of the 8 trials that fit
    assert plan_concurrency(2, 3, cpu1, cluster8) == (2, 4)
    assert plan_concurrency(2, 3, cpu1, cluster8, cap=3) == (2, 3)
    assert plan_concurrency(3, 3, cpu1, cluster8) == (3, 2)
    assert plan_concurrency(5, 3, cpu1, cluster8) == (3, 2)  # never more studies than datasets
    assert plan_concurrency(4, 8, {"CPU": 4.0}, cluster8) == (2, 1)  # nor than trials that fit
    # auto: as many as fit with each study's own need (max_concurrent, or its trials if fewer)
    assert plan_concurrency("auto", 3, cpu1, cluster8) == (1, 8)  # a study alone fills the cluster
    assert plan_concurrency("auto", 3, cpu1, cluster8, cap=4) == (2, 4)
    assert plan_concurrency("auto", 3, cpu1, cluster8, num_samples=2) == (3, 2)
    assert plan_concurrency("auto", 2, {"CPU": 1.0, "GPU": 1.0}, {"CPU": 16.0, "GPU": 2.0}, cap=1) == (2, 1)
    with pytest.raises(ConfigError, match="a trial needs 4 CPUs"):
        plan_concurrency(2, 2, {"CPU": 4.0}, {"CPU": 2.0})


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", "1001", "", True])
def test_bad_concurrent_studies_flag_is_one_line(bad):
    with pytest.raises(ConfigError) as err:
        check_concurrent_studies(bad)
    assert str(err.value).startswith("--concurrent-studies: expected an integer from 1 to 1000 or auto")
    assert check_concurrent_studies("auto") == "auto" and check_concurrent_studies("3") == 3


def test_bad_values_exit_2_and_start_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_space(concurrent_studies="all")))
    assert main(["sweep", str(bad), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{bad}: scaling.concurrent_studies: expected an integer >= 1 or auto" in err
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_space()))
    assert main(["sweep", str(good), "--concurrent-studies", "0", "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--concurrent-studies: expected an integer" in err
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.fixture
def armed():
    """The full-disk watch as a sweep sets it around its studies (no full disk recorded by an earlier test)."""
    from mcrlab.trials import diskfull

    diskfull.arm()
    yield
    diskfull.disarm()


def test_a_failed_study_lets_the_running_ones_finish_and_starts_no_other(armed):
    from mcrlab.tune.runner import StudyFailed, _run_concurrently

    b_running, log = threading.Event(), []

    def run_one(dataset):
        log.append(f"start {dataset}")
        if dataset == "a":
            assert b_running.wait(30)  # fails while b runs
            raise ValueError("no trial finished")
        b_running.set()
        time.sleep(0.2)
        log.append(f"end {dataset}")

    with pytest.raises(StudyFailed) as err:
        _run_concurrently(("a", "b", "c"), run_one, 2, sweep_id="s", not_started=log.append)
    assert str(err.value).startswith("study a failed (ValueError: no trial finished)")
    assert sorted(log) == ["end b", "start a", "start b"]  # b finished, c never started


def test_no_study_starts_after_the_time_budget(armed):
    from mcrlab.tune import budget
    from mcrlab.tune.runner import _run_concurrently

    started, skipped = [], []
    budget.set_deadline("s-budget", 1e-9)  # already over
    try:
        _run_concurrently(("a", "b"), started.append, 2, sweep_id="s-budget", not_started=skipped.append)
    finally:
        budget.set_deadline("s-budget", None)
    assert started == [] and skipped == ["a", "b"]


def single_process_trial(config):  # the name trainables had before each study had its own
    from ray import tune

    tune.report({"objective": 1.0})


@pytest.mark.ray
def test_an_experiment_of_an_older_mcrlab_is_restored_on_the_main_thread_only(ray_local, tmp_path):
    from ray import tune

    from mcrlab.tune.runner import _restore

    tune.Tuner(single_process_trial, run_config=tune.RunConfig(name="old", storage_path=str(tmp_path),
                                                               verbose=0)).fit()
    tune.register_trainable("mcrlab-old", lambda config: None)
    backend = SimpleNamespace(trainable=lambda plan: single_process_trial)
    assert _restore(tmp_path / "old", "mcrlab-old", backend, None) is not None
    got = []
    thread = threading.Thread(target=lambda: got.append(pytest.raises(ConfigError, _restore, tmp_path / "old",
                                                                      "mcrlab-old", backend, None)))
    thread.start()
    thread.join()
    assert "--concurrent-studies 1" in str(got[0].value)


class _Trial(SimpleNamespace):
    pass


def test_rich_display_of_concurrent_studies_is_one_panel_with_a_part_per_study():
    from rich.console import Console

    from mcrlab.trials import display as display_mod

    plan = SimpleNamespace(metric="val/acc", mode="max", label=lambda tid, config: f"trial {tid}",
                           max_iterations=lambda config: 2)
    leader, follower = os.openpty()  # a real terminal: rich draws its live panel
    try:
        with open(follower, "w") as tty:
            a = display_mod.LiveDisplay("synthetic:competition", plan, stream=tty, total=2, rich=True)
            b = display_mod.LiveDisplay("synthetic:balanced", plan, stream=tty, total=2, rich=True)
            ta = _Trial(trial_id="a1", status="RUNNING", config={"train.lr": 0.01}, last_result={})
            tb = _Trial(trial_id="b1", status="RUNNING", config={"train.lr": 0.02}, last_result={})
            a.on_trial_start(0, [ta], ta)
            b.on_trial_start(0, [tb], tb)
            panel = display_mod._PANEL
            live = panel._live
            assert live is not None and len(panel._parts) == 2

            def shown() -> str:
                out = io.StringIO()
                Console(file=out, width=200).print(live.renderable)
                return out.getvalue()

            text = shown()
            assert "[synthetic:competition] trials 0/2 done, 1 running" in text
            assert "[synthetic:balanced] trials 0/2 done, 1 running" in text
            ta.status, ta.last_result = "TERMINATED", {"objective": 0.5, "trial_iteration": 2}
            a.on_trial_complete(1, [ta], ta)
            a.on_experiment_end([ta])
            assert panel._live is live and len(panel._parts) == 1  # the other study is still shown
            assert "synthetic:competition" not in shown() and "[synthetic:balanced]" in shown()
            b.on_experiment_end([tb])
            assert panel._live is None  # the last study ended: the panel is gone
    finally:
        os.close(leader)


# ---- real sweeps --------------------------------------------------------------------------------------
def _study_runs(result) -> dict[str, dict]:
    """dataset -> {"study": its MLflow study run, "trials": its trial runs (not stale)}."""
    uri = result.tracking_uri
    sweep = find_runs(uri, result.experiment, kind="sweep")
    assert len(sweep) == 1
    out = {}
    for dataset in DATASETS:
        study = find_runs(uri, result.experiment, kind="study", tags={"study": dataset})
        assert len(study) == 1 and study[0]["tags"]["mlflow.parentRunId"] == sweep[0]["run_id"]
        trials = [r for r in find_runs(uri, result.experiment, kind="trial", tags={"study": dataset})
                  if r["tags"].get("mcrlab.stale") != "true"]
        assert all(r["tags"]["mlflow.parentRunId"] == study[0]["run_id"] for r in trials)
        out[dataset] = {"study": study[0], "trials": trials}
    return out


def _check_studies(result) -> dict[str, dict]:
    """Each study as a sequential sweep leaves it: its trials FINISHED with one point per epoch, its Optuna
    study COMPLETE, its study run FINISHED with its best configuration, its summary and sweep.json entry."""
    assert list(result.studies) == DATASETS  # the summary in file order
    runs = _study_runs(result)
    client = MlflowClient(result.tracking_uri)
    meta = json.loads((result.sweep_dir / "sweep.json").read_text())
    for dataset in DATASETS:
        study, got = result.studies[dataset], runs[dataset]
        assert study.num_trials == 2 and study.num_errors == 0 and study.best_trial_id
        assert len(got["trials"]) == 2 and all(r["status"] == "FINISHED" for r in got["trials"])
        for r in got["trials"]:
            assert r["tags"]["mcrlab.sweep_id"] == result.sweep_id and r["tags"]["mcrlab.study"] == dataset
            steps = [m.step for m in client.get_metric_history(r["run_id"], "objective")]
            assert steps == list(range(1, EPOCHS + 1))  # trained once: no epoch logged twice
        assert got["study"]["status"] == "FINISHED" and got["study"]["run_id"] == study.run_id
        assert got["study"]["tags"]["mcrlab.best_trial_id"] == study.best_trial_id
        assert {a.path for a in client.list_artifacts(study.run_id)} >= {"best_config.json",
                                                                         "param_importances.json"}
        ostudy = optuna.load_study(study_name=study.optuna_study, storage=result.optuna_storage)
        assert len(ostudy.trials) == 2
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ostudy.trials)
        assert meta["studies"][dataset]["done"] is True
        assert meta["studies"][dataset]["best_trial"] == study.best_trial_id
    return runs


@pytest.mark.ray
@pytest.mark.slow
def test_two_studies_run_at_once_and_each_is_recorded_as_alone(ray_local, tmp_path):
    result = run_sweep(parse_space(_space(concurrent_studies=2)), storage_path=tmp_path / "runs", progress=False)
    runs = _check_studies(result)
    # they overlapped: each study had a trial start before the other study's last trial ended (a sequential
    # sweep starts the second study's first trial after the first study's last one has ended)
    client = MlflowClient(result.tracking_uri)
    a, b = ([client.get_run(r["run_id"]).info for r in runs[d]["trials"]] for d in DATASETS)
    assert min(r.start_time for r in b) < max(r.end_time for r in a)
    assert min(r.start_time for r in a) < max(r.end_time for r in b)
    # each study ran its share of the 2 CPUs: one trial at a time; the sweep run and summary say 2 at once
    assert all(r["study"]["params"]["max_concurrent"] == "1" for r in runs.values())
    assert client.get_run(result.run_id).data.tags["mcrlab.concurrent_studies"] == "2"
    from mcrlab.cli.sweep import print_summary

    out = io.StringIO()
    print_summary(result, out=out)
    text = out.getvalue()
    assert f"sweep {result.sweep_id}: done (2 studies at a time)" in text
    assert all(f"  {d}: best objective {result.studies[d].best_objective:.4f}" in text for d in DATASETS)


class _CtrlCAfterFirstTrial(Callback):
    """Sends SIGINT to this driver once the first trial of any study has finished (as Ctrl+C would)."""

    sent = threading.Event()

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not self.sent.is_set():
            self.sent.set()
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.ray
@pytest.mark.slow
def test_ctrl_c_stops_every_study_and_resume_runs_only_what_is_missing(ray_local, tmp_path):
    space = parse_space(_space(concurrent_studies=2))
    runs = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(space, storage_path=runs, progress=False, callbacks=[_CtrlCAfterFirstTrial()])
    assert _CtrlCAfterFirstTrial.sent.is_set()
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    before = {r["run_id"]: r for r in find_runs(uri, kind="trial") if r["status"] == "FINISHED"}
    assert 1 <= len(before) < 4, "the sweep was not stopped in the middle"
    # every study stopped (none can have finished: 2 trials one after the other each); none was summarised
    meta = json.loads(next(runs.glob("sweeps/*/sweep.json")).read_text())
    assert meta["studies"] == {}
    assert all(r["status"] == "RUNNING" for r in find_runs(uri, kind="study"))

    result = run_sweep(space, storage_path=runs, resume=True, progress=False)
    after = _check_studies(result)  # one point per epoch: no trial trained twice, none left out
    finished_now = {r["run_id"] for d in DATASETS for r in after[d]["trials"]}
    assert set(before) <= finished_now  # the trials that had finished are the same runs, not re-run
    assert sum(s.num_trials for s in result.studies.values()) == 4

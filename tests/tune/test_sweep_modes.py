"""Multi-objective, grid and time-budget sweeps end to end: real local Ray, real Optuna, MLflow on SQLite, tiny trials.

- a two-objective sweep through the CLI: Optuna's study has both directions and names; the Pareto front in
  the summary, the study result, pareto_front.csv and the MLflow run's report is exactly the non-dominated
  set of the trials' values as MLflow recorded them (a brute-force filter);
- a grid sweep visits every point of the grid once;
- a time budget that ends while a trial is running: the trial is stopped and recorded (Optuna PRUNED,
  MLflow KILLED, both marked), nothing else starts, the summary says the budget ended the sweep; a resume
  without a budget runs the stopped trial's point again and finishes the study.
"""

from __future__ import annotations

import csv
import io
import itertools

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from mcrlab.cli import main
from mcrlab.cli.sweep import print_summary
from mcrlab.tracking import find_runs
from mcrlab.tune import budget
from mcrlab.tune.runner import run_sweep
from mcrlab.tune.space import parse_space

from .test_multi_objective import brute_force_front

BASE = {"data": {"n_train": 128}, "model": {"hidden": 8, "latent": 4, "depth": 1},
        "method": {"name": "mcr", "num_perms": 2},
        "train": {"epochs": 2, "batch_size": 64, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}}
LR = {"train.lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
      "method.lambda_m": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}


def _raw(**over):
    return {"name": "modes", "datasets": ["synthetic:competition"], "base": BASE, "metric": "val/acc",
            "mode": "max", "sampler": {"name": "random", "seed": 2}, "num_samples": 4,
            "scaling": {"workers": 1, "cpus_per_worker": 1, "max_concurrent": 2}, "params": LR, **over}


@pytest.mark.ray
@pytest.mark.slow
def test_two_objective_sweep_pareto_front(ray_local, tmp_path, mlflow_uri, capsys):
    path = tmp_path / "mo.yaml"
    path.write_text(yaml.safe_dump(_raw(metric=["val/acc", "val/head/m1"], mode=["max", "min"],
                                        sampler={"name": "nsga2", "seed": 0, "population_size": 2})))
    runs_dir = tmp_path / "runs"
    assert main(["sweep", str(path), "--storage", str(runs_dir), "--tracking-uri", mlflow_uri]) == 0
    out = capsys.readouterr().out
    sweep_dir = next((runs_dir / "sweeps").iterdir())
    storage = f"sqlite:///{sweep_dir / 'optuna.db'}"
    (name,) = optuna.study.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["val/acc", "val/head/m1"]

    # the oracle: every trial's two values as its MLflow run recorded them (final step), filtered by hand
    trials = find_runs(mlflow_uri, f"sweep/{sweep_dir.name}", kind="trial")
    assert len(trials) == 4 and all(r["status"] == "FINISHED" for r in trials)
    values = {r["run_id"]: (r["metrics"]["objective/0"], r["metrics"]["objective/1"]) for r in trials}
    for r in trials:  # one seed: each objective is its metric at the last report
        assert values[r["run_id"]] == (r["metrics"]["val/acc"], r["metrics"]["val/head/m1"])
        assert r["metrics"]["objective"] == r["metrics"]["objective/0"]
    front = brute_force_front(values, (+1, -1))
    told = {t.user_attrs["mlflow_run_id"]: tuple(t.values) for t in study.trials}
    assert told.keys() == values.keys()  # Optuna was told what MLflow holds
    assert all(told[k] == pytest.approx(values[k]) for k in values)
    assert {t.user_attrs["mlflow_run_id"] for t in study.best_trials} == front

    # the summary's table names every front run with both values; "best" is the first objective's
    assert "Pareto front" in out and "val/head/m1" in out
    table = out.split("Pareto front")[1]
    assert all(run_id in table for run_id in front) and not any(r in table for r in set(values) - front)
    best = max(trials, key=lambda r: r["metrics"]["objective/0"])
    assert "best val/acc (first of 2 objectives)" in out and f"best run: {best['run_id']}" in out

    # the report: plot and table on disk and on the sweep's MLflow run
    slug = name.split("/")[-1]
    report = sweep_dir / "report" / slug
    assert (report / "pareto_front.png").stat().st_size > 1000
    with (report / "pareto_front.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["mlflow_run_id"] for r in rows} == front
    for r in rows:
        assert (float(r["val/acc"]), float(r["val/head/m1"])) == pytest.approx(values[r["mlflow_run_id"]])
    sweep_run = next(iter(find_runs(mlflow_uri, f"sweep/{sweep_dir.name}", kind="sweep")))["run_id"]
    logged = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(sweep_run, f"report/{slug}")}
    assert {f"report/{slug}/pareto_front.png", f"report/{slug}/pareto_front.csv"} <= logged
    # importances per objective, and `mcrlab report` prints the front again
    assert main(["report", str(sweep_dir), "--no-log", "--out", str(tmp_path / "r2")]) == 0
    again = capsys.readouterr().out
    assert "Pareto front" in again and all(run_id in again for run_id in front)


@pytest.mark.ray
@pytest.mark.slow
def test_grid_sweep_visits_exactly_the_grid(ray_local, tmp_path):
    raw = _raw(sampler={"name": "grid", "seed": 0}, base={**BASE, "train": {**BASE["train"], "epochs": 1}},
               params={"train.lr": {"type": "float", "grid": [1e-3, 1e-2]},
                       "method.strategy": {"type": "categorical", "choices": ["greedy", "independent"]},
                       "method.lambda_m": {"fixed": 0.01}})
    del raw["num_samples"]  # the whole grid
    space = parse_space(raw, "grid.yaml")
    assert space.num_samples == 4
    result = run_sweep(space, storage_path=tmp_path / "runs", progress=False)
    study = result.studies["synthetic:competition"]
    visited = [(r.config["train.lr"], r.config["method.strategy"]) for r in study.result_grid]
    assert sorted(visited) == sorted(itertools.product([1e-3, 1e-2], ["greedy", "independent"]))
    assert all(r.config["method.lambda_m"] == 0.01 for r in study.result_grid)
    ostudy = optuna.load_study(study_name=study.optuna_study, storage=result.optuna_storage)
    assert [t.state for t in ostudy.trials] == [optuna.trial.TrialState.COMPLETE] * 4


_EXPIRED: list[bool] = []  # once per test process: a resumed (unpickled) copy must not expire the budget again


class EndBudgetWhileTrialRuns(Callback):
    """Fast-forwards the clock instead of sleeping: once one trial has finished and the next one has reported
    an epoch, the running sweep's deadline is set to now (as if its budget had just run out)."""

    def __init__(self) -> None:
        self.completed = 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.completed += 1

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.completed >= 1 and not _EXPIRED:
            _EXPIRED.append(True)
            for sweep_id in list(budget._DEADLINES):
                budget._DEADLINES[sweep_id] = 0.0


def _budget_sweep(tmp_path, concurrent_studies: int):
    """Two studies of 3-epoch trials with a 1 h budget that ends (EndBudgetWhileTrialRuns) once a trial has
    finished and the next one has reported: (space, result)."""
    raw = _raw(scaling={"workers": 1, "cpus_per_worker": 1, "max_concurrent": 1,
                        "concurrent_studies": concurrent_studies},
               base={**BASE, "train": {**BASE["train"], "epochs": 3}}, datasets=["synthetic:competition",
                                                                               "synthetic:imbalanced"])
    space = parse_space(raw, "budget.yaml")
    _EXPIRED.clear()
    return space, run_sweep(space, storage_path=tmp_path / "runs", progress=False, time_budget_s=3600,
                            callbacks=[EndBudgetWhileTrialRuns()])


@pytest.mark.ray
@pytest.mark.slow
def test_time_budget_stops_the_sweep_and_resume_finishes_it(ray_local, tmp_path):
    space, result = _budget_sweep(tmp_path, concurrent_studies=1)
    assert result.budget_ended and result.not_started == ["synthetic:imbalanced"]
    study = result.studies["synthetic:competition"]
    assert study.budget_ended and study.budget_stopped == 1 and study.num_trials == 2  # no third trial began
    ostudy = optuna.load_study(study_name=study.optuna_study, storage=result.optuna_storage)
    states = {t.number: t.state for t in ostudy.trials}
    (stopped,) = [t for t in ostudy.trials if t.user_attrs.get("mcrlab.stopped_by") == "time_budget"]
    assert stopped.state == optuna.trial.TrialState.PRUNED and list(states.values()).count(
        optuna.trial.TrialState.COMPLETE) == 1
    runs = find_runs(result.tracking_uri, result.experiment, kind="trial")
    by_status = {r["tags"]["mcrlab.trial_id"]: r for r in runs}
    killed = by_status[stopped.user_attrs["tune_trial_id"]]
    assert killed["status"] == "KILLED" and killed["tags"]["mcrlab.stopped_by"] == "time_budget"
    assert study.best_trial_id != stopped.user_attrs["tune_trial_id"]  # a partial trial is never the best
    out = io.StringIO()
    print_summary(result, out=out)
    text = out.getvalue()
    assert "time budget (1h) ended the sweep" in text and "1 stopped by the time budget" in text
    assert "synthetic:imbalanced: not started" in text and f"--resume {result.sweep_id}" in text

    # resume without a budget: the stopped point runs again from the start, then new samples up to 4
    again = run_sweep(space, storage_path=tmp_path / "runs", progress=False, resume=result.sweep_id)
    assert not again.budget_ended and set(again.studies) == {"synthetic:competition", "synthetic:imbalanced"}
    ostudy = optuna.load_study(study_name=study.optuna_study, storage=result.optuna_storage)
    complete = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    assert any(t.params == stopped.params for t in complete)  # the stopped trial's point, re-run
    for dataset in space.datasets:
        runs = find_runs(again.tracking_uri, again.experiment, kind="trial", tags={"study": dataset})
        assert sum(r["status"] == "FINISHED" for r in runs) == 4


@pytest.mark.ray
@pytest.mark.slow
def test_time_budget_stops_concurrent_studies_and_resume_finishes_them(ray_local, tmp_path):
    """Two studies at once (scaling.concurrent_studies: 2): the budget ends both while they run; every trial it
    stopped is PRUNED and marked, none is left RUNNING; a resume without a budget finishes both studies."""
    space, result = _budget_sweep(tmp_path, concurrent_studies=2)
    assert result.budget_ended and result.not_started == [] and set(result.studies) == set(space.datasets)
    stopped_total = 0
    for dataset, study in result.studies.items():
        assert study.budget_ended and study.num_trials < 4, dataset
        ostudy = optuna.load_study(study_name=study.optuna_study, storage=result.optuna_storage)
        assert not [t for t in ostudy.trials if t.state == optuna.trial.TrialState.RUNNING], dataset
        stopped = [t for t in ostudy.trials if t.user_attrs.get("mcrlab.stopped_by") == "time_budget"]
        assert all(t.state == optuna.trial.TrialState.PRUNED for t in stopped)
        stopped_total += len(stopped)
        runs = find_runs(result.tracking_uri, result.experiment, kind="trial", tags={"study": dataset})
        assert not [r for r in runs if r["status"] == "RUNNING"], dataset
    assert stopped_total >= 1  # the budget ran out while a trial was running

    again = run_sweep(space, storage_path=tmp_path / "runs", progress=False, resume=result.sweep_id)
    assert not again.budget_ended
    for dataset, study in again.studies.items():
        ostudy = optuna.load_study(study_name=study.optuna_study, storage=again.optuna_storage)
        assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in ostudy.trials) == 4, dataset
        runs = find_runs(again.tracking_uri, again.experiment, kind="trial", tags={"study": dataset})
        assert sum(r["status"] == "FINISHED" for r in runs) == 4, dataset

"""Multi-objective search, the grid sampler and the time budget: the parts that need no Ray.

- ``metric``/``mode`` lists parse into objectives, choose samplers that can optimise them, and the trial's
  seed loop reports one aggregated score per objective (each in its own direction);
- the grid sampler visits exactly the product of its parameters' values, never a point twice;
- ``--time-budget`` durations, and the stopper that reads the deadline of the command running now;
- the Pareto table against a brute-force non-dominated filter of a real in-memory Optuna study.
(The sweeps themselves, on a real local Ray: tests/tune/test_sweep_modes.py.)
"""

from __future__ import annotations

import itertools
import math
import pickle
import statistics
import warnings

import optuna
import pytest

from mcrlab.analysis.sweep_report import MLFLOW_RUN_ATTR as REPORT_RUN_ATTR
from mcrlab.analysis.sweep_report import TUNE_TRIAL_ATTR as REPORT_TUNE_ATTR
from mcrlab.analysis.sweep_report import format_pareto, pareto_rows
from mcrlab.config import ConfigError
from mcrlab.trials.conventions import MLFLOW_RUN_ATTR, TUNE_TRIAL_ATTR
from mcrlab.trials.seeds import objective_key, run_seeds
from mcrlab.tune import budget
from mcrlab.tune.grid import QuietGridSampler
from mcrlab.tune.searcher import BudgetStopper
from mcrlab.tune.space import grid_of, make_sampler, parse_space, sample_point
from mcrlab.tune.study import StudyPlan

optuna.logging.set_verbosity(optuna.logging.WARNING)
LR = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}


def _space(**top):
    return parse_space({"name": "t", "datasets": ["synthetic:competition"], "params": LR, **top}, "inline.yaml")


def dominated(a: tuple, b: tuple, signs: tuple) -> bool:
    """Whether b dominates a (signs: +1 to maximise, -1 to minimise each objective)."""
    better_or_equal = all(s * y >= s * x for x, y, s in zip(a, b, signs, strict=True))
    return better_or_equal and any(s * y > s * x for x, y, s in zip(a, b, signs, strict=True))


def brute_force_front(values: dict[int, tuple], signs: tuple) -> set[int]:
    """The trials no other trial dominates: the readable reference for Optuna's best_trials."""
    return {i for i, v in values.items() if not any(dominated(v, w, signs) for j, w in values.items() if j != i)}


# ---- parsing --------------------------------------------------------------------------------------


def test_metric_and_mode_lists_are_objectives_in_order():
    space = _space(metric=["val/acc", "val/head/m1"], mode=["max", "min"], sampler="nsga2")
    assert space.objectives == (("val/acc", "max"), ("val/head/m1", "min"))
    assert space.multi_objective and space.metric == "val/acc" and space.mode == "max"
    one_mode = _space(metric=["val/acc", "val/f1"], mode="min")  # one mode for every metric
    assert one_mode.objectives == (("val/acc", "min"), ("val/f1", "min"))
    single = _space(metric=["val/acc"])  # a list of one is a plain single-objective search
    assert not single.multi_objective and single.objectives == (("val/acc", "max"),)


@pytest.mark.parametrize("top, fragment", [
    ({"metric": ["val/acc", "val/acc"]}, "metric[1]: 'val/acc' is listed twice"),
    ({"metric": ["val/acc", "val/f1"], "mode": ["max"]}, "mode: 1 directions for 2 metric(s)"),
    ({"mode": ["max", "max"]}, "mode: 2 directions for 1 metric(s)"),
    ({"metric": ["val/acc", "accuracy"]}, "metric[1]: 'accuracy' must look like split/name"),
    ({"metric": ["val/acc", "val/f1"], "mode": ["max", "up"]}, "mode[1]: 'up' is not one of max, min"),
    ({"metric": [f"val/head/m{i}" for i in range(5)]}, "metric: a list of 1 to 4 metric names"),
    ({"metric": ["val/acc", "val/f1"], "sampler": "cmaes"}, "sampler.name: cmaes optimises one objective"),
    ({"metric": ["val/acc", "val/f1"], "scheduler": "asha"}, "scheduler: asha ranks trials by one metric"),
    ({"sampler": {"name": "tpe", "population_size": 10}}, "population_size: only for the nsga2 sampler"),
    ({"sampler": {"name": "nsga2", "n_startup_trials": 3}}, "n_startup_trials: not an option of the nsga2"),
])
def test_bad_objectives_name_the_key(top, fragment):
    with pytest.raises(ConfigError) as err:
        _space(**top)
    assert str(err.value).startswith("inline.yaml: ") and fragment in str(err.value), str(err.value)


@pytest.mark.parametrize("name", ["nsga2", "tpe", "random", "grid"])
def test_multi_objective_samplers_drive_a_two_direction_study(name):
    params = ({"train.lr": {"type": "float", "grid": [1e-3, 1e-2]},
               "train.batch_size": {"type": "int", "low": 32, "high": 64, "step": 32}} if name == "grid" else LR)
    space = parse_space({"name": "t", "datasets": ["synthetic:competition"], "params": params,
                         "metric": ["val/acc", "val/head/m1"], "mode": ["max", "min"],
                         "sampler": {"name": name, "seed": 3}}, "inline.yaml")
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(space))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for _ in range(4):
            trial, point = sample_point(study, space)
            lr = point["train.lr"]
            study.tell(trial, [math.log(lr), lr])
    assert len(study.best_trials) >= 1 and all(len(t.values) == 2 for t in study.trials)


def test_nsga2_population_size_is_passed():
    sampler = make_sampler(_space(metric=["val/acc", "val/f1"], sampler={"name": "nsga2", "population_size": 6}))
    assert isinstance(sampler, optuna.samplers.NSGAIISampler) and sampler._population_size == 6


# ---- the grid -------------------------------------------------------------------------------------

GRID = {"train.lr": {"type": "float", "grid": [1e-3, 3e-3, 1e-2]},
        "train.batch_size": {"type": "int", "low": 32, "high": 96, "step": 32},
        "train.optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "method.num_perms": {"fixed": 4}}


def test_grid_values_and_default_num_samples():
    space = _space(sampler="grid", params=GRID)
    assert grid_of(space.params) == {"train.lr": [1e-3, 3e-3, 1e-2], "train.batch_size": [32, 64, 96],
                                     "train.optimizer": ["adam", "sgd"]}
    assert space.num_samples == 3 * 3 * 2  # left out: the whole grid
    assert space.param("train.lr").low == 1e-3 and space.param("train.lr").high == 1e-2  # from the grid
    assert space.smoked().num_samples == 2 and _space(sampler="grid", params=GRID, num_samples=5).num_samples == 5
    assert isinstance(make_sampler(space), QuietGridSampler)


def test_grid_sampler_visits_every_point_once_then_stops_quietly():
    space = _space(sampler={"name": "grid", "seed": 1}, params=GRID)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(space))
    seen = []
    for i in range(space.num_samples):
        trial, point = sample_point(study, space)
        seen.append((point["train.lr"], point["train.batch_size"], point["train.optimizer"]))
        assert point["method.num_perms"] == 4  # fixed values ride along, outside the grid
        study.tell(trial, float(i))  # the last tell exhausts the grid: Optuna's study.stop() is swallowed
    expected = set(itertools.product([1e-3, 3e-3, 1e-2], [32, 64, 96], ["adam", "sgd"]))
    assert len(seen) == len(expected) and set(seen) == expected
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


@pytest.mark.parametrize("params, top, fragment", [
    (LR, {}, "params.train.lr: a continuous float range has no grid; give its values as grid:"),
    ({"train.batch_size": {"type": "int", "low": 16, "high": 128, "log": True}}, {},
     "params.train.batch_size: a log int range has no grid"),
    ({**GRID, "method.club_hidden": {"type": "int", "low": 8, "high": 16, "when": {"train.optimizer": "sgd"}}},
     {}, "the grid sampler needs a space without conditions"),
    (GRID, {"num_samples": 19}, "num_samples: 19 is more than the grid's 18 points"),
    (GRID, {"points_to_evaluate": [{"train.lr": 1e-3}]}, "points_to_evaluate: not used with the grid sampler"),
    (GRID, {"sampler": "tpe"}, "params.train.lr.grid: grid values are used only by the grid sampler"),
    ({"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "grid": [1e-3, 0.5]}}, {},
     "params.train.lr.grid: 0.5 is outside the parameter's range"),
    ({"train.batch_size": {"type": "int", "low": 32, "high": 96, "step": 32, "grid": [32, 48]}}, {},
     "params.train.batch_size.grid: 48 is outside"),
    ({"train.lr": {"type": "float", "grid": [1e-3, 1e-3]}}, {}, "params.train.lr.grid: 0.001 is listed twice"),
    ({"train.lr": {"type": "float", "grid": []}}, {}, "params.train.lr.grid: expected a non-empty list"),
    ({"train.lr": {"type": "float", "grid": ["fast"]}}, {}, "params.train.lr.grid: expected a finite number"),
])
def test_bad_grids_name_the_key(params, top, fragment):
    with pytest.raises(ConfigError) as err:
        _space(**{"sampler": "grid", **top, "params": params})
    assert str(err.value).startswith("inline.yaml: ") and fragment in str(err.value), str(err.value)


# ---- the seed loop with several objectives ---------------------------------------------------------


def test_run_seeds_scores_each_objective_in_its_own_direction():
    """Two seeds, lcb: objective/0 (max) is mean - z*se and objective/1 (min) is mean + z*se, per report."""
    space = parse_space({"name": "t", "datasets": ["synthetic:competition"], "params": LR,
                         "base": {"data": {"n_train": 64}, "train": {"epochs": 2}},
                         "metric": ["val/acc", "val/head/m1"], "mode": ["max", "min"],
                         "objective": {"seeds": 2, "aggregate": "lcb", "z": 2.0}}, "inline.yaml")
    plan = StudyPlan(space=space, dataset="synthetic:competition", sweep_id="s")
    per_seed = {0: [(0.5, 0.9), (0.6, 0.7)], 1: [(0.7, 0.2), (0.8, 0.3)]}  # seed -> epochs' (acc, head)

    def fake_fit(cfg, report, checkpoint_dir=None, resume_from=None, dataset=None):
        metrics = {}
        for acc, head in per_seed[cfg.train.seed]:
            metrics = {"val/acc": acc, "val/head/m1": head}
            report(metrics, None)
        return metrics

    reports: list[dict] = []
    last = run_seeds(plan.configs({"train.lr": 1e-2}), metric=plan.metric, score=plan.score,
                     report=lambda m, c: reports.append(m), fit=fake_fit, more=plan.more_objectives())

    def lcb(vals, sign):
        return statistics.fmean(vals) - sign * 2.0 * statistics.stdev(vals) / math.sqrt(len(vals))

    assert reports[1][objective_key(0)] == reports[1]["objective"] == 0.6  # one seed so far: the value
    assert reports[1][objective_key(1)] == 0.7
    assert reports[3][objective_key(0)] == pytest.approx(lcb([0.6, 0.8], +1))
    assert reports[3][objective_key(1)] == pytest.approx(lcb([0.7, 0.3], -1))  # pessimistic for min: above
    assert last[objective_key(1)] == pytest.approx(lcb([0.7, 0.3], -1))
    assert last[objective_key(1)] > statistics.fmean([0.7, 0.3])


# ---- the Pareto table -----------------------------------------------------------------------------


def test_pareto_rows_match_a_brute_force_filter_and_carry_the_links():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["val/acc", "val/head/m1"])
    values = {0: (0.8, 0.5), 1: (0.7, 0.2), 2: (0.6, 0.6), 3: (0.8, 0.4), 4: (0.5, 0.1), 5: (0.7, 0.2)}
    for n, v in values.items():
        t = study.ask()
        t.set_user_attr(TUNE_TRIAL_ATTR, f"tune{n}")
        t.set_user_attr(MLFLOW_RUN_ATTR, f"run{n}")
        study.tell(t, list(v))
    pruned = study.ask()
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)  # never on the front
    rows = pareto_rows(study)
    assert {r["number"] for r in rows} == brute_force_front(values, (+1, -1)) == {1, 3, 4, 5}
    assert all(r["trial_id"] == f"tune{r['number']}" and r["run_id"] == f"run{r['number']}" for r in rows)
    assert rows[0]["values"] == {"val/acc": 0.7, "val/head/m1": 0.2}
    table = format_pareto(rows)
    assert table[0].split()[:2] == ["trial", "tune"] and "val/acc" in table[0] and "val/head/m1" in table[0]
    assert len(table) == 5 and "run3" in table[2]
    assert (REPORT_TUNE_ATTR, REPORT_RUN_ATTR) == (TUNE_TRIAL_ATTR, MLFLOW_RUN_ATTR)  # the layers agree


# ---- the time budget -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5h", 5400),
                                           ("600", 600), (" 5 m ", 300)])
def test_durations(text, seconds):
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2d", "h", "-5m", "0s", "1e3", "9000h", "2 hours"])
def test_bad_durations_name_the_flag(text):
    with pytest.raises(ConfigError) as err:
        budget.parse_duration(text)
    assert str(err.value).startswith("--time-budget: ")


def test_format_duration():
    assert [budget.format_duration(s) for s in (7200, 90, 5, 3661)] == ["2h", "1m30s", "5s", "1h1m1s"]


def test_budget_stopper_obeys_the_current_commands_deadline():
    stopper = pickle.loads(pickle.dumps(BudgetStopper("sweep-x")))  # as Tune restores it
    assert pickle.dumps(stopper).count(b"sweep-x") == 1 and not hasattr(stopper, "_deadline")
    budget.set_deadline("sweep-x", None)
    assert not stopper.stop_all() and not budget.fired("sweep-x")
    budget.set_deadline("sweep-x", 3600)
    assert not stopper.stop_all() and not stopper("trial", {})
    budget.set_deadline("sweep-x", 1e-9)  # already over
    assert stopper.stop_all() and budget.fired("sweep-x")
    budget.set_deadline("sweep-x", None)  # a resume without --time-budget: no limit, nothing fired
    assert not stopper.stop_all() and not budget.fired("sweep-x")


# ---- the CLI refuses bad flags before anything starts -----------------------------------------------


@pytest.mark.parametrize("flags, fragment", [
    (["--time-budget", "2d"], "--time-budget: '2d' is not a duration like 90s, 30m or 2h"),
    (["--time-budget", "0m"], "--time-budget: must be more than 0"),
    (["--num-samples", "5"], "--num-samples: 5 is more than the grid's 4 points"),
])
def test_sweep_flags_are_checked_before_anything_starts(flags, fragment, tmp_path, capsys, monkeypatch):
    import yaml

    from mcrlab.cli import main

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"name": "g", "datasets": ["synthetic:competition"], "sampler": "grid",
                                    "params": {"train.lr": {"type": "float", "grid": [1e-3, 1e-2]},
                                               "train.optimizer": {"type": "categorical",
                                                                   "choices": ["adam", "sgd"]}}}))
    code = main(["sweep", str(path), *flags, "--storage", str(tmp_path / "runs"),
                 "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.strip().count("\n") == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]  # no run folder, no store


def test_sweep_help_explains_the_time_budget(capsys):
    from mcrlab.cli import main

    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--time-budget DURATION" in text and "90s, 30m, 2h" in text and "--resume continues" in text


def test_shipped_multi_objective_space_passes_check():
    import io
    from pathlib import Path

    from mcrlab.tune.check import check_space
    from mcrlab.tune.space import load_space

    path = Path(__file__).resolve().parents[2] / "search_spaces" / "multi_objective.yaml"
    space = load_space(path)
    assert space.objectives == (("val/acc", "max"), ("val/head/m1", "max")) and space.sampler.name == "nsga2"
    out = io.StringIO()
    rows = check_space(str(path), n=3, out=out)  # loads the dataset: both metrics are reported on it
    assert len(rows) == 3 and "objectives: val/acc (max), val/head/m1 (max)" in out.getvalue()

"""Search spaces: the shipped files, compilation to Optuna, conditions, points, samplers, the objective,
a table of bad spaces (message + exit code 2) and property-based tests of the parser."""

from __future__ import annotations

import argparse
import copy
import io
import math
import os
import pickle
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcrlab.config import ConfigError, RunConfig
from mcrlab.methods import REGISTRY
from mcrlab.tune import check as check_mod
from mcrlab.tune.space import (
    SAMPLERS,
    Objective,
    compile_space,
    load_space,
    make_sampler,
    parse_space,
    sample_point,
    trial_config,
)

ROOT = Path(__file__).resolve().parents[2]
# search_spaces/ also holds ablation specs (their first line runs `mcrlab ablate`); every other file
# there is a search space and must say so on its first line
SHIPPED = sorted(p for p in (ROOT / "search_spaces").glob("*.yaml")
                 if not p.read_text().startswith("# mcrlab ablate "))
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(params: dict, **top):
    return parse_space({"datasets": ["synthetic:competition"], "params": params, **top}, "inline.yaml")


def _study(space, sampler=None):
    study = optuna.create_study(direction="maximize", sampler=sampler or make_sampler(space))
    for point in space.points_to_evaluate:
        study.enqueue_trial(point)
    return study


def _draw(space, n, sampler=None, tell=True):
    """n points from a real in-memory study; told a value that depends on the point (so TPE moves)."""
    study, points = _study(space, sampler), []
    for _ in range(n):
        trial, point = sample_point(study, space)
        points.append(point)
        if tell:
            study.tell(trial, sum(v for v in point.values() if isinstance(v, float)))
    return points


# --------------------------------------------------------------------------------------------------
# the shipped files


def test_shipped_spaces_exist():
    names = {p.name for p in SHIPPED}
    assert {"default.yaml", "mcr_full.yaml", "baselines.yaml", "paper_points.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_space_samples_valid_configs(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# mcrlab sweep search_spaces/{path.name}"), "the file names its command"
    space = load_space(path)
    for variant in (space, space.smoked()):
        points = _draw(variant, 5)
        for i, pt in enumerate(variant.points_to_evaluate):  # the points come first, as written
            assert {k: points[i][k] for k in pt} == pt
        for point in points:
            for ds in variant.datasets:
                cfg = trial_config(variant, ds, point, seed=3)
                flat = cfg.flat()
                assert cfg.data.name == ds and cfg.train.seed == 3
                for name, value in point.items():
                    key = variant.param(name).path
                    if key in variant.overrides:
                        continue
                    if key.rsplit(".", 1)[-1].isdigit():
                        lst, i = key.rsplit(".", 1)
                        assert flat[lst][int(i)] == value
                    else:
                        assert flat[key] == value, key
                for key, value in variant.overrides.items():
                    assert flat[key] == value


def test_shipped_mcr_full_covers_the_mission_knobs():
    paths = {p.path for p in load_space(ROOT / "search_spaces/mcr_full.yaml").params}
    mission = {"method.lambda_m", "method.lambda_c", "method.lambda_b", "method.w_uni", "method.num_perms",
               "method.strategy", "method.divergence", "method.shared_bound", "method.irrelevant_bound",
               "method.temperature", "train.player_lr.0", "train.player_lr.1", "train.adaptive_lr",
               "train.lr", "method.club_hidden"}
    assert mission <= paths


def test_shipped_paper_points_use_the_paper_range():
    space = load_space(ROOT / "search_spaces/paper_points.yaml")
    lams = sorted(pt["method.lambda_m"] for pt in space.points_to_evaluate)
    assert lams == [0.001, 0.01, 0.1]
    p = space.param("method.lambda_m")
    assert (p.low, p.high, p.log) == (1e-3, 1e-1, True)


def test_shipped_baselines_searches_registered_methods():
    space = load_space(ROOT / "search_spaces/baselines.yaml")
    choices = space.param("method.name").choices
    assert {"joint", "multiloss", "unimodal", "mcr"} <= set(choices) <= set(REGISTRY)
    seen = {pt["method.name"] for pt in _draw(space, 30, optuna.samplers.RandomSampler(seed=1))}
    assert len(seen) >= 3


# --------------------------------------------------------------------------------------------------
# conditions, fixed values, points, list elements


COND = {
    "method.irrelevant_bound": {"type": "categorical", "choices": ["ceb_mse", "club"]},
    "method.club_hidden": {"type": "int", "low": 16, "high": 128, "log": True,
                           "when": {"method.irrelevant_bound": "club"}},
    "train.adaptive_lr": {"type": "categorical", "choices": [False, True]},
    "train.adaptive_rate": {"type": "float", "low": 0.25, "high": 2.0, "when": {"train.adaptive_lr": True}},
    "method.divergence": {"fixed": "kl"},
    "method.lambda_b": {"fixed": 0.05, "when": {"method.irrelevant_bound": ["club"]}},
}


def test_conditional_params_appear_only_when_their_condition_holds():
    space = _space(COND)
    points = _draw(space, 40, optuna.samplers.RandomSampler(seed=0), tell=False)
    assert {p["method.irrelevant_bound"] for p in points} == {"ceb_mse", "club"}
    assert {p["train.adaptive_lr"] for p in points} == {False, True}
    for p in points:
        club = p["method.irrelevant_bound"] == "club"
        assert ("method.club_hidden" in p) == club
        assert ("method.lambda_b" in p) == club  # a conditional fixed value
        assert ("train.adaptive_rate" in p) == p["train.adaptive_lr"]
        assert p["method.divergence"] == "kl"
        cfg = trial_config(space, "synthetic:competition", p, seed=0)
        assert cfg.method.params.divergence == "kl"
        assert cfg.method.params.lambda_b == (0.05 if club else 0.0)
        assert cfg.method.params.club_hidden == (p["method.club_hidden"] if club else 64)
        assert cfg.train.adaptive_lr is p["train.adaptive_lr"]


def test_define_by_run_returns_fixed_values_and_suggests_the_rest():
    space = _space(COND)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    constants = compile_space(space)(trial)
    assert constants["method.divergence"] == "kl"
    assert "method.divergence" not in trial.params
    assert set(trial.params) & set(constants) == set()
    # fixed values are applied even when the sampled dict lacks them (the runner may pass only params)
    cfg = trial_config(space, "synthetic:competition", dict(trial.params), seed=0)
    assert cfg.method.params.divergence == "kl"


def test_points_to_evaluate_come_first():
    pts = [{"method.lambda_m": 0.002, "method.strategy": "independent"},
           {"method.lambda_m": 0.05, "method.strategy": "collaborative"}]
    space = _space({"method.lambda_m": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
                    "method.strategy": {"type": "categorical", "choices": ["greedy", "independent",
                                                                           "collaborative"]}},
                   points_to_evaluate=pts, num_samples=4)
    assert _draw(space, 3)[:2] == pts


def test_method_name_searched_with_conditional_knobs():
    space = _space({
        "method.name": {"type": "categorical", "choices": ["joint", "multiloss", "unimodal", "mcr"]},
        "method.w_uni": {"type": "float", "low": 1e-3, "high": 1.0, "log": True,
                         "when": {"method.name": ["multiloss", "mcr"]}},
        "method.lambda_m": {"type": "float", "low": 1e-3, "high": 0.1, "when": {"method.name": "mcr"}},
        "method.strategy": {"type": "categorical", "choices": ["greedy", "collaborative"],
                            "when": {"method.name": "mcr"}},
        "method.num_perms": {"type": "int", "low": 4, "high": 8, "when": {"method.strategy": "greedy"}},
        "method.modality": {"type": "int", "low": 0, "high": 1, "when": {"method.name": "unimodal"}},
    })
    points = _draw(space, 40, optuna.samplers.RandomSampler(seed=2), tell=False)
    assert {p["method.name"] for p in points} == {"joint", "multiloss", "unimodal", "mcr"}
    for p in points:
        cfg = trial_config(space, "synthetic:competition", p, seed=0)
        assert cfg.method.name == p["method.name"]
        assert set(cfg.method.to_dict()) >= {k.split(".", 1)[1] for k in p}
        assert ("method.num_perms" in p) == (p.get("method.strategy") == "greedy")


def test_labelled_entries_give_one_path_a_range_per_method():
    space = _space({
        "method.name": {"type": "categorical", "choices": ["ogm_ge", "agm", "joint"]},
        "method.alpha@ogm_ge": {"type": "float", "low": 0.1, "high": 0.9, "when": {"method.name": "ogm_ge"}},
        "method.alpha@agm": {"type": "float", "low": 1.0, "high": 3.0, "when": {"method.name": "agm"}},
    })
    points = _draw(space, 30, optuna.samplers.RandomSampler(seed=4), tell=False)
    assert {p["method.name"] for p in points} == {"ogm_ge", "agm", "joint"}
    for p in points:
        cfg = trial_config(space, "synthetic:competition", p, 0)
        if p["method.name"] == "joint":
            assert set(p) == {"method.name"}
        else:
            alpha = p[f"method.alpha@{p['method.name']}"]
            assert cfg.method.params.alpha == alpha
            assert (0.1 <= alpha <= 0.9) if p["method.name"] == "ogm_ge" else (1.0 <= alpha <= 3.0)
    with pytest.raises(ConfigError, match="set twice"):
        trial_config(space, "synthetic:competition",
                     {"method.name": "agm", "method.alpha@agm": 1.0, "method.alpha@ogm_ge": 0.5}, 0)


def test_compiled_space_pickles():
    space = load_space(ROOT / "search_spaces/mcr_full.yaml")
    fn = pickle.loads(pickle.dumps(compile_space(space)))
    a = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    b = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert fn(a) == compile_space(space)(b) and a.params == b.params


def test_list_elements_and_smoke_overrides():
    space = _space({"train.player_lr.1": {"type": "float", "low": 0.1, "high": 10, "log": True},
                    "train.player_lr.0": {"fixed": 2.0},
                    "train.epochs": {"type": "int", "low": 5, "high": 9}},
                   smoke={"num_samples": 1, "overrides": {"train.epochs": 2}})
    cfg = trial_config(space, "synthetic:competition", {"train.player_lr.1": 0.5, "train.epochs": 7}, 0)
    assert cfg.train.player_lr == [2.0, 0.5] and cfg.train.epochs == 7
    smoke = space.smoked()
    assert smoke.num_samples == 1
    assert trial_config(smoke, "synthetic:competition", {"train.epochs": 7}, 0).train.epochs == 2
    with pytest.raises(ConfigError, match="not a parameter of this space"):
        trial_config(space, "synthetic:competition", {"train.lr": 0.1}, 0)


def test_dataset_overrides_set_one_datasets_trials_under_the_sampled_values():
    params = {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    space = parse_space({"datasets": ["synthetic:competition", "synthetic:balanced"], "params": params,
                         "dataset_overrides": {"synthetic:balanced": {"model.hidden": 7, "train.lr": 0.5}}},
                        "inline.yaml")
    bal = trial_config(space, "synthetic:balanced", {"train.lr": 0.002}, 0)
    assert bal.model.hidden == 7 and bal.train.lr == 0.002  # the sampled value wins over the override
    assert trial_config(space, "synthetic:competition", {"train.lr": 0.002}, 0).model.hidden != 7


@pytest.mark.parametrize("overrides, match", [
    ({"synthetic:nope": {"model.hidden": 4}}, "not one of datasets"),
    ({"synthetic:competition": {"model.hidden": 0}}, "hidden"),
    ({"synthetic:competition": {"train.seed": 3}}, "objective.seed"),
    ({"synthetic:competition": {"hidden": 3}}, "section.key"),
    ("x", "must be a mapping"),
])
def test_bad_dataset_overrides_in_a_space(overrides, match):
    with pytest.raises(ConfigError, match=match):
        _space({"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}, dataset_overrides=overrides)


@pytest.mark.slow  # importing ray.tune takes seconds; no cluster is started
def test_ray_optuna_search_accepts_the_compiled_space():
    """Ray Tune's OptunaSearch with the define-by-run function: points first, fixed values merged in,
    dotted names kept flat, and each suggestion builds a valid RunConfig."""
    from ray.tune.search.optuna import OptunaSearch

    space = load_space(ROOT / "search_spaces/baselines.yaml")
    searcher = OptunaSearch(space=compile_space(space), metric=space.metric, mode=space.mode,
                            sampler=make_sampler(space), points_to_evaluate=list(space.points_to_evaluate))
    for i in range(6):
        config = searcher.suggest(f"t{i}")
        if i < len(space.points_to_evaluate):
            assert {k: config[k] for k in space.points_to_evaluate[i]} == space.points_to_evaluate[i]
        assert (config.get("method.num_perms") == 16) == (config["method.name"] == "mcr")
        cfg = trial_config(space, space.datasets[0], config, seed=0)
        assert cfg.method.name == config["method.name"]
        searcher.on_trial_complete(f"t{i}", {space.metric: 0.1 * i, "training_iteration": 1})


# --------------------------------------------------------------------------------------------------
# samplers and the objective


NUMERIC = {"method.lambda_m": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
           "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
           "method.num_perms": {"type": "int", "low": 4, "high": 64},
           "method.strategy": {"type": "categorical", "choices": ["greedy", "independent"]}}


@pytest.mark.parametrize("name", [s for s in SAMPLERS if s not in ("nsga2", "grid")])  # those two:
def test_each_sampler_is_constructed_and_drives_a_study(name):  # tests/tune/test_multi_objective.py
    space = _space(NUMERIC, sampler={"name": name, "seed": 7}
                   | ({} if name == "random" else {"n_startup_trials": 2}))
    sampler = make_sampler(space)
    expected = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                "cmaes": optuna.samplers.CmaEsSampler, "gp": optuna.samplers.GPSampler}[name]
    assert type(sampler) is expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        points = _draw(space, 4, sampler)
    for p in points:
        assert 1e-3 <= p["method.lambda_m"] <= 0.1 and 4 <= p["method.num_perms"] <= 64
    assert len({p["method.lambda_m"] for p in points}) == 4


def test_seeded_tpe_is_reproducible_and_the_seed_matters():
    space = _space(NUMERIC, sampler={"name": "tpe", "seed": 11, "n_startup_trials": 3})
    a, b = _draw(space, 8), _draw(space, 8)
    assert a == b
    other = _space(NUMERIC, sampler={"name": "tpe", "seed": 12, "n_startup_trials": 3})
    assert _draw(other, 8) != a


def test_objective_mean_and_confidence_bound():
    assert Objective().seed_list() == [0]
    obj = Objective(seeds=3, aggregate="lcb", z=2.0, seed=5)
    assert obj.seed_list() == [5, 6, 7]
    se = 0.1 / math.sqrt(3)  # sample std of (0.8, 0.9, 1.0) is 0.1
    assert obj.score([0.8, 0.9, 1.0], "max") == pytest.approx(0.9 - 2 * se)
    assert obj.score([0.8, 0.9, 1.0], "min") == pytest.approx(0.9 + 2 * se)
    assert Objective(seeds=3).score([0.8, 0.9, 1.0], "max") == pytest.approx(0.9)
    space = _space(NUMERIC, objective={"seeds": 2, "aggregate": "lcb", "z": 0.5})
    assert space.objective == Objective(seeds=2, aggregate="lcb", z=0.5)


# --------------------------------------------------------------------------------------------------
# bad search spaces: one clear message naming the file and key, and exit code 2 from `check`

OK = "datasets: [synthetic:competition]\n"
LAM = "  method.lambda_m: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n"
BAD = {
    "unknown_path": (OK + "params:\n  method.lambda_x: {type: float, low: 0.1, high: 1}\n",
                     "params.method.lambda_x: 'lambda_x' is not a parameter of method 'mcr'"),
    "unknown_section_key": (OK + "params:\n  train.lrr: {type: float, low: 0.1, high: 1}\n",
                            "params.train.lrr: 'lrr' is not a key of train"),
    "bad_path_syntax": (OK + "params:\n  lambda_m: {type: float, low: 0.1, high: 1}\n",
                        "params.lambda_m: a parameter name is a config path"),
    "low_gt_high": (OK + "params:\n  method.lambda_m: {type: float, low: 0.5, high: 0.1}\n",
                    "params.method.lambda_m: low (0.5) must be <= high (0.1)"),
    "empty_choices": (OK + "params:\n  method.strategy: {type: categorical, choices: []}\n",
                      "params.method.strategy.choices: expected a non-empty list"),
    "log_low_zero": (OK + "params:\n  method.lambda_m: {type: float, low: 0, high: 0.1, log: true}\n",
                     "params.method.lambda_m.low: a log range needs low > 0"),
    "cond_unknown": (OK + "params:\n" + LAM + "  method.club_hidden: {type: int, low: 16, high: 64, "
                     "when: {method.irrelevant_bound: club}}\n",
                     "params.method.club_hidden.when.method.irrelevant_bound: no categorical parameter"),
    "cond_not_categorical": (OK + "params:\n" + LAM + "  method.club_hidden: {type: int, low: 16, "
                             "high: 64, when: {method.lambda_m: 0.01}}\n",
                             "when.method.lambda_m: conditions must refer to a categorical parameter"),
    "cond_bad_value": (OK + "params:\n  method.irrelevant_bound: {type: categorical, "
                       "choices: [ceb_mse, club]}"
                       "\n  method.club_hidden: {type: int, low: 16, high: 64, when: "
                       "{method.irrelevant_bound: clubb}}\n", "'clubb' is not one of its choices"),
    "unknown_sampler": (OK + "sampler: {name: hyperband}\nparams:\n" + LAM,
                        "sampler.name: unknown sampler 'hyperband'"),
    "unknown_type": (OK + "params:\n  method.lambda_m: {type: loguniform, low: 0.1, high: 1}\n",
                     "params.method.lambda_m.type: unknown type 'loguniform'"),
    "missing_type": (OK + "params:\n  method.lambda_m: {low: 0.1, high: 1}\n",
                     "params.method.lambda_m.type: missing"),
    "bad_yaml": (OK + "params:\n  method.lambda_m: {type: float, low: 0.1\n", "YAML syntax error (line"),
    "num_samples_type": (OK + "num_samples: ten\nparams:\n" + LAM, "num_samples: expected an integer >= 1"),
    "unknown_top_key": (OK + "samplers: {name: tpe}\nparams:\n" + LAM, "samplers: unknown top-level key"),
    "bad_point_key": (OK + "points_to_evaluate:\n  - {method.lambda_c: 0.01}\nparams:\n" + LAM,
                      "points_to_evaluate[0].method.lambda_c: not a parameter of this space"),
    "point_out_of_range": (OK + "points_to_evaluate:\n  - {method.lambda_m: 0.5}\nparams:\n" + LAM,
                           "points_to_evaluate[0].method.lambda_m: 0.5 is outside"),
    "point_condition": (OK + "points_to_evaluate:\n  - {method.club_hidden: 32}\nparams:\n"
                        "  method.irrelevant_bound: {type: categorical, choices: [ceb_mse, club]}\n"
                        "  method.club_hidden: {type: int, low: 16, high: 64, when: "
                        "{method.irrelevant_bound: club}}\n", "conditional on method.irrelevant_bound"),
    "value_rejected": (OK + "params:\n  method.num_perms: {type: int, low: 0, high: 8}\n",
                       "params.method.num_perms: low 0 is rejected: method.num_perms: must be >= 1"),
    "float_on_int": (OK + "params:\n  method.num_perms: {type: float, low: 1, high: 8}\n",
                     "method.num_perms is an integer; use type: int"),
    "bad_choice": (OK + "params:\n  method.divergence: {type: categorical, choices: [jsd, hellinger]}\n",
                   "choice 'hellinger' is rejected"),
    "int_float_bound": (OK + "params:\n  method.num_perms: {type: int, low: 4.5, high: 8}\n",
                        "params.method.num_perms.low: expected an integer"),
    "string_number": (OK + "params:\n  method.lambda_m: {type: float, low: 1e-3, high: 0.1}\n",
                      "write 1.0e-3"),
    "method_only_for_some": (OK + "params:\n  method.name: {type: categorical, choices: [joint, mcr]}\n"
                             + LAM, "'lambda_m' is not a parameter of method 'joint'"),
    "unknown_method": (OK + "params:\n  method.name: {type: categorical, choices: [joint, mcrr]}\n",
                       "unknown method 'mcrr'"),
    "reserved_seed": (OK + "params:\n  train.seed: {type: int, low: 0, high: 3}\n",
                      "params.train.seed: cannot be searched here"),
    "index_not_list": (OK + "params:\n  train.lr.0: {type: float, low: 0.1, high: 1}\n",
                       "train.lr is not a list"),
    "index_gap": (OK + "params:\n  train.player_lr.1: {type: float, low: 0.1, high: 1}\n",
                  "set train.player_lr.0 too"),
    "unknown_dataset": ("datasets: [synthetic:competiton]\nparams:\n" + LAM,
                        "datasets[0]: unknown synthetic preset 'competiton'"),
    "bad_base": (OK + "base: {train: {epochz: 3}}\nparams:\n" + LAM, "train.epochz: unknown key"),
    "bad_metric": (OK + "metric: accuracy\nparams:\n" + LAM, "metric: 'accuracy' must look like split/name"),
    "lcb_one_seed": (OK + "objective: {seeds: 1, aggregate: lcb}\nparams:\n" + LAM,
                     "objective.aggregate: lcb needs seeds >= 2"),
    "too_many_points": (OK + "num_samples: 1\npoints_to_evaluate: [{method.lambda_m: 0.01}, "
                        "{method.lambda_m: 0.02}]\nparams:\n" + LAM, "2 points but num_samples is 1"),
    "bad_smoke_override": (OK + "smoke: {overrides: {train.epoch: 2}}\nparams:\n" + LAM,
                           "smoke.overrides.train.epoch"),
    "all_fixed": (OK + "params:\n  method.lambda_m: {fixed: 0.01}\n", "nothing would be searched"),
    "duplicate_choice": (OK + "params:\n  method.divergence: {type: categorical, choices: [jsd, jsd]}\n",
                         "choices: 'jsd' is listed twice"),
    "choice_not_scalar": (OK + "params:\n  method.divergence: {type: categorical, choices: [[jsd]]}\n",
                          "is not a scalar"),
    "step_with_log": (OK + "params:\n  method.lambda_m: {type: float, low: 0.1, high: 1, log: true, "
                      "step: 0.1}\n", "cannot be combined with log"),
    "log_not_bool": (OK + "params:\n  method.lambda_m: {type: float, low: 0.1, high: 1, log: yes please}\n",
                     "params.method.lambda_m.log: expected true or false"),
    "unknown_param_key": (OK + "params:\n  method.lambda_m: {type: float, lo: 0.1, high: 1}\n",
                          "params.method.lambda_m.lo: unknown key for a float parameter"),
    "fixed_and_type": (OK + "params:\n" + LAM + "  method.divergence: {type: categorical, fixed: jsd}\n",
                       "has both type: categorical and fixed:"),
    "param_not_mapping": (OK + "params:\n" + LAM + "  method.divergence: jsd\n",
                          "params.method.divergence: expected a mapping"),
    "params_missing": (OK + "num_samples: 3\n", "params: expected a non-empty mapping"),
    "cond_later_param": (OK + "params:\n  method.club_hidden: {type: int, low: 16, high: 64, when: "
                         "{method.irrelevant_bound: club}}\n  method.irrelevant_bound: {type: categorical, "
                         "choices: [ceb_mse, club]}\n", "no categorical parameter 'method.irrelevant_bound' "
                         "is defined before it"),
    "cond_empty": (OK + "params:\n  method.irrelevant_bound: {type: categorical, choices: [ceb_mse, club]}\n"
                   "  method.club_hidden: {type: int, low: 16, high: 64, when: "
                   "{method.irrelevant_bound: []}}\n",
                   "the condition could never hold"),
    "method_name_conditional": (OK + "params:\n  method.strategy: {type: categorical, choices: [greedy]}\n"
                                "  method.name: {type: categorical, choices: [joint, mcr], when: "
                                "{method.strategy: greedy}}\n", "method.name cannot be conditional"),
    "datasets_empty": ("datasets: []\nparams:\n" + LAM, "datasets: expected a non-empty list"),
    "datasets_twice": ("datasets: [digits, digits]\nparams:\n" + LAM,
                       "datasets[1]: 'digits' is listed twice"),
    "base_data_name": (OK + "base: {data: {name: digits}}\nparams:\n" + LAM,
                       "base.data.name: set by the sweep, use datasets:"),
    "bad_mode": (OK + "mode: maximize\nparams:\n" + LAM, "mode: 'maximize' is not one of max, min"),
    "sampler_option": (OK + "sampler: {name: random, multivariate: true}\nparams:\n" + LAM,
                       "sampler.multivariate: only for the tpe sampler"),
    "unknown_scheduler": (OK + "scheduler: {name: pbt}\nparams:\n" + LAM,
                          "scheduler.name: 'pbt' is not one of"),
    "bad_scaling": (OK + "scaling: {workers: 0}\nparams:\n" + LAM, "scaling.workers: must be >= 1"),
    "concurrent_studies_word": (OK + "scaling: {concurrent_studies: many}\nparams:\n" + LAM,
                                "scaling.concurrent_studies: expected an integer >= 1 or auto, got 'many'"),
    "concurrent_studies_zero": (OK + "scaling: {concurrent_studies: 0}\nparams:\n" + LAM,
                                "scaling.concurrent_studies: must be >= 1"),
    "point_not_mapping": (OK + "points_to_evaluate: [0.01]\nparams:\n" + LAM,
                          "points_to_evaluate[0]: expected a non-empty mapping"),
    "point_sets_fixed": (OK + "points_to_evaluate: [{method.divergence: kl}]\nparams:\n" + LAM
                         + "  method.divergence: {fixed: jsd}\n", "method.divergence: is fixed to 'jsd'"),
    "labels_overlap": (OK + "params:\n  method.lambda_m@a: {type: float, low: 0.1, high: 1}\n"
                       "  method.lambda_m@b: {type: float, low: 0.1, high: 1}\n",
                       "params.method.lambda_m@b: sets method.lambda_m like params.method.lambda_m@a"),
    "bad_label": (OK + "params:\n  method.lambda_m@: {type: float, low: 0.1, high: 1}\n",
                  "optionally followed by @label"),
    "not_a_mapping": ("- a\n- b\n", "a search space must be a mapping"),
    "empty_file": ("", "got an empty file"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_space_gives_one_clear_message_and_exit_2(name, tmp_path, capsys):
    text, expected = BAD[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_space(path)
    msg = str(err.value)
    assert msg.startswith(str(path)), msg
    assert expected in msg, msg
    assert "\n" not in msg
    parser = argparse.ArgumentParser()
    check_mod.register(parser.add_subparsers())
    args = parser.parse_args(["check", str(path)])
    assert args.func(args) == 2
    assert expected in capsys.readouterr().err


def test_bad_space_table_is_large():
    assert len(BAD) >= 40  # issue 8's corpus: every kind of search-space mistake a user makes


@pytest.mark.slow  # a fresh process imports torch: seconds
def test_cli_prints_one_line_and_exits_2(tmp_path):
    """Through the real console script: one line on stderr, no traceback, exit code 2."""
    path = tmp_path / "bad.yaml"
    path.write_text(BAD["low_gt_high"][0])
    exe = Path(sys.executable).with_name("mcrlab")
    proc = subprocess.run([str(exe), "check", str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert f"{path}: params.method.lambda_m: low (0.5) must be <= high (0.1)" in proc.stderr


def test_missing_file_and_check_ok(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    check_mod.register(parser.add_subparsers())
    args = parser.parse_args(["check", str(tmp_path / "nope.yaml")])
    assert args.func(args) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err
    args = parser.parse_args(["check", str(ROOT / "search_spaces/default.yaml"), "-n", "3"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("config hash:") == 3 and "synthetic:imbalanced=" in out
    rows = check_mod.check_space(str(ROOT / "search_spaces/default.yaml"), n=2, out=io.StringIO())
    cfg = trial_config(load_space(ROOT / "search_spaces/default.yaml"), "synthetic:competition",
                       rows[1]["params"], 0)
    assert rows[1]["hashes"]["synthetic:competition"] == cfg.hash()


# --------------------------------------------------------------------------------------------------
# property-based tests of the parser

# MCRLAB_HYPOTHESIS_EXAMPLES=2000 for a long bug hunt; the default keeps the suite fast
EXAMPLES = int(os.environ.get("MCRLAB_HYPOTHESIS_EXAMPLES", "100"))
_finite = st.floats(min_value=1e-6, max_value=1e4, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=_finite, b=_finite, log=st.booleans(), i=st.integers(1, 2000), j=st.integers(1, 2000),
       ilog=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_random_valid_ranges_compile_and_stay_in_bounds(a, b, log, i, j, ilog, seed):
    lo, hi = min(a, b), max(a, b)
    ilo, ihi = min(i, j), max(i, j)
    space = _space({"method.lambda_m": {"type": "float", "low": lo, "high": hi, "log": log},
                    "model.hidden": {"type": "int", "low": ilo, "high": ihi, "log": ilog}},
                   sampler={"name": "random", "seed": seed})
    for p in _draw(space, 3, tell=False):
        assert lo <= p["method.lambda_m"] <= hi
        assert ilo <= p["model.hidden"] <= ihi and isinstance(p["model.hidden"], int)
        cfg = trial_config(space, "synthetic:competition", p, 0)
        assert cfg.method.params.lambda_m == p["method.lambda_m"] and cfg.model.hidden == p["model.hidden"]


_KEYS = st.sampled_from(["name", "datasets", "base", "metric", "mode", "objective", "sampler", "num_samples",
                         "params", "points_to_evaluate", "smoke", "scheduler", "scaling", "type", "low",
                         "high", "log", "choices", "fixed", "when", "seeds", "aggregate", "method.lambda_m",
                         "method.name", "method.strategy", "train.player_lr.0", "train.lr", "train", "method",
                         "data", "epochs", "overrides", "0", "x.y.z"])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 200), st.floats(allow_nan=True),
                     st.text(max_size=12),
                     st.sampled_from(["tpe", "gp", "club", "float", "int", "categorical", "mcr", "joint",
                                      "val/acc", "max", "lcb"]))
_GARBAGE = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(_KEYS, inner, max_size=5)),
                        max_leaves=25)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.one_of(_GARBAGE, st.dictionaries(_KEYS, _GARBAGE, max_size=8)))
def test_random_garbage_raises_only_config_error(raw):
    try:
        space = parse_space(raw, "garbage.yaml")
    except ConfigError as err:
        assert str(err).startswith("garbage.yaml")
        return
    _draw(space, 2, tell=False)  # whatever parses must also sample


def _paths(obj, prefix=()):
    out = [prefix]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        out += _paths(v, (*prefix, k))
    return out


FULL = yaml.safe_load((ROOT / "search_spaces/mcr_full.yaml").read_text())
FULL_PATHS = _paths(FULL)[1:]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutations_of_a_valid_space_raise_only_config_error_or_sample_valid_configs(data):
    """Replace, delete or add 1-3 entries anywhere in mcr_full.yaml: either one ConfigError, or a space
    whose sampled points all build valid RunConfigs (load-time checks leave no gap for trial time)."""
    raw = copy.deepcopy(FULL)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(FULL_PATHS))
        try:
            parent = raw
            for k in path[:-1]:
                parent = parent[k]
            op = data.draw(st.sampled_from(["replace", "delete", "add"]))
            if op == "replace":
                parent[path[-1]] = data.draw(_GARBAGE)
            elif op == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[data.draw(_KEYS)] = data.draw(_GARBAGE)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation changed the structure under this path
    try:
        space = parse_space(raw, "mutated.yaml")
    except ConfigError as err:
        assert str(err).startswith("mutated.yaml") and "\n" not in str(err)
        return
    for point in _draw(space, 3, optuna.samplers.RandomSampler(seed=0), tell=False):
        for ds in space.datasets:
            trial_config(space, ds, point, space.objective.seed)


@settings(max_examples=100, deadline=None)
@given(text=st.one_of(st.text(max_size=200),
                      _GARBAGE.map(lambda g: yaml.safe_dump(g, default_flow_style=True))))
def test_random_text_files_raise_only_config_error(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.yaml"
        path.write_text(text)
        try:
            load_space(path)
        except ConfigError as err:
            assert str(err).startswith(str(path))


def test_runconfig_default_is_mcr():  # the spaces rely on mcr being the default method
    assert RunConfig.from_dict({}).method.name == "mcr"

"""Per-method reference defaults (Method.defaults): applied to train.* keys the user did not set, kept when the
user set them, followed on a method switch (ablation arms, sweeps), and recorded in the resolved config."""

from __future__ import annotations

import pytest

from mcrlab.config import RunConfig, load_config
from mcrlab.methods import REGISTRY

SGD = ("sgd", 0.9, 1e-4)


def _opt(cfg: RunConfig) -> tuple:
    return cfg.train.optimizer, cfg.train.momentum, cfg.train.weight_decay


def test_reference_defaults_apply_where_the_user_is_silent():
    for name in ("ogm_ge", "agm", "pmr", "mla", "mslr"):
        cfg = RunConfig.from_dict({"method": {"name": name}})
        assert _opt(cfg) == SGD, name
        assert cfg.flat()["train.optimizer"] == "sgd"  # what MLflow logs as the run's params
    assert RunConfig.from_dict({"method": {"name": "greedy"}}).train.momentum == 0.0


def test_todays_behaviour_for_the_reference_arms():
    for name in ("mcr", "joint", "multiloss", "unimodal", "ensemble"):
        assert REGISTRY[name].defaults == {}
        assert _opt(RunConfig.from_dict({"method": {"name": name}})) == ("adam", 0.9, 0.0)


def test_the_user_setting_wins():
    cfg = RunConfig.from_dict({"method": {"name": "agm"}, "train": {"optimizer": "adam", "weight_decay": 0.0}})
    assert _opt(cfg) == ("adam", 0.9, 0.0)
    cfg = load_config(None, ["method.name=agm", "train.optimizer=adamw"])
    assert _opt(cfg) == ("adamw", 0.9, 1e-4)


def test_a_method_switch_follows_the_new_method():
    base = RunConfig.from_dict({"method": {"name": "ensemble"}})  # e.g. an ablation's base arm
    assert _opt(base.replace({"method.name": "agm"})) == SGD
    assert _opt(base.replace({"method.name": "agm", "train.momentum": 0.5})) == ("sgd", 0.5, 1e-4)
    agm = RunConfig.from_dict({"method": {"name": "agm"}})
    assert _opt(agm.replace({"method.name": "joint"})) == ("adam", 0.9, 0.0)  # back to the global defaults
    assert _opt(agm.replace({"train.lr": 0.01})) == SGD  # no switch: nothing moves
    round_trip = RunConfig.from_dict(agm.to_dict())  # a worker rebuilding the resolved config
    assert round_trip == agm and round_trip.hash() == agm.hash()


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_defaults_are_valid_train_keys(name):
    for key in REGISTRY[name].defaults:
        assert key.startswith("train.")
    RunConfig.from_dict({"method": {"name": name}})  # validates the values


def test_ablation_arms_and_their_tuning_use_each_methods_defaults():
    from mcrlab.ablate.spec import parse_spec
    from mcrlab.tune.space import trial_config

    raw = {"name": "t", "base": {"method": {"name": "ensemble"}, "train": {"epochs": 2, "device": "cpu"}},
           "arms": {"agm": {"method.name": "agm"}, "joint": {"method.name": "joint"},
                    "agm_adam": {"method.name": "agm", "train.optimizer": "adam"}},
           "datasets": ["synthetic:competition"], "seeds": [0],
           "tune": {"num_samples": 2, "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2}}}}
    spec = parse_spec(raw, "t.yaml")
    cells = {c.arm: RunConfig.from_dict(c.config) for c in spec.cells}
    assert _opt(cells["agm"]) == SGD and _opt(cells["joint"]) == ("adam", 0.9, 0.0)
    assert cells["agm_adam"].train.optimizer == "adam"  # the arm's own setting wins
    # the equal-budget tuning of the agm arm: its sweep base is the resolved arm config, so a trial keeps SGD
    # while the lr is sampled
    from mcrlab.tune.space import parse_space

    space = parse_space(spec.tuning["agm"], "t.yaml: tune (arm agm)")
    cfg = trial_config(space, "synthetic:competition", {"train.lr": 0.005}, 1000)
    assert _opt(cfg) == SGD and cfg.train.lr == 0.005

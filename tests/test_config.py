"""Typed configuration: defaults, YAML + overrides, and one clear message (exit 2) per user mistake."""

from __future__ import annotations

import pytest

from mcrlab.cli import main
from mcrlab.config import ConfigError, RunConfig, load_config


def test_defaults_and_overrides_compose(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train: {epochs: 7, lr: 0.01}\nmethod: {name: mcr, lambda_m: 0.05}\n")
    cfg = load_config(f, ["train.lr=0.002", "method.strategy=collaborative"])
    assert cfg.train.epochs == 7 and cfg.train.lr == 0.002
    assert cfg.method.name == "mcr" and cfg.method.params.lambda_m == 0.05
    assert cfg.method.params.strategy == "collaborative"
    assert load_config().train.epochs == RunConfig().train.epochs


def test_round_trip_and_hash_stable():
    cfg = load_config(None, ["method.name=multiloss", "method.w_uni=0.3"])
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.hash() == cfg.hash()
    assert cfg.hash() != cfg.replace({"train.seed": 1}).hash()
    assert cfg.flat()["method.w_uni"] == 0.3


def test_switching_method_drops_old_params_but_keeps_new_ones():
    cfg = load_config(None, ["method.w_uni=0.5", "method.name=multiloss"])  # order must not matter
    assert cfg.method.name == "multiloss" and cfg.method.params.w_uni == 0.5


def test_int_is_accepted_for_float():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


BAD_OVERRIDES = [
    (["train.lr=-1"], "train.lr: must be > 0.0"),
    (["train.lr=abc"], "train.lr: expected a number"),
    (["train.epochs=1.5"], "train.epochs: expected an integer"),
    (["train.epochs=0"], "train.epochs: must be >= 1"),
    (["train.batch_size=true"], "train.batch_size: expected an integer"),
    (["train.optimizer=rmsprop"], "train.optimizer: 'rmsprop' is not one of"),
    (["train.device=tpu"], "train.device: 'tpu' is not one of"),
    (["train.player_lr=[1, -2]"], "train.player_lr: every multiplier must be a finite number > 0"),
    (["train.adaptive_band=[2, 1]"], "train.adaptive_band"),
    (["train.adaptive_lr=maybe"], "train.adaptive_lr: expected true or false"),
    (["train.lrr=0.1"], "train.lrr: unknown key"),
    (["trian.lr=0.1"], "unknown section 'trian'"),
    (["model.fusion=attention"], "model.fusion: 'attention' is not one of late, mlp"),
    (["model.dropout=0.95"], "model.dropout: must be <= 0.9"),
    (["data.num_modalities=1"], "data.num_modalities: must be 0"),
    (["method.name=nope"], "method.name: unknown method 'nope'"),
    (["method.lambda_x=1"], "method.lambda_x: unknown key"),
    (["method.divergence=hellinger"], "method.divergence: 'hellinger' is not one of"),
    (["method.shared_bound=nce"], "method.shared_bound: 'nce' is not one of"),
    (["method.irrelevant_bound=vib"], "method.irrelevant_bound: 'vib' is not one of"),
    (["method.strategy=selfish"], "method.strategy: 'selfish' is not one of"),
    (["method.num_perms=0"], "method.num_perms: must be >= 1"),
    (["method.start_epoch=5", "method.end_epoch=2"], "method.end_epoch: must be -1 or >= start_epoch"),
    (["method.name=joint", "method.lambda_m=0.1"], "method.lambda_m: unknown key"),
    (["lr=0.1"], "the key must look like section.key"),
    (["train.lr"], "expected section.key=value"),
]


@pytest.mark.parametrize("overrides,message", BAD_OVERRIDES, ids=[b[1][:40] for b in BAD_OVERRIDES])
def test_bad_override_is_one_clear_message_and_exit_2(overrides, message, capsys):
    rc = main(["train", *overrides])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err, err
    assert "Traceback" not in err and err.count("\n") == 1


BAD_FILES = [
    ("train: {epochs: 3\n", "YAML syntax error"),
    ("- a\n- b\n", "must be a mapping of sections"),
    ("train: 5\n", "train: must be a mapping"),
    ("train: {momentum: [1]}\n", "train.momentum: expected a number"),
    ("data: {name: 7}\n", "data.name: expected a string"),
    ("method: {name: mcr, temperature: 0}\n", "method.temperature: must be > 0.0"),
]


@pytest.mark.parametrize("text,message", BAD_FILES, ids=[b[1] for b in BAD_FILES])
def test_bad_file_names_the_file_and_key(text, message, tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    assert main(["train", str(f)]) == 2
    err = capsys.readouterr().err
    assert str(f) in err and message in err, err


def test_missing_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err


def test_config_error_is_a_value_error():
    with pytest.raises(ConfigError):
        load_config(None, ["train.lr=0"])


# --------------------------------------------------------------------------------------------------
# the validation helpers by class (the corpus and the fuzz tests cover them through the CLI)


def test_short_cuts_every_quoted_value_to_80_characters():
    from mcrlab.config import short

    assert short("abc") == "'abc'"
    assert len(short("x" * 10_000)) == 80 and short("x" * 10_000).endswith("...")
    assert short(list(range(10**5))) == "<list of 100000 items>"  # never rendered in full


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("key", ["method.lambda_m", "model.dropout", "train.grad_clip", "train.lr",
                                 "train.momentum", "train.weight_decay", "train.adaptive_rate"])
def test_non_finite_numbers_are_refused_everywhere(key, value):
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=f"{key}: must be a finite number"):
        RunConfig.from_dict({section: {name: value}}, "cfg.yaml")
    with pytest.raises(ConfigError, match="finite"):
        RunConfig.from_dict({"train": {"player_lr": [1.0, value]}}, "cfg.yaml")


def test_integers_stay_inside_their_bounds():
    RunConfig.from_dict({"train": {"seed": 2**32 - 1}, "data": {"seed": 2**32 - 1}})  # a 32-bit seed is fine
    for raw, fragment in (({"train": {"seed": 2**32}}, "train.seed: must be <= 4294967295"),
                          ({"model": {"hidden": 10**9}}, "model.hidden: must be <= 65536"),
                          ({"method": {"name": "mcr", "shared_dim": 2**40}}, "outside the integer range"),
                          ({"train": {"epochs": 10**7}}, "train.epochs: must be <= 100000")):
        with pytest.raises(ConfigError, match=fragment):
            RunConfig.from_dict(raw, "cfg.yaml")


def test_strict_yaml_refuses_duplicates_and_bombs_but_keeps_merge_keys():
    from mcrlab.config import load_yaml_text

    assert load_yaml_text("a: &d {x: 1, y: 2}\nb: {<<: *d, y: 3}\n", "f") == {"a": {"x": 1, "y": 2},
                                                                           "b": {"x": 1, "y": 3}}
    with pytest.raises(ConfigError, match="f: duplicate key 'y' \\(line 2\\)"):
        load_yaml_text("y: 1\ny: 2\n", "f")
    with pytest.raises(ConfigError, match="duplicate key 1"):
        load_yaml_text("{1: a, 1: b}", "f")
    bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcd", "bcde"))
    with pytest.raises(ConfigError, match="expands to more than 100000 values"):
        load_yaml_text(bomb, "f")
    assert len(load_yaml_text(bomb.rsplit("\n", 2)[0], "f")["d"]) == 10  # 10^4 values: fine


def test_an_override_list_index_is_not_a_config_key():
    with pytest.raises(ConfigError, match="the key must look like section.key"):
        RunConfig().replace(["train.player_lr.100000000=1.0"])

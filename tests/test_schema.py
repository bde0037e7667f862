"""``mcrlab schema KIND``: the JSON Schemas accept every shipped file and reject what the validator rejects."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from mcrlab.cli import main
from mcrlab.cli.schema import KINDS, schema
from mcrlab.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def _is_ablation(path: Path) -> bool:  # an ablation spec has arms (or generates them); a space has params
    raw = yaml.safe_load(path.read_text())
    return "arms" in raw or "generate" in raw


SPACES = [p for p in FILES if not _is_ablation(p)]
ABLATIONS = [p for p in FILES if _is_ablation(p)]


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_valid_json_schema_and_printed_by_the_cli(kind, capsys):
    assert main(["schema", kind]) == 0
    printed = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(printed)
    assert printed == json.loads(json.dumps(schema(kind), default=str))


def test_both_kinds_are_shipped():
    assert len(SPACES) >= 4 and len(ABLATIONS) >= 3


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_shipped_search_space_validates(path):
    jsonschema.validate(yaml.safe_load(path.read_text()), schema("space"))


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_every_shipped_ablation_spec_validates(path):
    jsonschema.validate(yaml.safe_load(path.read_text()), schema("ablation"))


def test_config_schema_accepts_the_compile_flag_and_modes():
    for value in (False, True, "default", "reduce-overhead", "max-autotune"):
        cfg = RunConfig.from_dict({"train": {"compile": value}})
        assert cfg.train.compile == value
        jsonschema.validate(cfg.to_dict(), schema("config"))


def test_config_schema_accepts_a_resolved_config_of_every_method():
    from mcrlab.methods import REGISTRY

    for name in REGISTRY:
        cfg = RunConfig.from_dict({"method": {"name": name}})
        jsonschema.validate(cfg.to_dict(), schema("config"))


@pytest.mark.parametrize("bad", [
    {"train": {"epochs": 0}},                      # below the field's bound
    {"train": {"optimizer": "lbfgs"}},             # not one of its choices
    {"model": {"hiden": 3}},                       # a typo: unknown key
    {"method": {"name": "joint", "lambda_m": 1}},  # a key of another method
    {"method": {"name": "nope"}},                  # unknown method
    {"train": {"compile": "fast"}},                # not a torch.compile mode
    {"train": {"compile": 1}},                     # a number is neither a flag nor a mode
])
def test_config_schema_rejects_what_the_validator_rejects(bad):
    from mcrlab.config import ConfigError

    with pytest.raises(ConfigError):
        RunConfig.from_dict(bad)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema("config"))

"""``mcrlab schema KIND``: a JSON Schema of each file kind, so editors validate and complete the YAML.

The schemas are generated from the same typed sections the validator reads (``config.opt`` metadata: help,
choices, bounds), so they cannot drift from what ``mcrlab check`` accepts. They describe shape, names, types
and bounds; rules that span keys (conditions between parameters, a method's cross-field checks) stay with
the validator, whose one-line messages remain the authority.

Use one in an editor: ``mcrlab schema space > .mcrlab-space.schema.json`` and, with the YAML language
server, a first line ``# yaml-language-server: $schema=.mcrlab-space.schema.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from typing import Any

__all__ = ["KINDS", "schema", "dataclass_schema", "register"]

KINDS = ("config", "space", "ablation")
DRAFT = "https://json-schema.org/draft/2020-12/schema"
DOTTED_KEY = r"^(data|model|method|train)\.[A-Za-z_][A-Za-z0-9_]*(\.[0-9]+)?$"


def _type_schema(tp: Any) -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_schema(a) for a in typing.get_args(tp)]}
    if tp is type(None):
        return {"type": "null"}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if tp is list or origin is list:
        return {"type": "array"}
    if tp is dict or origin is dict:
        return {"type": "object"}
    return {}


def dataclass_schema(cls: type, title: str = "") -> dict[str, Any]:
    """The JSON Schema of one section: every init field with its type, default, help, choices and bounds."""
    hints = typing.get_type_hints(cls)
    props: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta: dict[str, Any] = dict(f.metadata or {})
        prop = _type_schema(hints[f.name])
        if meta.get("help"):
            prop["description"] = meta["help"]
        if f.default is not dataclasses.MISSING:
            prop["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            prop["default"] = f.default_factory()
        if meta.get("choices") is not None:
            prop["enum"] = list(meta["choices"])
        for key, name in (("ge", "minimum"), ("le", "maximum"), ("gt", "exclusiveMinimum")):
            if meta.get(key) is not None:
                prop[name] = meta[key]
        props[f.name] = prop
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if title:
        out["title"] = title
    return out


def _config_schema() -> dict[str, Any]:
    from mcrlab.config import DataConfig, ModelConfig, TrainConfig
    from mcrlab.methods import REGISTRY

    methods = []
    for name, cls in REGISTRY.items():
        sub = dataclass_schema(cls.Params, f"method {name}")
        sub["properties"] = {"name": {"const": name}, **sub["properties"]}
        sub["required"] = ["name"] if name != "mcr" else []
        methods.append(sub)
    return {"type": "object", "additionalProperties": False,
            "properties": {"data": dataclass_schema(DataConfig, "data"),
                           "model": dataclass_schema(ModelConfig, "model"),
                           "method": {"description": "method.name picks a plug-in; the other keys are its "
                                                     "parameters", "oneOf": methods},
                           "train": dataclass_schema(TrainConfig, "train")}}


PARAM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "oneOf": [
        {"properties": {"type": {"enum": ["float", "int"]}, "low": {"type": "number"},
                        "high": {"type": "number"}, "log": {"type": "boolean"}, "step": {"type": "number"},
                        "grid": {"type": "array", "items": {"type": "number"}, "minItems": 1,
                                 "description": "the values sampler: grid visits (low/high default to its ends)"},
                        "when": {"type": "object"}},
         "required": ["type"], "anyOf": [{"required": ["low", "high"]}, {"required": ["grid"]}],
         "additionalProperties": False},
        {"properties": {"type": {"const": "categorical"}, "choices": {"type": "array", "minItems": 1},
                        "when": {"type": "object"}},
         "required": ["type", "choices"], "additionalProperties": False},
        {"properties": {"fixed": {}, "when": {"type": "object"}}, "required": ["fixed"],
         "additionalProperties": False},
    ],
}


def _space_schema() -> dict[str, Any]:
    from mcrlab.tune.space import Objective, SamplerSpec, Scaling, SchedulerSpec, Smoke

    return {"type": "object", "additionalProperties": False, "required": ["datasets", "params"],
            "properties": {
                "name": {"type": "string", "description": "sweep name (default: the file name)"},
                "description": {"type": "string"},
                "datasets": {"type": "array", "items": {"type": "string"}, "minItems": 1,
                             "description": "one Optuna study per dataset (data.name values)"},
                "base": {**_config_schema(), "description": "a fixed partial RunConfig"},
                "metric": {"anyOf": [{"type": "string", "pattern": "^(train|val|test)/"},
                                     {"type": "array", "minItems": 1, "maxItems": 4,
                                      "items": {"type": "string", "pattern": "^(train|val|test)/"}}],
                           "description": "what fit reports (split/name), e.g. val/acc; a list of 2-4 names "
                                          "is a multi-objective search"},
                "mode": {"anyOf": [{"enum": ["max", "min"]},
                                   {"type": "array", "items": {"enum": ["max", "min"]}, "minItems": 1}],
                         "description": "max or min, or one per metric"},
                "objective": dataclass_schema(Objective, "objective"),
                "sampler": dataclass_schema(SamplerSpec, "sampler"),
                "num_samples": {"type": "integer", "minimum": 1, "description": "trials per dataset"},
                "scaling": dataclass_schema(Scaling, "scaling"),
                "scheduler": {"anyOf": [dataclass_schema(SchedulerSpec, "scheduler"), {"const": "none"}]},
                "smoke": dataclass_schema(Smoke, "smoke"),
                "params": {"type": "object", "patternProperties": {DOTTED_KEY[:-1] + "(@[A-Za-z0-9_]+)?$":
                                                                   PARAM_SCHEMA},
                           "additionalProperties": False,
                           "description": "section.key (or section.key.N, or section.key@label) -> range"},
                "points_to_evaluate": {"type": "array", "items": {"type": "object"}},
                "dataset_overrides": _dataset_overrides_schema(),
            }}


def _dataset_overrides_schema() -> dict[str, Any]:
    return {"type": "object", "additionalProperties": {"type": "object", "propertyNames": {"pattern": DOTTED_KEY}},
            "description": "dataset (one of datasets) -> dotted config keys that dataset needs on top of the base"}


def _ablation_schema() -> dict[str, Any]:
    from mcrlab.ablate.spec import GENERATORS, Resources, SmokeSpec

    delta = {"type": "object", "propertyNames": {"pattern": DOTTED_KEY},
             "description": "dotted config keys changed from the base"}
    return {"type": "object", "additionalProperties": False,
            "properties": {
                "name": {"type": "string"}, "description": {"type": "string"}, "experiment": {"type": "string"},
                "base": _config_schema(), "base_run": {"type": "string", "description": "MLflow run id of the base"},
                "base_overrides": delta, "generate": {"enum": sorted(GENERATORS)},
                "exclude": {"type": "array", "items": {"type": "string"}},
                "arms": {"type": "object", "additionalProperties": delta},
                "datasets": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "dataset_overrides": _dataset_overrides_schema(),
                "seeds": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
                "seed_keys": {"type": "array", "items": {"type": "string", "pattern": DOTTED_KEY}},
                "metric": {"type": "string", "pattern": "^(train|val|test)/"},
                "resources": dataclass_schema(Resources, "resources"),
                "smoke": dataclass_schema(SmokeSpec, "smoke"),
                "tune": {"type": "object", "description": "an equal tuning budget per arm (a search space's "
                                                          "params, num_samples, metric, ...)"},
            }}


def schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one file kind: ``config``, ``space`` or ``ablation``."""
    build = {"config": _config_schema, "space": _space_schema, "ablation": _ablation_schema}[kind]
    return {"$schema": DRAFT, "title": f"mcrlab {kind}", **build()}


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(schema(args.kind), indent=2, default=str))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of a file kind (for editor validation)",
                       description="Print the JSON Schema of a run config, a search space or an ablation spec, "
                                   "generated from the validator's own sections.")
    p.add_argument("kind", choices=KINDS, help="config | space | ablation")
    p.set_defaults(func=cmd_schema)

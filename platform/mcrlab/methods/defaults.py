"""Per-method train.* defaults and method/model checks, applied by ``mcrlab.config`` while a RunConfig is
built (config reaches these by name: it is the package's leaf and never imports the methods).

A method's ``defaults`` are its reference implementation's settings (e.g. SGD with momentum 0.9); they fill
only the keys the user did not give, so they end up in the resolved config and in MLflow like any parameter.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mcrlab.config import ConfigError, TrainConfig
from mcrlab.methods import REGISTRY
from mcrlab.methods.base import Method

__all__ = ["with_method_train_defaults", "switch_method_train_defaults", "check_method_config"]


def _method_class(name: Any) -> type[Method] | None:
    return REGISTRY.get(name) if isinstance(name, str) else None


def _train_key(key: str) -> str:
    if not key.startswith("train."):
        raise ValueError(f"Method.defaults: only train.* keys are supported, got {key!r}")
    return key.split(".", 1)[1]


def with_method_train_defaults(raw: dict) -> dict:
    """``raw`` (a nested config dict) with the chosen method's ``defaults`` filled into ``raw["train"]`` for
    every key the user did not give. Returns a new dict; ``raw`` is not changed. Unknown methods and
    malformed sections are left alone (the builder reports them)."""
    method = raw.get("method")
    cls = _method_class(method.get("name", "mcr") if isinstance(method, dict) else None)
    train = raw.get("train")
    if cls is None or not cls.defaults or not (train is None or isinstance(train, dict)):
        return raw
    train = dict(train or {})
    for key, value in cls.defaults.items():
        train.setdefault(_train_key(key), value)
    return {**raw, "train": train}


def switch_method_train_defaults(train: dict, old: Any, new: Any, given: set[str]) -> None:
    """On a method switch inside ``RunConfig.replace``: every ``train`` key (of the fully resolved old config)
    that still holds the old method's default - the old method's own ``defaults`` entry or the global field
    default - and is not among the overrides ``given`` (dotted keys) is dropped, so that building the new
    config fills it with the new method's default. A value equal to the old default counts as not set."""
    old_cls, new_cls = _method_class(old), _method_class(new)
    if old == new or new_cls is None:
        return
    base = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    old_defaults = {_train_key(k): v for k, v in (old_cls.defaults if old_cls else {}).items()}
    for key in {*old_defaults, *(_train_key(k) for k in new_cls.defaults)}:
        if f"train.{key}" in given or key not in train:
            continue
        if train[key] == old_defaults.get(key, base.get(key)):
            del train[key]


def check_method_config(cfg: Any, source: str) -> None:
    """Refuse a method/model combination the method is not defined for (ConfigError, one line)."""
    cls = _method_class(cfg.method.name)
    if cls is not None and cls.fusions is not None and cfg.model.fusion not in cls.fusions:
        raise ConfigError(f"{source}: model.fusion: method '{cls.name}' needs model.fusion="
                          f"{' or '.join(cls.fusions)} ({cls.fusion_reason}); got '{cfg.model.fusion}'")

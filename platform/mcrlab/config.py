"""Typed run configuration: dataclasses, YAML + ``section.key=value`` overrides, validation.

Every field carries its documentation and constraints in ``field(metadata=...)``:
``help`` (one line), ``choices`` (allowed values), ``ge``/``le``/``gt`` (numeric bounds). One generic
validator reads them, so a new field is one line. Every user mistake becomes a ``ConfigError`` whose
message names the source (file or ``<override>``) and the dotted key.

The ``method`` section is polymorphic: ``method.name`` picks a plug-in from the registry
(``mcrlab.methods``) and the remaining ``method.*`` keys are validated against that plug-in's own
params dataclass, so ``method.lambda_m`` exists only when ``method.name=mcr``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TrainConfig",
    "MethodConfig",
    "RunConfig",
    "opt",
    "build_dataclass",
    "dataclass_to_dict",
    "parse_overrides",
    "apply_override",
    "load_config",
]


class ConfigError(ValueError):
    """A mistake in user input. ``str(err)`` is the one-line message shown to the user (exit code 2)."""


def opt(default: Any, help: str, *, choices: tuple | None = None, ge: float | None = None,
        le: float | None = None, gt: float | None = None) -> Any:
    """A dataclass field with its documentation and constraints (read by the validator and ``--help``)."""
    meta = {"help": help, "choices": choices, "ge": ge, "le": le, "gt": gt}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------------
# sections


@dataclass
class DataConfig:
    name: str = opt("synthetic:competition",
                    "dataset: synthetic:<preset>, mfeat:<view>+<view>, digits, or a Parquet shard folder")
    seed: int = opt(0, "seed of data generation and splits", ge=0)
    n_train: int = opt(0, "training samples (synthetic; 0 = the preset's default)", ge=0)
    num_modalities: int = opt(0, "modalities (synthetic; 0 = the preset's default, else >= 2)", ge=0)

    def __post_init__(self) -> None:
        if self.num_modalities == 1:
            raise ConfigError("num_modalities: must be 0 (preset default) or >= 2")


@dataclass
class ModelConfig:
    hidden: int = opt(64, "hidden width of each MLP encoder", ge=1)
    depth: int = opt(2, "hidden layers of each MLP encoder", ge=1, le=16)
    latent: int = opt(32, "latent width d_m of each encoder", ge=1)
    fusion: str = opt("late", "fusion head: late (sum of per-modality logits) or mlp (concat -> MLP)",
                      choices=("late", "mlp"))
    fusion_hidden: int = opt(64, "hidden width of the mlp fusion head", ge=1)
    dropout: float = opt(0.0, "dropout inside encoders", ge=0.0, le=0.9)


@dataclass
class TrainConfig:
    epochs: int = opt(30, "training epochs", ge=1)
    batch_size: int = opt(64, "global batch size", ge=2)
    lr: float = opt(1e-3, "base learning rate (fusion head; players scale it)", gt=0.0, le=10.0)
    weight_decay: float = opt(0.0, "weight decay", ge=0.0)
    optimizer: str = opt("adam", "optimizer", choices=("adam", "adamw", "sgd"))
    momentum: float = opt(0.9, "SGD momentum", ge=0.0, le=1.0)
    seed: int = opt(0, "seed of initialisation, batching and permutations", ge=0)
    device: str = opt("auto", "device: auto (cuda if present), cpu, cuda", choices=("auto", "cpu", "cuda"))
    amp: str = opt("auto", "mixed precision: auto (bf16 on cuda), bf16, off", choices=("auto", "bf16", "off"))
    player_lr: list = opt([], "per-player lr multipliers r_m (empty = all 1); lr_m = lr * r_m")
    adaptive_lr: bool = opt(False, "update player lr multipliers each epoch from the players' D_m")
    adaptive_band: list = opt([0.2, 5.0], "clip band [lo, hi] for adaptive lr multipliers")
    adaptive_rate: float = opt(1.0, "strength of the adaptive update (exponent on the D ratio)", ge=0.0)
    grad_clip: float = opt(0.0, "max gradient norm (0 = off)", ge=0.0)
    eval_perms: int = opt(8, "permutations used to measure D_m at evaluation", ge=1)
    probe_epochs: int = opt(100, "full-batch L-BFGS-free steps of the linear probe per encoder (0 = off)", ge=0)
    patience: int = opt(0, "early stopping on val/acc after this many epochs without gain (0 = off)", ge=0)
    checkpoint_every: int = opt(1, "save a checkpoint every N epochs (when a checkpoint dir is given)", ge=1)
    compile: bool = opt(False, "torch.compile the model's training forward (opt-in; first steps compile)")

    def __post_init__(self) -> None:
        if any((not isinstance(r, (int, float)) or isinstance(r, bool) or r <= 0) for r in self.player_lr):
            raise ConfigError("player_lr: every multiplier must be a number > 0")
        band = self.adaptive_band
        if (len(band) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in band)
                or not 0 < band[0] <= 1 <= band[1]):
            raise ConfigError("adaptive_band: must be [lo, hi] with 0 < lo <= 1 <= hi")


@dataclass
class MethodConfig:
    """``name`` plus the chosen plug-in's params dataclass instance."""

    name: str = "mcr"
    params: Any = None

    def to_dict(self) -> dict:
        return {"name": self.name, **dataclass_to_dict(self.params)}


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    SECTIONS: typing.ClassVar[dict[str, type]] = {"data": DataConfig, "model": ModelConfig,
                                                  "train": TrainConfig}

    @classmethod
    def from_dict(cls, raw: dict | None, source: str = "<config>") -> RunConfig:
        """Build and validate from a nested dict; unknown keys, bad types and values raise ConfigError."""
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: the configuration must be a mapping of sections, got "
                              f"{type(raw).__name__}")
        unknown = sorted(set(raw) - set(cls.SECTIONS) - {"method"})
        if unknown:
            raise ConfigError(f"{source}: unknown section '{unknown[0]}' "
                              f"(known: {', '.join([*cls.SECTIONS, 'method'])})")
        built = {}
        for name, section_cls in cls.SECTIONS.items():
            built[name] = build_dataclass(section_cls, raw.get(name), source, name)
        built["method"] = _build_method(raw.get("method"), source)
        return cls(**built)

    def to_dict(self) -> dict:
        return {"data": dataclass_to_dict(self.data), "model": dataclass_to_dict(self.model),
                "method": self.method.to_dict(), "train": dataclass_to_dict(self.train)}

    def flat(self) -> dict[str, Any]:
        """``{"section.key": value}`` - the form used for MLflow params and search spaces."""
        return {f"{s}.{k}": v for s, sec in self.to_dict().items() for k, v in sec.items()}

    def hash(self) -> str:
        """Stable short hash of the resolved configuration (lineage tag)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def replace(self, overrides: dict[str, Any] | list[str], source: str = "<override>") -> RunConfig:
        """A new validated config with dotted-key overrides applied."""
        raw = self.to_dict()
        items = parse_overrides(overrides) if isinstance(overrides, list) else list(overrides.items())
        # a method switch goes first, so that method.* keys given with it are not dropped by it
        items.sort(key=lambda kv: kv[0] != "method.name")
        for key, value in items:
            apply_override(raw, key, value, source)
        return RunConfig.from_dict(raw, source)


def _build_method(raw: Any, source: str) -> MethodConfig:
    from mcrlab.methods import REGISTRY  # late import: methods import config

    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: method: must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    name = raw.pop("name", "mcr")
    if not isinstance(name, str) or name not in REGISTRY:  # a list or mapping is not hashable
        raise ConfigError(f"{source}: method.name: unknown method '{name}' "
                          f"(known: {', '.join(sorted(REGISTRY))})")
    params = build_dataclass(REGISTRY[name].Params, raw, source, "method")
    return MethodConfig(name=name, params=params)


# --------------------------------------------------------------------------------------------------
# generic dataclass building and validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _check_value(tp: Any, value: Any, where: str) -> Any:
    """Check (and gently coerce int->float) a value against a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            value = _float_or_none(value) if _float_or_none(value) is not None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is list or origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _float_or_none(text: str) -> float | None:
    """YAML 1.1 reads ``1e-3`` as a string; accept it where a number is expected."""
    try:
        return float(text)
    except ValueError:
        return None


def build_dataclass(cls: type, raw: Any, source: str, section: str) -> Any:
    """Instantiate dataclass ``cls`` from ``raw`` (dict or None) with full validation.

    Raises ConfigError naming ``source`` and ``section.key`` for unknown keys, wrong types, values
    outside ``choices`` or numeric bounds, and errors raised by the class's ``__post_init__``.
    """
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {section}: must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            known = f"known in {section}: {', '.join(fields)}" if fields else f"{section} takes no keys here"
            raise ConfigError(f"{source}: {section}.{key}: unknown key ({known})")
    kwargs = {}
    for key, value in raw.items():
        f = fields[key]
        where = f"{source}: {section}.{key}"
        value = _check_value(hints[key], value, where)
        meta = f.metadata or {}
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, meta['choices']))}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if meta.get("ge") is not None and value < meta["ge"]:
                raise ConfigError(f"{where}: must be >= {meta['ge']}, got {value}")
            if meta.get("gt") is not None and value <= meta["gt"]:
                raise ConfigError(f"{where}: must be > {meta['gt']}, got {value}")
            if meta.get("le") is not None and value > meta["le"]:
                raise ConfigError(f"{where}: must be <= {meta['le']}, got {value}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{source}: {section}.{err}") from None


def dataclass_to_dict(obj: Any) -> dict:
    if obj is None:
        return {}
    return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    return value


def field_docs(cls: type) -> list[tuple[str, Any, str]]:
    """``[(name, default, help)]`` for ``--help`` listings."""
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, default, (f.metadata or {}).get("help", "")))
    return out


# --------------------------------------------------------------------------------------------------
# YAML and overrides


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["train.lr=0.01", "method.name=joint"]`` -> ``[("train.lr", 0.01), ...]``; values parsed as YAML."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"<override>: '{item}': expected section.key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(f"<override>: '{item}': the key must look like section.key")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text  # a plain string that YAML cannot parse, e.g. "a: b"
        out.append((key, value))
    return out


def apply_override(raw: dict, key: str, value: Any, source: str = "<override>") -> None:
    """Set ``raw[section][key] = value`` in a nested config dict (validation happens afterwards)."""
    section, name = key.split(".", 1)
    sec = raw.setdefault(section, {})
    if not isinstance(sec, dict):
        raise ConfigError(f"{source}: {section}: must be a mapping")
    if section == "method" and name == "name" and sec.get("name") != value:
        # switching method: parameters of the old method do not carry over
        sec.clear()
    sec[name] = value


def read_yaml(path: str | Path) -> Any:
    """Safe-load a YAML file; missing files and syntax errors become ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{p}: YAML syntax error{where}: {problem}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- YAML file <- ``section.key=value`` overrides, validated once at the end."""
    source = str(path) if path else "<defaults>"
    raw = read_yaml(path) if path else {}
    if raw is None:
        raw = {}
    cfg = RunConfig.from_dict(raw, source)
    if overrides:
        cfg = cfg.replace(overrides)
    return cfg

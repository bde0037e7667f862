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
import importlib
import json
import math
import os
import re
import stat
import types
import typing
from collections.abc import Mapping
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
    "field_default",
    "parse_overrides",
    "apply_override",
    "load_config",
    "check_name",
    "check_finite",
    "short",
    "cut",
    "read_yaml",
    "load_yaml_text",
    "StrictLoader",
]


def _registry(path: str) -> Any:
    """``module:attribute`` of a plug-in registry (methods, encoders), looked up when a config is built.

    config is the package's leaf: the method and encoder registries import it (for ``opt`` and
    ``ConfigError``), so it reaches them as it reaches users' plug-ins - by name, at call time - and never
    imports them (the layering contract in pyproject.toml, checked by lint-imports, holds it to that).
    """
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


class ConfigError(ValueError):
    """A mistake in user input. ``str(err)`` is the one-line message shown to the user (exit code 2)."""


MAX_NAME = 100  # names become folder names (plus a timestamp); far below every filesystem's 255
MAX_YAML_BYTES = 1 << 20  # a config, space or spec is a few KiB; more is a mistake (or an attack)
MAX_YAML_NODES = 100_000  # values in one document after alias expansion (alias bombs stop here)
MAX_STRING = 4096  # any string value (paths included)
MAX_LIST = 1024  # any list value
INT_RANGE = (-(2**31), 2**31 - 1)  # integers without declared bounds stay inside int32
SEED_MAX = 2**32 - 1  # numpy, torch and Optuna seeds
NAME_MAX = 255  # bytes in one path component (Linux, macOS)
MAX_MULTIPLIER = 1e6  # per-player lr multipliers and the adaptive band


def cut(text: Any, limit: int = 80) -> str:
    """``str(text)`` cut to ``limit`` characters (keys and names inside messages)."""
    text = str(text) if not isinstance(text, str) else text
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: every message quotes user values through this, so a
    huge (or alias-expanded) value never floods the terminal. Large containers are not fully rendered."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        kind = type(value).__name__
        return f"<{kind} of {len(value)} items>"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value that cannot even be shown
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_name(value: Any, where: str) -> str:
    """A user-given name that becomes a path component (space, sweep, ablation, arm, experiment names):
    a non-empty printable string of at most ``MAX_NAME`` characters, with no path separator, no ``..``
    and no leading dot. Raises ConfigError naming ``where``."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty name, got {short(value)}")
    if len(value) > MAX_NAME:
        raise ConfigError(f"{where}: a name is at most {MAX_NAME} characters, got {len(value)}")
    if not value.isprintable():
        raise ConfigError(f"{where}: {short(value)} holds a control or non-printable character")
    if "/" in value or "\\" in value:
        raise ConfigError(f"{where}: {short(value)} may not hold a path separator (/ or \\)")
    if value.startswith(".") or ".." in value:
        raise ConfigError(f"{where}: {short(value)} may not start with a dot or hold '..'")
    return value


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
                    "dataset: synthetic:<preset>, mfeat:<view>+<view>, digits, a Parquet shard folder, "
                    "package.module:callable or a name from the mcrlab.datasets entry points")
    seed: int = opt(0, "seed of data generation and splits", ge=0, le=SEED_MAX)
    n_train: int = opt(0, "training samples (synthetic; 0 = the preset's default)", ge=0, le=10**8)
    num_modalities: int = opt(0, "modalities (synthetic; 0 = the preset's default, else >= 2)", ge=0, le=64)
    loader: str = opt("auto", "shard datasets: memory (whole splits on the device), stream (row groups read "
                      "lazily), auto (memory when all splits hold <= 256 MiB of features); other datasets "
                      "are in memory", choices=("auto", "memory", "stream"))
    workers: int = opt(1, "stream: reader processes of the DataLoader (0 = read in the training process)",
                       ge=0, le=64)
    resplit: str = opt("none", "shard folders, avdigits and plug-ins: re-draw which rows go to which split from "
                       "data.seed, keeping every split's size and class counts (train+val: test stays as stored; "
                       "all: every split); synthetic, mfeat and digits always re-draw with data.seed",
                       choices=("none", "train+val", "all"))
    shuffle_mib: float = opt(64.0, "stream: MiB of features shuffled together (a window of row groups); a "
                             "split that fits is shuffled exactly as in memory", gt=0.0, le=65536.0)

    def __post_init__(self) -> None:
        if self.num_modalities == 1:
            raise ConfigError("num_modalities: must be 0 (preset default) or >= 2")
        if self.resplit != "none" and (self.name.startswith(("synthetic:", "mfeat:")) or self.name == "digits"):
            raise ConfigError(f"resplit: {self.name} already re-draws its split with data.seed; resplit is for "
                              "shard folders, avdigits and plug-in datasets (use none)")
        if self.resplit != "none" and self.loader == "stream":
            raise ConfigError("resplit: a streamed dataset reads its stored split; use data.loader=memory or auto")
        if not self.name.startswith(("synthetic:", "mfeat:")):  # a path: within the file system's limits
            too_long = [p for p in Path(self.name).parts if len(p.encode("utf-8", "surrogatepass")) > NAME_MAX]
            if too_long:
                raise ConfigError(f"name: the path part {short(too_long[0], 40)} is longer than {NAME_MAX} bytes, "
                                  "the file-system limit for one name")
            if "\0" in self.name:
                raise ConfigError("name: a path may not hold a NUL character")


INIT_MODES = ("scratch", "unimodal", "unimodal_frozen")  # model.init besides an MLflow run id
RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")  # an MLflow run id (uuid4 hex)


@dataclass
class ModelConfig:
    hidden: int = opt(64, "encoder width: mlp hidden units; cnn/conv1d channels of the first block (doubling "
                          "per block); transformer d_model", ge=1, le=65536)
    depth: int = opt(2, "encoder depth: mlp hidden layers; cnn/conv1d conv blocks; transformer layers",
                     ge=1, le=16)
    latent: int = opt(32, "latent width d_m = out_dim of every built-in encoder", ge=1, le=65536)
    fusion: str = opt("late", "fusion head: late (sum of per-modality logits) or mlp (concat -> MLP)",
                      choices=("late", "mlp"))
    fusion_hidden: int = opt(64, "hidden width of the mlp fusion head", ge=1, le=65536)
    dropout: float = opt(0.0, "dropout inside encoders", ge=0.0, le=0.9)
    encoder: str = opt("mlp", "encoder of every modality: mlp (any shape, flattened), cnn (C,H,W), resnet18 "
                              "(C,H,W or T,F), conv1d (T,F), transformer (T,F), a name from the "
                              "mcrlab.encoders entry-point group, or package.module:Callable")
    encoders: list = opt([], "one encoder name per modality, e.g. [cnn, conv1d]; overrides encoder "
                             "(empty = encoder for all)")
    encoder_args: dict = opt({}, "keyword arguments of every modality's encoder, e.g. {kernel_size: 5}; "
                                 "built-ins take hidden/depth/latent/dropout above unless set here, and "
                                 "kernel_size (cnn, conv1d), heads/ff_mult (transformer); plug-ins get "
                                 "only these")
    encoders_args: list = opt([], "per-modality keyword arguments, one mapping per modality, merged over "
                                  "encoder_args, e.g. [{hidden: 16}, {heads: 2}] (empty = none)")
    channels_last: bool = opt(False, "channels_last memory format for the 2-D conv encoders (cnn, resnet18) "
                                     "on CUDA")
    init: str = opt("scratch", "encoder initialisation: scratch, unimodal (each encoder + head pre-trained alone, "
                               "cached by dataset and settings), unimodal_frozen (the same, encoders then frozen), "
                               "or the id of a finished MLflow run (32 hex digits): its checkpoint's encoders, and "
                               "heads where their shapes match")
    init_epochs: int = opt(0, "epochs of each unimodal pre-training (0 = train.epochs)", ge=0)

    def __post_init__(self) -> None:
        if self.init not in INIT_MODES and not RUN_ID_RE.match(self.init):
            raise ConfigError(f"init: {short(self.init)} is not one of {', '.join(INIT_MODES)} nor an MLflow run id "
                              "(32 hex digits)")
        check_encoder_name = _registry("mcrlab.models.registry:check_encoder_name")
        check_builtin_args = _registry("mcrlab.models.registry:check_builtin_args")

        for i, a in enumerate(self.encoders_args):
            if not isinstance(a, dict) or not all(isinstance(k, str) for k in a):
                raise ConfigError(f"encoders_args[{i}]: expected a mapping of argument -> value, got {a!r}")
        if self.encoders and self.encoders_args and len(self.encoders_args) != len(self.encoders):
            raise ConfigError(f"encoders_args: {len(self.encoders_args)} mapping(s) for "
                              f"{len(self.encoders)} encoders")
        per = self.encoders_args or [{}] * max(1, len(self.encoders))
        if self.encoders:
            plan = [(f"encoders[{i}]", n, per[i]) for i, n in enumerate(self.encoders)]
        else:
            plan = [("encoder", self.encoder, a) for a in per]
        for key, name, own in plan:
            check_encoder_name(name, key)
            check_builtin_args(name, {**self.encoder_args, **own}, key)  # built-ins: each argument exists


@dataclass
class TrainConfig:
    epochs: int = opt(30, "training epochs", ge=1, le=100_000)
    batch_size: int = opt(64, "global batch size", ge=2, le=1 << 20)
    lr: float = opt(1e-3, "base learning rate (fusion head; players scale it)", gt=0.0, le=10.0)
    weight_decay: float = opt(0.0, "weight decay", ge=0.0, le=100.0)
    optimizer: str = opt("adam", "optimizer (adam and adamw run torch's fused kernel where the parameters allow)",
                         choices=("adam", "adamw", "sgd"))
    momentum: float = opt(0.9, "SGD momentum", ge=0.0, le=1.0)
    seed: int = opt(0, "seed of initialisation, batching and permutations", ge=0, le=SEED_MAX)
    device: str = opt("auto", "device: auto (cuda if present), cpu, cuda", choices=("auto", "cpu", "cuda"))
    amp: str = opt("auto", "mixed precision: auto (bf16 on cuda), bf16, off", choices=("auto", "bf16", "off"))
    player_lr: list = opt([], "per-player lr multipliers r_m (empty = all 1); lr_m = lr * r_m")
    adaptive_lr: bool = opt(False, "update player lr multipliers each epoch from the players' D_m")
    adaptive_band: list = opt([0.2, 5.0], "clip band [lo, hi] for adaptive lr multipliers")
    adaptive_rate: float = opt(1.0, "strength of the adaptive update (exponent on the D ratio)", ge=0.0,
                               le=100.0)
    grad_clip: float = opt(0.0, "max gradient norm (0 = off)", ge=0.0, le=1e9)
    eval_perms: int = opt(8, "permutations used to measure D_m at evaluation", ge=1, le=10_000)
    probe_epochs: int = opt(100, "L-BFGS iterations (full batch) of the linear probe per frozen encoder (0 = off)", ge=0,
                              le=100_000)
    patience: int = opt(0, "early stopping on val/acc after this many epochs without gain (0 = off)", ge=0,
                          le=100_000)
    checkpoint_every: int = opt(1, "save a checkpoint every N epochs (when a checkpoint dir is given)", ge=1,
                                  le=100_000)
    compile: bool | str = opt(False, "torch.compile the training step (opt-in; the first steps compile): false, "
                              "true (= default), default, reduce-overhead (also captures the step as CUDA graphs "
                              "on a GPU), max-autotune; MCR compiles its whole step, other methods the forward",
                              choices=(False, True, "default", "reduce-overhead", "max-autotune"))

    def __post_init__(self) -> None:
        if len(self.player_lr) > 64:
            raise ConfigError(f"player_lr: one multiplier per modality (at most 64), got {len(self.player_lr)}")
        if any((not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 < r <= MAX_MULTIPLIER)
               for r in self.player_lr):  # written so that NaN fails too
            raise ConfigError(f"player_lr: every multiplier must be a finite number > 0 (at most {MAX_MULTIPLIER:g})")
        band = self.adaptive_band
        if (len(band) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in band)
                or not 0 < band[0] <= 1 <= band[1] <= MAX_MULTIPLIER):
            raise ConfigError(f"adaptive_band: must be [lo, hi] with 0 < lo <= 1 <= hi <= {MAX_MULTIPLIER:g}")


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
        # the method registry's hooks, by name (the methods import this module)
        check_method_config = _registry("mcrlab.methods.defaults:check_method_config")
        with_method_train_defaults = _registry("mcrlab.methods.defaults:with_method_train_defaults")

        unknown = sorted(map(str, set(raw) - set(cls.SECTIONS) - {"method"}))
        if unknown:
            raise ConfigError(f"{source}: unknown section '{cut(unknown[0])}' "
                              f"(known: {', '.join([*cls.SECTIONS, 'method'])})")
        raw = with_method_train_defaults(raw)  # the method's reference train.* defaults, where not given
        built = {}
        for name, section_cls in cls.SECTIONS.items():
            built[name] = build_dataclass(section_cls, raw.get(name), source, name)
        built["method"] = _build_method(raw.get("method"), source)
        cfg = cls(**built)
        check_method_config(cfg, source)  # e.g. a method defined only for model.fusion=late
        return cfg

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
        if items and items[0][0] == "method.name":  # train.* keys still at the old method's defaults follow the new
            switch_method_train_defaults = _registry("mcrlab.methods.defaults:switch_method_train_defaults")
            switch_method_train_defaults(raw["train"], self.method.name, items[0][1], {k for k, _ in items})
        for key, value in items:
            apply_override(raw, key, value, source)
        return RunConfig.from_dict(raw, source)


def _build_method(raw: Any, source: str) -> MethodConfig:
    REGISTRY = _registry("mcrlab.methods:REGISTRY")  # noqa: N806 - the method registry itself

    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: method: must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    name = raw.pop("name", "mcr")
    if not isinstance(name, str) or name not in REGISTRY:  # a list or mapping is not hashable
        raise ConfigError(f"{source}: method.name: unknown method {short(name)} "
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
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {short(value)}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {short(value)}")
        return value
    if tp is float:
        if isinstance(value, str):
            value = _float_or_none(value) if _float_or_none(value) is not None else value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {short(value)}")
        if isinstance(value, int) and abs(value) > 2**53:
            raise ConfigError(f"{where}: {short(value)} is too large for a float")
        value = float(value)
        if not math.isfinite(value):  # NaN fails every bound check below; inf passes some
            raise ConfigError(f"{where}: must be a finite number, got {value}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {short(value)}")
        if len(value) > MAX_STRING:
            raise ConfigError(f"{where}: a string of at most {MAX_STRING} characters, got {len(value)}")
        return value
    if tp is list or origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {short(value)}")
        if len(value) > MAX_LIST:
            raise ConfigError(f"{where}: a list of at most {MAX_LIST} items, got {len(value)}")
        check_finite(value, where)
        return list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {short(value)}")
        check_finite(value, where)
        return dict(value)
    return value


def check_finite(value: Any, where: str) -> None:
    """Refuse NaN and infinities anywhere inside a (nested) list or mapping value."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{where}: must hold finite numbers only, got {v}")
        if isinstance(v, (list, tuple)):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())


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
            raise ConfigError(f"{source}: {section}.{cut(key)}: unknown key ({known})")
    kwargs = {}
    for key, value in raw.items():
        f = fields[key]
        where = f"{source}: {section}.{key}"
        value = _check_value(hints[key], value, where)
        meta: Mapping[str, Any] = f.metadata or {}
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise ConfigError(f"{where}: {short(value)} is not one of {', '.join(map(str, meta['choices']))}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if meta.get("ge") is not None and value < meta["ge"]:
                raise ConfigError(f"{where}: must be >= {meta['ge']}, got {short(value)}")
            if meta.get("gt") is not None and value <= meta["gt"]:
                raise ConfigError(f"{where}: must be > {meta['gt']}, got {short(value)}")
            if meta.get("le") is not None and value > meta["le"]:
                raise ConfigError(f"{where}: must be <= {meta['le']}, got {short(value)}")
            if isinstance(value, int) and not INT_RANGE[0] <= value <= INT_RANGE[1] and (
                    meta.get("le") is None or meta.get("ge", meta.get("gt")) is None):
                raise ConfigError(f"{where}: {short(value)} is outside the integer range "
                                  f"[{INT_RANGE[0]}, {INT_RANGE[1]}]")
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


def field_default(f: dataclasses.Field) -> Any:
    """The default of a dataclass field: its ``default``, else a fresh ``default_factory()``."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field '{f.name}' has no default")


def field_docs(cls: type) -> list[tuple[str, Any, str]]:
    """``[(name, default, help)]`` for ``--help`` listings."""
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        out.append((f.name, field_default(f), f.metadata.get("help", "")))
    return out


# --------------------------------------------------------------------------------------------------
# YAML and overrides


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["train.lr=0.01", "method.name=joint"]`` -> ``[("train.lr", 0.01), ...]``; values parsed as YAML."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"<override>: '{cut(item)}': expected section.key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(f"<override>: '{cut(item)}': the key must look like section.key")
        try:
            value = load_yaml_text(text, f"<override> {cut(key)}") if text.strip() else ""
        except ConfigError as err:
            if "YAML syntax error" not in str(err):  # duplicate keys, alias bombs: refused
                raise
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


class _Refused(yaml.YAMLError):
    """A document the strict loader refuses (duplicate key, alias bomb); ``str`` is the message."""

    def __init__(self, message: str, mark: Any = None):
        super().__init__(message)
        self.message, self.mark = message, mark


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys (YAML says keys are unique; PyYAML keeps
    the last one silently) and documents that expand, through aliases, to more than ``MAX_YAML_NODES``
    values or refer to themselves (the expansion is counted on the node graph before anything is built,
    so a billion-laughs file is refused in milliseconds)."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None:
            _expanded_size(node)
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                try:
                    fresh = key not in seen
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if not fresh:
                    raise _Refused(f"duplicate key {short(key)}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(root: Any) -> int:
    """Values in the document once every alias is expanded (memoised over shared nodes; iterative)."""
    done: dict[int, int] = {}
    open_: set[int] = set()  # entered and not left: the current path (a child on it is a cycle)
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        k = id(node)
        kids = [] if isinstance(node, yaml.ScalarNode) else (
            [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else list(node.value))
        if leaving:
            total = 1 + sum(done[id(c)] for c in kids)
            if total > MAX_YAML_NODES:
                raise _Refused(f"expands to more than {MAX_YAML_NODES} values (aliases: *name); "
                               "refusing it", node.start_mark)
            done[k] = total
            open_.discard(k)
            continue
        if k in done:
            continue
        if k in open_:
            raise _Refused("an alias refers to a value that contains it (a recursive document)", node.start_mark)
        open_.add(k)
        stack.append((node, True))
        for c in kids:
            if id(c) in open_:
                raise _Refused("an alias refers to a value that contains it (a recursive document)",
                               c.start_mark)
            if id(c) not in done:
                stack.append((c, False))
    return done[id(root)]


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML text with ``StrictLoader``; every problem becomes one ConfigError line naming ``source``."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except _Refused as err:
        where = f" (line {err.mark.line + 1})" if err.mark is not None else ""
        raise ConfigError(f"{source}: {err.message}{where}") from None
    except yaml.reader.ReaderError as err:
        raise ConfigError(f"{source}: holds a character YAML does not allow ({err.character!r} at position "
                          f"{err.position})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: YAML syntax error{where}: {cut(problem)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file as UTF-8 text (at most ``MAX_YAML_BYTES``) and load it with ``StrictLoader``.

    A missing, unreadable, non-regular, oversized or non-UTF-8 file, a syntax error, a duplicate key or an
    alias bomb becomes one ConfigError line naming the file.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except OSError as err:
        raise ConfigError(f"{p}: cannot read it: {err.strerror or type(err).__name__}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{p}: is a folder, not a YAML file")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{p}: not a regular file (a device, pipe or socket)")
    if st.st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{p}: {st.st_size} bytes; a YAML file here is at most {MAX_YAML_BYTES} bytes")
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_YAML_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{p}: cannot read it: {err.strerror or type(err).__name__}") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{p}: more than {MAX_YAML_BYTES} bytes; a YAML file here is at most that")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{p}: not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start})") from None
    return load_yaml_text(text.removeprefix("\ufeff"), str(p))


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

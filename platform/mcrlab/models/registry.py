"""Encoders by name: the built-in registry, ``package.module:Callable`` plug-ins and the entry-point group.

An encoder builder is ``Callable(in_shape: tuple[int, ...], **args) -> nn.Module``; the module maps
``(B, *in_shape) -> (B, out_dim)`` and has an integer ``out_dim`` attribute. Names resolve in this order:

1. ``BUILTIN`` below (``mlp``, ``cnn``, ``resnet18``, ``conv1d``, ``transformer``);
2. ``package.module:Callable`` (anything with a colon), imported with importlib when the model is built;
3. a name registered by an installed package in the entry-point group ``mcrlab.encoders``, e.g. in its
   pyproject.toml: ``[project.entry-points."mcrlab.encoders"] myenc = "mypkg.encoders:build"``.

Built-ins also receive the shared knobs ``hidden``, ``depth``, ``latent`` and ``dropout`` from ModelConfig
(those their signature names), under the user's ``encoder_args``; plug-ins get only the user's arguments.

This module imports no torch at import time, so validating a config stays cheap; the builders are
imported when first used.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mcrlab.config import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "SHARED_ARGS", "is_plugin_path", "check_encoder_name",
           "known_names", "entry_point", "resolve", "builder_args", "check_builtin_args", "build_encoder",
           "check_encoder", "need_shape"]

ENTRY_POINT_GROUP = "mcrlab.encoders"

# name -> "module:builder" of the built-in encoders (imported lazily)
BUILTIN: dict[str, str] = {
    "mlp": "mcrlab.models.encoders:mlp",
    "cnn": "mcrlab.models.conv:cnn",
    "resnet18": "mcrlab.models.resnet:resnet18",
    "conv1d": "mcrlab.models.conv:conv1d",
    "transformer": "mcrlab.models.transformer:transformer",
}
# ModelConfig fields handed to a built-in builder whose signature names them
SHARED_ARGS = ("hidden", "depth", "latent", "dropout")

_PLUGIN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:"
                        r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def need_shape(name: str, in_shape: tuple[int, ...], ranks: tuple[int, ...], form: str) -> None:
    """A built-in's input check: ``in_shape`` has one of ``ranks`` axes, all >= 1, else ConfigError."""
    if len(in_shape) not in ranks or any(isinstance(s, bool) or not isinstance(s, int) or s < 1
                                          for s in in_shape):
        raise ConfigError(f"{name} needs {form} input, got {tuple(in_shape)}")


def is_plugin_path(name: str) -> bool:
    """Whether ``name`` looks like ``package.module:Callable`` (syntax only, nothing is imported)."""
    return bool(_PLUGIN_RE.match(name))


def entry_point(name: str) -> importlib.metadata.EntryPoint | None:
    """The entry point ``name`` of group ``mcrlab.encoders``, or None. Read anew each call (a package
    installed or put on sys.path meanwhile is seen)."""
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP).select(name=name)
    return next(iter(found), None)


def known_names() -> list[str]:
    """Built-in names, then the entry-point names that built-ins do not shadow."""
    eps = sorted({ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)} - set(BUILTIN))
    return [*BUILTIN, *eps]


def check_encoder_name(name: Any, key: str) -> None:
    """Cheap early check (config time): a built-in, an entry-point name, or plug-in path syntax."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{key}: expected an encoder name, got {name!r}")
    if ":" in name:
        if not is_plugin_path(name):
            raise ConfigError(f"{key}: '{name}' is not of the form package.module:Callable")
        return
    if name not in BUILTIN and entry_point(name) is None:
        raise ConfigError(f"{key}: unknown encoder '{name}' (known: {', '.join(known_names())}; "
                          f"or package.module:Callable)")


def _import(target: str, key: str) -> Any:
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or the module itself raising while it is imported
        raise ConfigError(f"{key}: cannot import '{module_name}': {type(err).__name__}: {err}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}: module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


def resolve(name: str, key: str) -> tuple[Callable[..., nn.Module], bool]:
    """``(builder, is_builtin)`` for a name; a plug-in that does not import or is not callable ->
    ConfigError naming ``key``."""
    check_encoder_name(name, key)
    if name in BUILTIN:
        return _import(BUILTIN[name], key), True
    if ":" in name:
        builder = _import(name, key)
    else:
        ep = entry_point(name)
        assert ep is not None  # checked above
        try:
            builder = ep.load()
        except Exception as err:
            raise ConfigError(f"{key}: entry point '{name}' ({ep.value}) of group {ENTRY_POINT_GROUP} "
                              f"does not load: {type(err).__name__}: {err}") from None
    if not callable(builder):
        raise ConfigError(f"{key}: '{name}' is a {type(builder).__name__}, not a callable "
                          f"Callable(in_shape, **args) -> nn.Module")
    return builder, False


def builder_args(builder: Callable[..., Any]) -> list[str]:
    """The keyword arguments a builder takes besides ``in_shape``."""
    return [p.name for p in list(inspect.signature(builder).parameters.values())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_builtin_args(name: str, args: dict, key: str) -> None:
    """Early check that a built-in encoder takes every argument named in ``args``."""
    if name not in BUILTIN or not args:
        return
    builder, _ = resolve(name, key)
    takes = builder_args(builder)
    for a in args:
        if a not in takes:
            raise ConfigError(f"{key}: {name} takes no argument '{a}' (its arguments: {', '.join(takes)})")


def build_encoder(name: str, in_shape: tuple[int, ...], args: dict, shared: dict, key: str) -> nn.Module:
    """Build one encoder for input shape ``in_shape`` (without the batch axis) and check its contract.

    ``args``: the user's arguments; ``shared``: ModelConfig's hidden/depth/latent/dropout, passed to
    built-ins whose signature names them (``args`` win). Every failure is a ConfigError naming ``key``.
    """
    builder, builtin = resolve(name, key)
    kwargs = dict(args)
    if builtin:
        takes = builder_args(builder)
        check_builtin_args(name, args, key)
        kwargs = {**{k: v for k, v in shared.items() if k in takes}, **args}
    try:
        module = builder(tuple(in_shape), **kwargs)
    except ConfigError as err:  # a built-in's own shape or argument check: add the key
        raise ConfigError(f"{key}: {err}") from None
    except Exception as err:
        raise ConfigError(f"{key}: {name}(in_shape={tuple(in_shape)}, **{kwargs}) raised "
                          f"{type(err).__name__}: {err}") from None
    if not builtin:
        check_encoder(module, in_shape, name, key)
    return module


def check_encoder(module: Any, in_shape: tuple[int, ...], name: str, key: str) -> None:
    """A plug-in's result: an nn.Module with int ``out_dim`` mapping a dummy (2, *in_shape) to (2, out_dim).

    The dummy pass runs in eval mode without gradients (no BatchNorm statistics move, no random draws),
    then the module's train/eval mode is restored.
    """
    import torch
    from torch import nn

    if not isinstance(module, nn.Module):
        raise ConfigError(f"{key}: {name} returned a {type(module).__name__}, not a torch.nn.Module")
    out_dim = getattr(module, "out_dim", None)
    if isinstance(out_dim, bool) or not isinstance(out_dim, int) or out_dim < 1:
        raise ConfigError(f"{key}: {name} returned a module without an integer out_dim >= 1 "
                          f"(out_dim = {out_dim!r})")
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *in_shape))
    except Exception as err:
        raise ConfigError(f"{key}: {name} fails on a dummy batch of shape {(2, *in_shape)}: "
                          f"{type(err).__name__}: {err}") from None
    finally:
        module.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, out_dim):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{key}: {name} maps a batch of shape {(2, *in_shape)} to {got}, expected "
                          f"(2, {out_dim}) = (B, out_dim)")

"""The method plug-in contract: a thin class with the few hooks the training loop calls.

The loop (``mcrlab.engine.fit.fit``) does, per batch::

    res = method.training_step(model, xs, y, ctx)      # forward + loss (and backward if it wants)
    if not res.backward_done: res.loss.backward()
    logs |= method.after_backward(model, ctx)          # gradient modulation (OGM-GE, ...)
    <all-reduce gradients when data-parallel>; <clip>; optimizer.step()

and per epoch ``on_epoch_start`` / ``on_validation`` / ``on_epoch_end``. Evaluation calls ``predict``. The maths of
each method lives in pure functions next to its class; the class only wires them to these hooks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mcrlab.config import ConfigError, opt
from mcrlab.models.net import ForwardOutput, MultimodalNet

__all__ = ["Method", "NoParams", "StepContext", "StepResult", "HeadsParams", "with_method_train_defaults",
           "switch_method_train_defaults", "check_method_config"]


@dataclass
class NoParams:
    """A method without hyperparameters."""


@dataclass
class HeadsParams:
    """Shared by methods that add the unimodal heads' losses ("multi-loss")."""

    w_uni: float = opt(1.0, "weight of the unimodal heads' CE losses", ge=0.0)


@dataclass
class StepContext:
    """What a hook may need to know about where training stands."""

    epoch: int  # 0-based
    step: int  # step within the epoch
    global_step: int
    epochs: int
    steps_per_epoch: int
    generator: torch.Generator  # seeded; use it for every random draw (permutations, noise)
    device: torch.device
    optimizer: torch.optim.Optimizer | None = None
    logs: dict[str, float] = field(default_factory=dict)


@dataclass
class StepResult:
    loss: torch.Tensor  # scalar
    out: ForwardOutput
    logs: dict[str, float] = field(default_factory=dict)
    backward_done: bool = False  # True when training_step already called backward itself


class Method:
    """Base class. Subclasses set ``name`` and ``Params`` and override what they need.

    ``params`` is the validated instance of ``Params``; ``model`` the raw (unwrapped) network.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    max_modalities: ClassVar[int | None] = None  # e.g. 2 for methods that only exist for two
    # the reference implementation's training settings, as ``train.<key>: value``; applied to every key the
    # user did not set (see ``with_method_train_defaults``), so they land in the resolved RunConfig (MLflow)
    defaults: ClassVar[dict[str, Any]] = {}
    # model.fusion values the method is defined for (None = any); checked when the config is built
    fusions: ClassVar[tuple[str, ...] | None] = None
    fusion_reason: ClassVar[str] = ""

    def __init__(self, params: Any, model: MultimodalNet, num_classes: int):
        self.params = params
        self.model = model
        self.num_classes = num_classes
        n_mod = model.num_modalities
        if self.max_modalities is not None and n_mod > self.max_modalities:
            raise ConfigError(f"method.name: '{self.name}' is defined for at most "
                              f"{self.max_modalities} modalities, the dataset has {n_mod}")
        if self.fusions is not None:
            from mcrlab.models.fusion import LateFusion

            fusion = "late" if isinstance(model.fusion, LateFusion) else "mlp"
            if fusion not in self.fusions:
                raise ConfigError(f"model.fusion: method '{self.name}' needs model.fusion="
                                  f"{' or '.join(self.fusions)} ({self.fusion_reason}); got '{fusion}'")

    # ---- hooks -------------------------------------------------------------------------------
    def extra_modules(self) -> nn.Module | None:
        """Trainable auxiliary networks (projections, decoders); optimised at the base lr."""
        return None

    def training_step(self, model: MultimodalNet, xs: list[torch.Tensor], y: torch.Tensor,
                      ctx: StepContext) -> StepResult:
        out = model(xs)
        loss, logs = self.loss(out, y, ctx)
        return StepResult(loss=loss, out=out, logs=logs)

    def loss(self, out: ForwardOutput, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """Default: fused CE only (joint training)."""
        loss = F.cross_entropy(out.fused, y)
        return loss, {"loss/fused": loss.item()}

    def after_backward(self, model: MultimodalNet, ctx: StepContext) -> dict[str, float]:
        return {}

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        return {}

    def on_validation(self, z: list[torch.Tensor], y: torch.Tensor) -> None:
        """Called after each epoch's validation pass with its latents (M tensors (N, d_m)) and labels (N,),
        before ``on_epoch_end``; for methods that diagnose representations (D&R) or need validation losses
        (Gradient-Blending)."""

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        """Called after evaluation with that epoch's diagnostics; may return coefficient logs."""
        return {}

    def predict(self, out: ForwardOutput) -> torch.Tensor:
        """Logits used for evaluation, (B, C). Default: the fused head."""
        return out.fused

    def selectable(self, epoch: int) -> bool:
        """May epoch ``epoch`` (0-based) be the run's best epoch (model selection on val/acc)? Default: yes.
        D&R says no before its first re-initialisation, so that its reported numbers are D&R's."""
        return True

    def trainable_modalities(self) -> list[int] | None:
        """Modalities whose players are trained (None = all)."""
        return None

    # ---- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict:
        extra = self.extra_modules()
        return {"extra": extra.state_dict() if extra is not None else None}

    def load_state_dict(self, state: dict) -> None:
        extra = self.extra_modules()
        if extra is not None and state.get("extra") is not None:
            extra.load_state_dict(state["extra"])


# ---- per-method defaults and config checks (called by mcrlab.config while a RunConfig is built) -------------

def _method_class(name: Any) -> type[Method] | None:
    from mcrlab.methods import REGISTRY  # late import: the registry imports this module

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
    import dataclasses

    from mcrlab.config import TrainConfig

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

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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mcrlab.config import ConfigError, opt
from mcrlab.models.net import ForwardOutput, MultimodalNet

__all__ = ["Method", "NoParams", "StepContext", "StepResult", "HeadsParams"]


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
    logs: dict[str, Any] = field(default_factory=dict)  # floats or detached 0-d tensors (fit reads them per epoch)
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
    def prepare(self, cfg: Any, dataset: Any, device: torch.device,
                unimodal_state: Callable[[], dict] | None = None) -> None:
        """Called by ``fit`` once, after construction and ``model.init``, before a checkpoint is loaded: for a
        method that needs more than the model (UMT's pre-trained unimodal teachers). ``unimodal_state()``
        gives the model's state dict after the cached unimodal pre-training of ``model.init=unimodal``
        (passed in by the engine, so methods never import it). Default: nothing."""

    def extra_modules(self) -> nn.Module | None:
        """Trainable auxiliary networks (projections, decoders); optimised at the base lr."""
        return None

    def compile_step(self, options: dict[str, Any]) -> bool:
        """train.compile: called once by ``fit`` before training, with torch.compile's keyword arguments
        (e.g. ``{"mode": "reduce-overhead"}``). A method whose loss is worth compiling together with the
        forward compiles its own step here and returns True (MCR); the default returns False, and ``fit``
        then compiles the model's training forward alone."""
        return False

    def training_step(self, model: MultimodalNet, xs: list[torch.Tensor], y: torch.Tensor,
                      ctx: StepContext) -> StepResult:
        out = model(xs)
        loss, logs = self.loss(out, y, ctx)
        return StepResult(loss=loss, out=out, logs=logs)

    def loss(self, out: ForwardOutput, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """Default: fused CE only (joint training)."""
        loss = F.cross_entropy(out.fused, y)
        # a detached 0-d tensor, not .item(): no host sync inside the step (fit reads logs once per epoch)
        return loss, {"loss/fused": loss.detach()}

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

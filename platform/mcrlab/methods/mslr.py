"""MSLR: Modality-Specific Learning Rates for additive late fusion (Yao & Mihalcea, Findings of ACL 2022).
Reference for the dynamic rule: the MSLR baseline of github.com/lihong2303/AGM @5a65542, run/CREMAD_main.py
(the paper has no public code of its own).

The model is trained with the fused CE only; what changes is each player's learning rate
lr_m = lr_group_m * r_m (lr_group_m is the player's lr set by the loop, i.e. train.lr * train.player_lr[m]).
Three strategies, as in the paper:
  keep:    r_m = mult_m for the whole run (mult = the ratios of the best unimodal learning rates);
  smooth:  r_m(e) = mult_m ** (1 - e / (E - 1)), a geometric move from the unimodal rates to the shared one;
  dynamic: r_m = mult_m * a_m(e) / mean(a_m(e-W), ..., a_m(e-1)), with a_m modality m's validation accuracy
           of its own logits W_m z_m + b/M after epoch e and W = ``memory`` (5, as the reference); during the
           first W epochs r_m = mult_m. A modality whose accuracy still rises steps larger, one that has
           plateaued steps smaller.
The reference applies r_m as a gradient multiplier under SGD, which for SGD is the same as scaling the lr;
here the player's lr is scaled (with Adam a gradient multiplier would cancel). The per-modality logits exist
only for the additive late-fusion head: with model.fusion=mlp the config is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mcrlab.config import ConfigError, opt
from mcrlab.methods.base import Method, StepContext
from mcrlab.models.fusion import LateFusion
from mcrlab.models.net import MultimodalNet


def mslr_multipliers(strategy: str, mult: list[float], epoch: int, epochs: int,
                     history: list[list[float]] | None = None, memory: int = 5) -> list[float]:
    """r_m for one epoch (see the module docstring). ``history``: per-modality validation accuracies of the
    epochs so far, oldest first (dynamic only); fewer than memory + 1 epochs means no dynamic change yet."""
    if strategy == "keep":
        return list(mult)
    if strategy == "smooth":
        frac = 1.0 - epoch / max(epochs - 1, 1)
        return [r ** frac for r in mult]
    if not history or len(history) <= memory:
        return list(mult)
    last, window = history[-1], history[-1 - memory:-1]
    out = []
    for m, r in enumerate(mult):
        mean = sum(h[m] for h in window) / memory
        out.append(r * last[m] / mean if mean > 0 else r)
    return out


@dataclass
class MSLRParams:
    strategy: str = opt("dynamic", "learning-rate strategy", choices=("keep", "smooth", "dynamic"))
    mult: list = opt([], "per-modality lr multipliers (the unimodal best-lr ratios; empty = all 1)")
    memory: int = opt(5, "dynamic: epochs in the accuracy memory (reference 5)", ge=1)

    def __post_init__(self) -> None:
        if any(isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0 for r in self.mult):
            raise ConfigError("mult: every multiplier must be a number > 0")


class MSLR(Method):
    name = "mslr"
    Params = MSLRParams
    defaults = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 1e-4}
    fusions = ("late",)
    fusion_reason = "it scores each modality with its own logits W_m z_m + b/M"

    def __init__(self, params: MSLRParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        M = model.num_modalities
        if params.mult and len(params.mult) != M:
            raise ConfigError(f"method.mult: expected {M} multipliers (one per modality), got {len(params.mult)}")
        self.mult = [float(r) for r in params.mult] or [1.0] * M
        self.base_lr: dict[int, float] = {}
        self.history: list[list[float]] = []
        self.rates = list(self.mult)

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        p = self.params
        self.rates = mslr_multipliers(p.strategy, self.mult, epoch, ctx.epochs, self.history, p.memory)
        if ctx.optimizer is not None:
            for g in ctx.optimizer.param_groups:
                m = g.get("player", -1)
                if m >= 0:
                    self.base_lr.setdefault(m, g["lr"])
                    g["lr"] = self.base_lr[m] * self.rates[m]
        return {f"coef/mslr/{m}": r for m, r in enumerate(self.rates)}

    def on_validation(self, z: list[torch.Tensor], y: torch.Tensor) -> None:
        with torch.no_grad():
            fusion = self.model.fusion
            assert isinstance(fusion, LateFusion)  # refused at config time otherwise
            M = len(z)
            acc = [float(((fusion.proj[m](zm) + fusion.bias / M).argmax(1) == y).float().mean())
                   for m, zm in enumerate(z)]
        self.history = [*self.history, acc][-(self.params.memory + 1):]

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        return {f"acc/mslr/{m}": a for m, a in enumerate(self.history[-1])} if self.history else {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "base_lr": dict(self.base_lr), "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.base_lr = {int(k): float(v) for k, v in state["base_lr"].items()}
        self.history = [[float(a) for a in h] for h in state["history"]]

"""MSLR: Modality-Specific Learning Rates for additive late fusion (Yao & Mihalcea, Findings of ACL 2022).

The model is trained with the fused CE only; what changes is each player's learning rate
lr_m = lr_group_m * r_m (lr_group_m is the player's lr set by the loop, i.e. train.lr * train.player_lr[m]).
Three strategies, as in the paper:
  keep:    r_m = mult_m for the whole run (mult = the ratios of the best unimodal learning rates);
  smooth:  r_m(e) = mult_m ** (1 - e / (E - 1)), a geometric move from the unimodal rates to the shared one;
  dynamic: r_m = mult_m * clip((max_j a_j / a_m) ** gamma, 1, max_boost), where a_m is modality m's training
           accuracy of its own logits (W_m z_m + b/M; heads h_m for non-additive fusion) over the previous
           epoch: a modality that lags gets a larger step.
The paper's dynamic rule adapts rates from per-modality performance each epoch; its exact update is not
reproduced here: the formula above is our choice (documented, searchable via gamma and max_boost). The
accuracies are measured on the training batches already seen, so no extra pass over data is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import ConfigError, opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.methods.modulation import modality_logits
from mcrlab.models.fusion import LateFusion
from mcrlab.models.net import MultimodalNet


def mslr_multipliers(strategy: str, mult: list[float], epoch: int, epochs: int, acc: list[float] | None,
                     gamma: float, max_boost: float) -> list[float]:
    """r_m for one epoch (see the module docstring); acc None (no statistics yet) means no dynamic boost."""
    if strategy == "keep":
        return list(mult)
    if strategy == "smooth":
        frac = 1.0 - epoch / max(epochs - 1, 1)
        return [r ** frac for r in mult]
    if acc is None:
        return list(mult)
    top = max(acc)
    return [r * min(max((top / max(a, 1e-6)) ** gamma, 1.0), max_boost) for r, a in zip(mult, acc, strict=True)]


@dataclass
class MSLRParams:
    strategy: str = opt("dynamic", "learning-rate strategy", choices=("keep", "smooth", "dynamic"))
    mult: list = opt([], "per-modality lr multipliers (the unimodal best-lr ratios; empty = all 1)")
    gamma: float = opt(1.0, "dynamic: exponent on the accuracy ratio", ge=0.0)
    max_boost: float = opt(4.0, "dynamic: largest boost of a lagging modality's lr", ge=1.0)

    def __post_init__(self) -> None:
        if any(isinstance(r, bool) or not isinstance(r, (int, float)) or r <= 0 for r in self.mult):
            raise ConfigError("mult: every multiplier must be a number > 0")


class MSLR(Method):
    name = "mslr"
    Params = MSLRParams

    def __init__(self, params: MSLRParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        M = model.num_modalities
        if params.mult and len(params.mult) != M:
            raise ConfigError(f"method.mult: expected {M} multipliers (one per modality), got {len(params.mult)}")
        self.mult = [float(r) for r in params.mult] or [1.0] * M
        self.base_lr: dict[int, float] = {}
        self.acc: list[float] | None = None
        self.rates = list(self.mult)
        self._correct, self._n = torch.zeros(M), 0

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        p = self.params
        self.rates = mslr_multipliers(p.strategy, self.mult, epoch, ctx.epochs, self.acc, p.gamma, p.max_boost)
        if ctx.optimizer is not None:
            for g in ctx.optimizer.param_groups:
                m = g.get("player", -1)
                if m >= 0:
                    self.base_lr.setdefault(m, g["lr"])
                    g["lr"] = self.base_lr[m] * self.rates[m]
        self._correct.zero_()
        self._n = 0
        return {f"coef/mslr/{m}": r for m, r in enumerate(self.rates)}

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        loss = F.cross_entropy(out.fused, y)
        with torch.no_grad():
            bias = model.fusion.bias if isinstance(model.fusion, LateFusion) else None
            for m, lg in enumerate(modality_logits(out, bias)):
                self._correct[m] += (lg.argmax(1) == y).sum().item()
            self._n += len(y)
        return StepResult(loss=loss, out=out, logs={"loss/fused": loss.item()})

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        self.acc = (self._correct / max(self._n, 1)).tolist()
        return {f"acc/mslr/{m}": a for m, a in enumerate(self.acc)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "base_lr": dict(self.base_lr), "acc": self.acc}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.base_lr = {int(k): float(v) for k, v in state["base_lr"].items()}
        self.acc = None if state["acc"] is None else [float(a) for a in state["acc"]]

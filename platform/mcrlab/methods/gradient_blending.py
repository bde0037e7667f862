"""Gradient-Blending (Wang, Tran & Feiszli, CVPR 2020, "What makes training multi-modal classification
networks hard?").

L = w_0 CE(g(z), y) + sum_m w_m CE(h_m(z_m), y), with the weights estimated online from each head's
overfitting-to-generalisation ratio between two checkpoints n and n + super_epochs:
  dG_k = L^V_k(n) - L^V_k(n + s)                                    (validation-loss gain)
  dO_k = (L^V_k(n + s) - L^T_k(n + s)) - (L^V_k(n) - L^T_k(n))      (change of the overfitting gap)
  w_k = (1 / Z) * dG_k / dO_k^2                                     (Z normalises sum_k w_k = 1)
Before the first estimate all M + 1 weights are 1 / (M + 1).

Choices: L^T_k is the mean training loss over the epoch's batches (no extra pass); L^V_k is computed on the
validation latents the loop hands to ``on_validation``. A head whose validation loss did not improve
(dG_k <= 0) gets weight 0; dO_k^2 is floored at 1e-8; if every head gets 0 the previous weights are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.models.net import MultimodalNet


def blend_weights(val_prev: torch.Tensor, train_prev: torch.Tensor, val_now: torch.Tensor,
                  train_now: torch.Tensor, eps: float = 1e-8) -> torch.Tensor | None:
    """Normalised w_k = dG_k / dO_k^2 from per-head losses at two checkpoints, all (K,) -> (K,) or None."""
    dg = (val_prev - val_now).clamp_min(0.0)
    do = (val_now - train_now) - (val_prev - train_prev)
    raw = dg / do.pow(2).clamp_min(eps)
    total = raw.sum()
    return None if total <= 0 else raw / total


@dataclass
class GradientBlendingParams:
    super_epochs: int = opt(1, "epochs between two weight estimates", ge=1)


class GradientBlending(Method):
    name = "gradient_blending"
    Params = GradientBlendingParams

    def __init__(self, params: GradientBlendingParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        K = model.num_modalities + 1
        self.weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None  # (val, train) losses at the last estimate
        self.val_loss: torch.Tensor | None = None
        self._train_sum, self._n = torch.zeros(K, dtype=torch.float64), 0

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        self._train_sum.zero_()
        self._n, self.val_loss = 0, None
        return {}

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        losses = torch.stack([F.cross_entropy(out.fused, y), *[F.cross_entropy(h, y) for h in out.heads]])
        self._train_sum += losses.detach().double().cpu()
        self._n += 1
        loss = (self.weights.to(losses.device, losses.dtype) * losses).sum()
        return StepResult(loss=loss, out=out, logs={"loss/fused": losses[0].item()})

    def on_validation(self, z: list[torch.Tensor], y: torch.Tensor) -> None:
        with torch.no_grad():
            heads = [h(zm) for h, zm in zip(self.model.heads, z, strict=True)]
            fused = self.model.fusion(z)
            self.val_loss = torch.stack([F.cross_entropy(fused.float(), y),
                                         *[F.cross_entropy(h.float(), y) for h in heads]]).double().cpu()

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        if self.val_loss is not None and self._n > 0 and (epoch + 1) % self.params.super_epochs == 0:
            train = self._train_sum / self._n
            if self.prev is not None:
                w = blend_weights(self.prev[0], self.prev[1], self.val_loss, train)
                if w is not None:
                    self.weights = w
            self.prev = (self.val_loss.clone(), train)
        names = ["fused", *[str(m) for m in range(len(self.weights) - 1)]]
        return {f"coef/gblend/{n}": float(w) for n, w in zip(names, self.weights, strict=True)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "weights": self.weights.clone(), "prev": self.prev}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.weights, self.prev = state["weights"].clone(), state["prev"]

"""MLA: Multimodal representation learning by Alternating unimodal Adaptation (Zhang, Latham & Xiao Li,
CVPR 2024).

One head H (Linear d -> C) is shared by all modalities. Training alternates modalities step by step
(m = global_step mod M): L = CE(H(z_m), y), so only encoder m and H learn at that step. To keep H from
forgetting the other modalities, H's weight gradient is projected onto the orthogonal complement of their
feature spaces (gradient modification, OWM-style): G <- G P_j for every j != m, where P_j (d, d) is updated
recursively from modality j's mean batch feature x after each of its steps:
  P_j <- P_j - (P_j x)(P_j x)^T / (alpha + x^T P_j x).
Prediction (test-time uncertainty-based fusion): w_m = softmax_m(-H(p_m)) per sample, with H(p_m) the entropy
of modality m's prediction, and logits = sum_m w_m H(z_m).

Choices: alpha = 1 (the OWM regulariser); the model's own fusion and unimodal heads are not trained by MLA
(the loop's head accuracy and D_m therefore describe untrained heads; the linear probes are the meaningful
diagnostic). All encoders must share one latent width (model.latent does that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mcrlab.config import ConfigError, opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.models.net import ForwardOutput, MultimodalNet


def owm_update(P: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Recursive projector update with one feature x: (d, d), (d,) -> (d, d)."""
    px = P @ x
    return P - torch.outer(px, px) / (alpha + x @ px)


def entropy_weights(logits: list[torch.Tensor]) -> torch.Tensor:
    """w = softmax over modalities of minus prediction entropy: M tensors (B, C) -> (M, B)."""
    ent = torch.stack([-(F.softmax(lg, 1) * F.log_softmax(lg, 1)).sum(1) for lg in logits])
    return F.softmax(-ent, dim=0)


@dataclass
class MLAParams:
    owm_alpha: float = opt(1.0, "regulariser alpha of the orthogonal projector update", gt=0.0)
    fusion: str = opt("entropy", "test-time fusion of the shared head's outputs", choices=("entropy", "mean"))


class MLA(Method):
    name = "mla"
    Params = MLAParams

    def __init__(self, params: MLAParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        dims = set(model.latent_dims)
        if len(dims) != 1:
            raise ConfigError(f"model.latent: mla shares one head, so all latents need one width, got {dims}")
        d = dims.pop()
        self.head = nn.Linear(d, num_classes)
        self.P = [torch.eye(d, dtype=torch.float64) for _ in range(model.num_modalities)]
        self._active = 0
        self._x: torch.Tensor | None = None

    def extra_modules(self) -> nn.Module:
        return self.head

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        m = ctx.global_step % model.num_modalities
        self._active = m
        self._x = out.z[m].detach().double().mean(0).cpu()
        loss = F.cross_entropy(self.head(out.z[m]), y)
        return StepResult(loss=loss, out=out, logs={"loss/shared": loss.item(), "coef/mla/active": float(m)})

    def after_backward(self, model, ctx: StepContext) -> dict[str, float]:
        g = self.head.weight.grad
        if g is not None:
            proj = torch.eye(g.shape[1], dtype=torch.float64)
            for j, P in enumerate(self.P):
                if j != self._active:
                    proj = proj @ P
            self.head.weight.grad = (g.double() @ proj.to(g.device)).to(g.dtype)
        if self._x is not None:
            self.P[self._active] = owm_update(self.P[self._active], self._x, self.params.owm_alpha)
        return {}

    def predict(self, out: ForwardOutput) -> torch.Tensor:
        logits = [self.head(z) for z in out.z]
        if self.params.fusion == "mean":
            return torch.stack(logits).mean(0)
        w = entropy_weights(logits)
        return (w[..., None] * torch.stack(logits)).sum(0)

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        # how much of H's input space each modality has claimed: 1 - trace(P_m) / d
        return {f"coef/mla/claimed/{m}": 1 - float(P.trace()) / P.shape[0] for m, P in enumerate(self.P)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "P": [P.clone() for P in self.P]}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.P = [P.clone() for P in state["P"]]

"""Shared maths of the gradient-modulation baselines (OGM-GE, AGM, MLB, PMR): per-modality confidence
scores, the logits each modality is scored on, and in-place scaling of a player's gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mcrlab.methods.base import Method, StepContext
from mcrlab.models.net import ForwardOutput, MultimodalNet

__all__ = ["confidence_scores", "modality_logits", "ratio_to_others", "scale_grads", "encoder_params",
           "CoefficientMethod"]


def confidence_scores(logits: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """s_m = sum_i softmax(logits_m)_i[y_i]: M tensors (B, C), labels (B,) -> (M,) (no gradient)."""
    with torch.no_grad():
        return torch.stack([F.softmax(lg.double(), dim=1).gather(1, y[:, None]).sum() for lg in logits])


def modality_logits(out: ForwardOutput, bias: torch.Tensor | None) -> list[torch.Tensor]:
    """Each modality's own logits inside the fused model, M tensors (B, C).

    Late fusion: l_m + b / M (OGM-GE scores W_m z_m + b/2 for two modalities). Non-additive fusion has no
    per-modality logits, so the unimodal heads h_m(z_m) stand in for them.
    """
    if out.contribs is None:
        return out.heads
    M = len(out.contribs)
    return [c + bias / M if bias is not None else c for c in out.contribs]


def ratio_to_others(scores: torch.Tensor) -> torch.Tensor:
    """rho_m = s_m / mean_{j != m} s_j, (M,) -> (M,). For two modalities this is the paper's s_a / s_v."""
    M = scores.numel()
    others = (scores.sum() - scores) / (M - 1)
    return scores / others.clamp_min(1e-12)


def encoder_params(model: MultimodalNet, m: int, matrices_only: bool = False) -> list[nn.Parameter]:
    """Encoder m's parameters (optionally only those with ndim > 1, i.e. no biases)."""
    return [p for p in model.encoders[m].parameters() if not matrices_only or p.ndim > 1]


def scale_grads(params: list[nn.Parameter], coef: float) -> None:
    """grad <- coef * grad in place (parameters without a gradient are skipped)."""
    for p in params:
        if p.grad is not None:
            p.grad.mul_(coef)


class CoefficientMethod(Method):
    """Base of methods that set one gradient coefficient per modality each step (OGM-GE, AGM, MLB).

    Keeps the current coefficients ``coef`` (M,) for ``after_backward``, logs them per step and their
    epoch mean as ``coef/<tag>/<m>``, and checkpoints them.
    """

    tag = ""

    def __init__(self, params, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        self.coef = torch.ones(model.num_modalities)
        self._sum, self._n = torch.zeros(model.num_modalities), 0

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        self._sum.zero_()
        self._n = 0
        return {}

    def record(self, coef: torch.Tensor) -> dict[str, float]:
        """Make ``coef`` (M,) current, count it in the epoch mean, and return its per-step logs."""
        self.coef = coef.float().cpu()
        self._sum += self.coef
        self._n += 1
        return {f"coef/{self.tag}/{m}": float(k) for m, k in enumerate(self.coef)}

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        mean = self._sum / max(self._n, 1)
        return {f"coef/{self.tag}/{m}": float(k) for m, k in enumerate(mean)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "coef": self.coef.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.coef = state["coef"].clone()

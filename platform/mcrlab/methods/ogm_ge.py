"""OGM-GE: On-the-fly Gradient Modulation with Generalisation Enhancement (Peng et al., CVPR 2022).

Per step, with s_m = sum_i softmax(W_m z_m + b/M)_i[y_i] (each modality's confidence in the true class):
  rho_m = s_m / mean_{j != m} s_j,   k_m = 1 - tanh(alpha * rho_m) if rho_m > 1 else 1,
and encoder m's gradient becomes g <- k_m * g + N(0, std(g)^2) (GE: Gaussian noise with the gradient's own
standard deviation, drawn per parameter tensor; `ge=false` gives plain OGM). Loss: fused CE only.

Choices where the paper leaves room: the paper defines rho for two modalities (s_a / s_v); we use the ratio
to the mean of the other modalities, which equals the paper's for M = 2. With a non-additive fusion head the
unimodal heads' logits replace W_m z_m + b/M. Only encoder parameters are modulated (as in the authors'
code, which modulates the encoders' layers). Modulation is active for epochs [start_epoch, end_epoch].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import ConfigError, opt
from mcrlab.methods.base import StepContext, StepResult
from mcrlab.methods.modulation import (
    CoefficientMethod,
    confidence_scores,
    encoder_params,
    modality_logits,
    ratio_to_others,
)
from mcrlab.models.fusion import LateFusion


def ogm_coefficients(ratios: torch.Tensor, alpha: float) -> torch.Tensor:
    """k_m = 1 - tanh(alpha * rho_m) where rho_m > 1, else 1: (M,) -> (M,)."""
    return torch.where(ratios > 1, 1 - torch.tanh(alpha * ratios), torch.ones_like(ratios))


def ge_modulate(grad: torch.Tensor, coef: float, generator: torch.Generator | None, noise: bool) -> torch.Tensor:
    """k * g (+ N(0, std(g)^2) when noise): the GE update of one gradient tensor, same shape."""
    out = grad * coef
    if noise and grad.numel() > 1:
        std = grad.float().std().item() + 1e-8
        eps = torch.randn(grad.shape, generator=generator, dtype=torch.float32).to(grad.device, grad.dtype)
        out = out + std * eps
    return out


@dataclass
class OGMGEParams:
    alpha: float = opt(0.8, "modulation strength alpha in k = 1 - tanh(alpha * rho)", ge=0.0)
    ge: bool = opt(True, "generalisation enhancement: add N(0, std(g)^2) noise to modulated gradients")
    start_epoch: int = opt(0, "first epoch (0-based) with modulation", ge=0)
    end_epoch: int = opt(-1, "last epoch with modulation (-1 = to the end)", ge=-1)

    def __post_init__(self) -> None:
        if self.end_epoch != -1 and self.end_epoch < self.start_epoch:
            raise ConfigError("end_epoch: must be -1 or >= start_epoch")


def in_window(epoch: int, start: int, end: int) -> bool:
    return epoch >= start and (end == -1 or epoch <= end)


class OGMGE(CoefficientMethod):
    name = "ogm_ge"
    tag = "ogm"
    Params = OGMGEParams

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        loss = F.cross_entropy(out.fused, y)
        bias = model.fusion.bias if isinstance(model.fusion, LateFusion) else None
        ratios = ratio_to_others(confidence_scores(modality_logits(out, bias), y))
        logs = {"loss/fused": loss.item(), **self.record(ogm_coefficients(ratios, self.params.alpha)),
                **{f"ratio/ogm/{m}": float(r) for m, r in enumerate(ratios.cpu())}}
        return StepResult(loss=loss, out=out, logs=logs)

    def after_backward(self, model, ctx: StepContext) -> dict[str, float]:
        p = self.params
        if not in_window(ctx.epoch, p.start_epoch, p.end_epoch):
            return {}
        for m in range(model.num_modalities):
            for w in encoder_params(model, m):
                if w.grad is not None:
                    w.grad = ge_modulate(w.grad, float(self.coef[m]), ctx.generator, p.ge)
        return {}

"""OGM-GE: On-the-fly Gradient Modulation with Generalisation Enhancement (Peng, Wei, Deng, Wang & Hu, CVPR
2022). Reference: github.com/GeWu-Lab/OGM-GE_CVPR2022 @343dc1d, main.py (train_epoch).

Per step, with s_m = sum_i softmax(W_m z_m + b/M)_i[y_i] (each modality's confidence in the true class):
  rho_m = s_m / mean_{j != m} s_j,   k_m = 1 - tanh(alpha * rho_m) if rho_m > 1 else 1,
and encoder m's weight gradients become g <- k_m * g + N(0, std(g)^2) (GE: Gaussian noise with the
gradient's own standard deviation, drawn per tensor, for every modulated tensor; `ge=false` gives plain OGM).
Loss: fused CE only.

As the reference: only weight tensors are modulated (the reference modulates the encoders' 4-D convolution
kernels, never biases; ``modulate_biases`` is off); modulation runs in epochs [start_epoch, end_epoch] with
the reference's window 0..50 of 100 epochs as the default (``end_fraction`` 0.5 of train.epochs when
end_epoch = -1); SGD momentum 0.9, weight decay 1e-4 (``defaults``; its StepLR(70, 0.1) is not set). The
paper defines rho for two modalities (s_a / s_v); for M > 2 we use the ratio to the mean of the other
modalities, which equals the paper's for M = 2. The scores need each modality's own logits W_m z_m + b/M,
which only the additive late-fusion head has: with model.fusion=mlp the config is refused.
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
    end_epoch: int = opt(-1, "last epoch with modulation (-1 = floor(end_fraction * train.epochs))", ge=-1)
    end_fraction: float = opt(0.5, "when end_epoch = -1: modulate up to this fraction of the epochs "
                                   "(reference: epochs 0..50 of 100; 1 = to the end)", ge=0.0, le=1.0)
    modulate_biases: bool = opt(False, "also modulate bias vectors (the reference does not)")

    def __post_init__(self) -> None:
        if self.end_epoch != -1 and self.end_epoch < self.start_epoch:
            raise ConfigError("end_epoch: must be -1 or >= start_epoch")

    def last_epoch(self, epochs: int) -> int:
        """The last modulated epoch (0-based) of a run of ``epochs`` epochs."""
        if self.end_epoch != -1:
            return self.end_epoch
        return epochs - 1 if self.end_fraction >= 1 else int(self.end_fraction * epochs)


def in_window(epoch: int, start: int, end: int) -> bool:
    return epoch >= start and (end == -1 or epoch <= end)


class OGMGE(CoefficientMethod):
    name = "ogm_ge"
    tag = "ogm"
    Params = OGMGEParams
    defaults = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 1e-4}
    fusions = ("late",)
    fusion_reason = "it scores each modality with its own logits W_m z_m + b/M"

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
        if not in_window(ctx.epoch, p.start_epoch, p.last_epoch(ctx.epochs)):
            return {}
        for m in range(model.num_modalities):
            for w in encoder_params(model, m, matrices_only=not p.modulate_biases):
                if w.grad is not None:
                    w.grad = ge_modulate(w.grad, float(self.coef[m]), ctx.generator, p.ge)
        return {}

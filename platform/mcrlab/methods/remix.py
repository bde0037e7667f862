"""Data Remixing (Ma, Chen & Deng, ICML 2025, "Improving multimodal learning balance and sufficiency through
data remixing"). Reference: github.com/MatthewMaxy/Remix_ICML2025 @80898aa, train.py (remix,
special_train_epoch), models/models.py, scripts/run_train.sh.

Warm-up (the first ``warmup`` epochs): multi-loss, L = CE(g(z), y) + w_warm * sum_m CE(h_m(z_m), y).
Afterwards every sample is decoupled to the one modality it is hardest for - the modality whose unimodal
prediction is closest to uniform, argmin_m KL(softmax h_m(z_m) || uniform) (log base 2, probabilities
clipped at 1e-9, as the reference) - and the batch is reassembled per modality: for each modality m, its
samples S_m are trained with the other modalities' latents zeroed,
  L_m = CE(g(0, .., z_m, .., 0)_{S_m}, y_{S_m}) + gamma * CE(h_m(z_m)_{S_m}, y_{S_m}),
one optimiser step per modality (modality M-1 first, as the reference trains the video subset before the
audio one), so a batch never mixes modalities' gradients.

Reference defaults: w_warm 0.5 (its alpha = beta), gamma 1 (gamma1 = gamma2), 10 warm-up epochs of 60
(``warmup`` = -1 scales that to round(epochs / 6)), Adam with weight decay 1e-4 (``defaults``).
Deviation, documented: the reference reassigns all training samples once per epoch from an evaluation pass
and then iterates over the two subsets in separate batches; here the assignment uses the current model on
each training batch (the hooks see batches, not sample ids), which splits each batch into per-modality
sub-batches. Data-parallel: the inner modality steps are all-reduced, gradient clipping applies to the last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext, StepResult


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """sum_c p_c log2(p_c C) with p = clip(softmax(logits), 1e-9, 1): (B, C) -> (B,)."""
    p = F.softmax(logits.double(), 1).clamp(1e-9, 1.0)
    return (p * torch.log2(p * logits.shape[1])).sum(1)


def assign_modalities(heads: list[torch.Tensor]) -> torch.Tensor:
    """Each sample's modality: argmin_m KL(p_m || uniform) (ties to the later modality, as the reference's
    ``KL_audio < KL_video`` sends ties to video): M tensors (B, C) -> (B,) long."""
    kl = torch.stack([kl_to_uniform(h) for h in heads])  # (M, B)
    flipped = kl.flip(0).argmin(0)  # the last minimum in the original order
    return kl.shape[0] - 1 - flipped


@dataclass
class RemixParams:
    warmup: int = opt(-1, "warm-up epochs of multi-loss training (-1 = round(epochs / 6), the reference's 10 "
                          "of 60)", ge=-1)
    w_warm: float = opt(0.5, "weight of the unimodal heads' CE during warm-up (reference 0.5)", ge=0.0)
    gamma: float = opt(1.0, "weight of the unimodal head's CE after warm-up (reference 1)", ge=0.0)

    def warmup_epochs(self, epochs: int) -> int:
        return self.warmup if self.warmup >= 0 else round(epochs / 6)


def _allreduce(params: list[torch.nn.Parameter]) -> None:
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


class Remix(Method):
    name = "remix"
    Params = RemixParams
    defaults = {"train.weight_decay": 1e-4}  # train.py: Adam, weight_decay 1e-4

    def __init__(self, params: RemixParams, model, num_classes: int):
        super().__init__(params, model, num_classes)
        self._counts = torch.zeros(model.num_modalities)

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        self._counts.zero_()
        return {}

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        p, M = self.params, model.num_modalities
        if ctx.epoch < p.warmup_epochs(ctx.epochs):
            uni = sum(F.cross_entropy(h, y) for h in out.heads)
            loss = F.cross_entropy(out.fused, y) + p.w_warm * uni
            return StepResult(loss=loss, out=out, logs={"loss/fused": F.cross_entropy(out.fused, y).item()})
        opt_ = ctx.optimizer
        if opt_ is None:
            raise RuntimeError("remix steps the optimiser once per modality: StepContext.optimizer is required")
        with torch.no_grad():
            who = assign_modalities([h.detach() for h in out.heads])
        order = [m for m in reversed(range(M)) if bool((who == m).any())]
        losses, n = [], len(y)
        for i, m in enumerate(order):
            rows = who == m
            self._counts[m] += int(rows.sum())
            z = [out.z[j][rows] if j == m else torch.zeros_like(out.z[j][rows]) for j in range(M)]
            loss_m = F.cross_entropy(model.fusion(z), y[rows]) + p.gamma * F.cross_entropy(
                model.heads[m](out.z[m][rows]), y[rows])
            loss_m.backward()
            losses.append(loss_m.detach() * int(rows.sum()) / n)
            if i < len(order) - 1:  # the loop steps after the last one
                if dist.is_initialized():
                    _allreduce([q for g in opt_.param_groups for q in g["params"]])
                opt_.step()
                opt_.zero_grad(set_to_none=True)
        loss = torch.stack(losses).sum()
        return StepResult(loss=loss, out=out, logs={"loss/remix": loss.item()}, backward_done=True)

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        total = float(self._counts.sum())
        if total == 0 or math.isnan(total):
            return {}
        return {f"coef/remix/share/{m}": float(c) / total for m, c in enumerate(self._counts)}

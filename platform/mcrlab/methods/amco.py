"""AMCo: Adaptive Mask Co-optimisation (Zhou et al., ICASSP 2023, "Adaptive mask co-optimization for modal
dependence in multimodal learning"), as implemented by BalanceBenchmark @4c1482f,
balancemm/trainer/AMCo_trainer.py and balancemm/models/avclassify_model.py (BaseClassifierAMCoModel);
settings from configs/trainer_config.yaml (AMCo) and configs/global_config.yaml. No code by the authors was
found; BalanceBenchmark is the reference.

Each modality has its own logits l_m = W_m z_m + b/M inside the late-fusion head. A modality the model
depends on too much ("dependent") has a random set of class logits masked out, and the prediction is a
learnt C x C layer on the sum, o = W* (sum_m mask_m * l_m) + b*, with mask_m = 1 for the others:

  pt = sin(pi/2 * min(eps, l_t) / eps),  l_t = step * epoch / 10      (step, epoch 0-based; the reference
                                                                        adds epoch/10 after every batch)
  N  = floor(pt * C) classes masked, their positions drawn at random per step, one mask for the batch,
  L  = CE(o, y) + sum_m CE(mask_m * l_m, y),
  dependent_m <- share_m > sigma after the step, share_m = (1/B) sum_b sum_{c in block m}
                 softmax([mask_0 l_0, ..., mask_{M-1} l_{M-1}]_b)_c       (one softmax over all M*C logits),

with every modality independent at the start of each epoch. Early in each epoch (and in the whole first
epoch) pt is small and few classes are masked; from a few batches into an epoch all C are, so a dependent
modality then drops out of the fused prediction and its own CE for that step.

Reference defaults: sigma 0.5, eps 0.3, modulation in every epoch (its window 0..80 exceeds its 30 epochs);
AdamW with weight decay 0.01 (global_config.yaml, ``defaults``). Its ``alpha`` and ``U`` settings are read but
never used and are not exposed here. For M > 2 the rule is the reference's own (its loop is over any number of
modalities). Data-parallel: each rank draws its own mask and judges dependence on its own shard (the reference,
under DataParallel, on the gathered batch). Needs the per-modality logits of late fusion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mcrlab.config import opt
from mcrlab.methods.base import StepContext, StepResult
from mcrlab.methods.modulation import CoefficientMethod, confidence_scores, modality_logits
from mcrlab.models.net import ForwardOutput


def amco_mask_fraction(epoch: int, step: int, eps: float) -> float:
    """pt = sin(pi/2 * min(eps, step * epoch / 10) / eps): the fraction of classes masked at this step."""
    return math.sin(math.pi / 2 * min(eps, step * epoch / 10) / eps)


def amco_class_mask(num_classes: int, pt: float, generator: torch.Generator | None) -> torch.Tensor:
    """floor(pt * C) zeros at random positions, ones elsewhere: (C,) float."""
    n_masked = int(pt * num_classes)
    mask = torch.ones(num_classes)
    mask[torch.randperm(num_classes, generator=generator)[:n_masked]] = 0.0
    return mask


def dependence_shares(logits: list[torch.Tensor]) -> torch.Tensor:
    """Each modality's share of one softmax over all M*C logits, averaged over the batch:
    M tensors (B, C) -> (M,), summing to 1."""
    with torch.no_grad():
        p = F.softmax(torch.cat([lg.double() for lg in logits], 1), 1)  # (B, M*C)
        C = logits[0].shape[1]
        return torch.stack([p[:, m * C:(m + 1) * C].sum(1).mean() for m in range(len(logits))])


def amco_outputs(logits: list[torch.Tensor], dependent: torch.Tensor, mask: torch.Tensor, star: nn.Linear
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The masked per-modality logits (a dependent modality's times ``mask``) and the prediction
    W* (sum_m masked_m) + b*: M tensors (B, C), (M,) bool, (C,) -> ((B, C), M tensors (B, C))."""
    masked = [lg * mask.to(lg.device, lg.dtype) if bool(dependent[m]) else lg for m, lg in enumerate(logits)]
    return star(torch.stack(masked).sum(0)), masked


@dataclass
class AMCoParams:
    sigma: float = opt(0.5, "a modality whose share of the joint softmax exceeds sigma is dependent and masked "
                            "(reference 0.5)", ge=0.0, le=1.0)
    eps: float = opt(0.3, "ramp of the masked fraction, pt = sin(pi/2 min(eps, step*epoch/10) / eps) "
                          "(reference 0.3)", gt=0.0)
    score: str = opt("share", "dependence score: share (the reference: each modality's share of one softmax over "
                              "all masked logits) or confidence (its share of the true-class confidences "
                              "s_m = sum_i softmax(l_m)_i[y_i] of the unmasked logits)",
                     choices=("share", "confidence"))


class AMCo(CoefficientMethod):
    name = "amco"
    tag = "amco"
    Params = AMCoParams
    defaults = {"train.optimizer": "adamw", "train.weight_decay": 0.01}  # BalanceBenchmark global_config.yaml
    fusions = ("late",)
    fusion_reason = "it masks each modality's own logits W_m z_m + b/M before they are summed"

    def __init__(self, params: AMCoParams, model, num_classes: int):
        super().__init__(params, model, num_classes)
        self.star = nn.Linear(num_classes, num_classes)  # the reference's linear_star on the summed logits
        self.dependent = torch.zeros(model.num_modalities, dtype=torch.bool)

    def extra_modules(self) -> nn.Module:
        return self.star

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        self.dependent = torch.zeros(self.model.num_modalities, dtype=torch.bool)  # the reference resets it
        return super().on_epoch_start(epoch, ctx)

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        pt = amco_mask_fraction(ctx.epoch, ctx.step, self.params.eps)
        mask = amco_class_mask(self.num_classes, pt, ctx.generator)
        fused, masked = amco_outputs(modality_logits(out, model.fusion.bias), self.dependent, mask, self.star)
        loss = F.cross_entropy(fused, y) + sum(F.cross_entropy(lg, y) for lg in masked)
        logs = self.record(self.dependent.float())  # coef/amco/m: the modalities masked at this step
        if self.params.score == "share":
            shares = dependence_shares(masked)
        else:
            s = confidence_scores(modality_logits(out, model.fusion.bias), y)
            shares = s / s.sum()
        self.dependent = shares > self.params.sigma
        logs["coef/amco/masked_classes"] = float(self.num_classes - mask.sum())
        logs["loss/fused"] = F.cross_entropy(fused, y).item()
        return StepResult(loss=loss, out=out, logs=logs)

    def predict(self, out: ForwardOutput) -> torch.Tensor:
        return self.star(out.fused)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "dependent": self.dependent.clone()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.dependent = state["dependent"].clone()

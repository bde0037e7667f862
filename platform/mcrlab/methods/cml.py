"""CML: Calibrating Multimodal Learning (Ma, Zhang, Zhang, Wu, Fu, Zhou & Hu, ICML 2023, "Calibrating
multimodal learning"). References: github.com/QingyangZhang/CML @9d2496e, cpm/CPM_Nets.py (rank_loss: the
regulariser, on incomplete-view CPM-Nets), and its late-fusion form in BalanceBenchmark @4c1482f,
balancemm/trainer/CML_trainer.py.

The regulariser asks that removing a modality never makes the prediction more confident. Each epoch draws a
random order of the modalities (as BalanceBenchmark, per epoch); per step the fused logits lose one
modality's contribution at a time, o_0 = g(z), o_{i+1} = o_i - W_{r_i} z_{r_i} (late fusion), i = 0..M-2, and
  L = (1/M) sum_{i=0}^{M-1} CE(o_i, y) + lam * sum_{i=0}^{M-2} sum_b relu((c_{i+1,b} - c_{i,b}) * sign_{i,b}),
with c the top-class probability and sign = 0 where the reduced prediction is right and the fuller one wrong
(the official "trick 1"), else 1. lam 0.1 as BalanceBenchmark's config.

Deviation, documented: the penalty is per sample as in the official rank_loss; BalanceBenchmark applies the
relu to the batch sum and drops the sign. Needs the per-modality contributions of late fusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext, StepResult


def confidence_penalty(fuller: torch.Tensor, reduced: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sum_b relu((c_reduced - c_fuller) * sign): logits (B, C) twice, labels (B,) -> scalar."""
    c_full, p_full = F.softmax(fuller, 1).max(1)
    c_red, p_red = F.softmax(reduced, 1).max(1)
    sign = (~((p_red == y) & (p_full != y))).to(fuller.dtype)
    return F.relu((c_red - c_full) * sign).sum()


@dataclass
class CMLParams:
    lam: float = opt(0.1, "weight of the confidence regulariser (BalanceBenchmark 0.1)", ge=0.0)


class CML(Method):
    name = "cml"
    Params = CMLParams
    fusions = ("late",)
    fusion_reason = "it removes each modality's contribution W_m z_m from the fused logits"

    def __init__(self, params: CMLParams, model, num_classes: int):
        super().__init__(params, model, num_classes)
        self.order = list(range(model.num_modalities))

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        self.order = torch.randperm(self.model.num_modalities, generator=ctx.generator).tolist()
        return {}

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        M = model.num_modalities
        current, ce, reg = out.fused, F.cross_entropy(out.fused, y), out.fused.new_zeros(())
        for i in range(M - 1):
            reduced = current - out.contribs[self.order[i]]
            ce = ce + F.cross_entropy(reduced, y)
            reg = reg + confidence_penalty(current, reduced, y)
            current = reduced
        loss = ce / M + self.params.lam * reg
        logs = {"loss/fused": F.cross_entropy(out.fused, y).item(), "coef/cml/penalty": reg.item()}
        return StepResult(loss=loss, out=out, logs=logs)

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        return {"coef/cml/first_removed": float(self.order[0])}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.order = [int(m) for m in state["order"]]

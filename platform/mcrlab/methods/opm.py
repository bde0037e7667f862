"""OPM: On-the-fly Prediction Modulation (Wei, Hu, Du & Wen, T-PAMI 2024, "On-the-fly modulation for
balanced multimodal learning"). Reference: github.com/GeWu-Lab/BML_TPAMI2024 @4b3aa4f, code/models/Classifier.py
(calcu_q, Modality_drop), code/main.py, code/scripts/train_opm.sh; cross-checked with BalanceBenchmark @4c1482f,
balancemm/trainer/OPM_trainer.py. (The same paper's OGM is this platform's ``ogm_ge``.)

Per step, with s_m = sum_i softmax(W_m z_m + b/M)_i[y_i] (each modality's confidence in the true class):
  rho_m = tanh(relu(s_m / mean_{j != m} s_j - 1)),   q_m = clip(q_base (1 + lam rho_m), 0, 1) if rho_m > 0 else 0,
so only a leading modality gets a drop probability. With probability p_exe the step drops: each sample's
latent of modality m is zeroed with probability q_m (Bernoulli masks), the kept latents are scaled by
1 / (1 - theta) with theta = sum_m d_m q_m / sum_m d_m, samples that lost every modality are left out, and the
loss is the fused CE of the masked latents. Otherwise (and during warm-up) the loss is the plain fused CE.
The leading modality's prediction is thus weakened on the fly, and the others have to carry more of it.

Reference defaults: q_base 0.5, lam 0.5, p_exe 0.7 (train_opm.sh); no modulation in the first 6 of 100
epochs (``start_epoch`` = -1 scales that to round(0.06 * train.epochs)); AdamW with weight decay 0.01
(``defaults``). For M > 2 the ratio is to the mean of the other modalities (the reference has two; it equals
the reference for M = 2). The scores need each modality's own logits W_m z_m + b/M: model.fusion=late only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import opt
from mcrlab.methods.base import StepContext, StepResult
from mcrlab.methods.modulation import CoefficientMethod, confidence_scores, modality_logits, ratio_to_others


def opm_drop_probabilities(scores: torch.Tensor, q_base: float, lam: float) -> torch.Tensor:
    """q_m = clip(q_base (1 + lam tanh(relu(rho_m - 1))), 0, 1) where that tanh > 0, else 0: (M,) -> (M,)."""
    r = torch.tanh(torch.relu(ratio_to_others(scores) - 1))
    return torch.where(r > 0, (q_base * (1 + lam * r)).clamp(0.0, 1.0), torch.zeros_like(r))


def drop_latents(z: list[torch.Tensor], q: torch.Tensor, generator: torch.Generator | None
                 ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Bernoulli(1 - q_m) masks per sample and modality, kept latents scaled by 1 / (1 - theta):
    M latents (B, d_m), (M,) -> (M latents (B', d_m) of the samples keeping a modality, keep mask (B,))."""
    B = z[0].shape[0]
    dims = torch.tensor([zm.shape[1] for zm in z], dtype=torch.float64)
    theta = float((dims * q.double().cpu()).sum() / dims.sum())
    keep_prob = (1 - q.double().cpu())[:, None].expand(-1, B)
    masks = torch.bernoulli(keep_prob, generator=generator).to(z[0].device, z[0].dtype)  # (M, B)
    keep = masks.sum(0) > 0
    scale = 1.0 / (1.0 - theta + 1e-5)
    return [(zm * masks[m][:, None] * scale)[keep] for m, zm in enumerate(z)], keep


@dataclass
class OPMParams:
    q_base: float = opt(0.5, "base drop probability of a leading modality (reference 0.5)", ge=0.0, le=1.0)
    lam: float = opt(0.5, "growth of the drop probability with the lead, q = q_base (1 + lam rho) (reference "
                          "0.5)", ge=0.0)
    p_exe: float = opt(0.7, "probability that a step drops at all (reference 0.7)", ge=0.0, le=1.0)
    start_epoch: int = opt(-1, "first modulated epoch, 0-based (-1 = round(0.06 * train.epochs), the "
                               "reference's 6 warm-up epochs of 100)", ge=-1)

    def first_epoch(self, epochs: int) -> int:
        return self.start_epoch if self.start_epoch >= 0 else round(0.06 * epochs)


class OPM(CoefficientMethod):
    name = "opm"
    tag = "opm"
    Params = OPMParams
    defaults = {"train.optimizer": "adamw", "train.weight_decay": 0.01}  # code/main.py: AdamW, wd 0.01
    fusions = ("late",)
    fusion_reason = "it scores each modality with its own logits W_m z_m + b/M"

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        p = self.params
        with torch.no_grad():
            scores = confidence_scores(modality_logits(out, model.fusion.bias), y)
        q = opm_drop_probabilities(scores, p.q_base, p.lam)
        logs = self.record(q)
        active = ctx.epoch >= p.first_epoch(ctx.epochs)
        draw = float(torch.rand((), generator=ctx.generator)) if active else 1.0
        if active and draw < p.p_exe and float(q.max()) > 0:
            z, keep = drop_latents(out.z, q, ctx.generator)
            if bool(keep.any()):
                loss = F.cross_entropy(model.fusion(z), y[keep])
            else:  # every sample lost every modality: nothing to learn from (the reference skips the batch)
                loss = out.fused.sum() * 0.0
            logs["coef/opm/dropped"] = 1.0
        else:
            loss = F.cross_entropy(out.fused, y)
            logs["coef/opm/dropped"] = 0.0
        logs["loss/fused"] = loss.item()
        return StepResult(loss=loss, out=out, logs=logs)

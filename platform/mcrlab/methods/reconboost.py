"""ReconBoost (Hua et al., ICML 2024, "ReconBoost: boosting can achieve modality reconcilement").

Modalities are learned alternately, boosting-style, and the model predicts with the ensemble of the
unimodal learners, F(x) = sum_m h_m(z_m). A run cycles through stages of `stage_epochs` epochs:
  boost m (m = 0..M-1, each followed by) -> global rectification.
Boosting stage of modality m (only encoder m and head m receive gradient):
  L = mean_i (w1 - w2 * p_{-m}(y_i | x_i)) * CE(h_m(z_m)_i, y_i) + alpha * MSE(softmax h_m, softmax h_prev)
where p_{-m} = softmax(sum_{j != m} h_j(z_j)) is the (detached) ensemble of the other learners: samples the
others already fit get less weight (the reconcilement term: the new learner corrects, not repeats). h_prev is
the previously boosted modality's head (both sides detached, as in the public reference implementation, so
the term is logged but carries no gradient; kept for fidelity and as a diagnostic).
Global rectification stage: L = CE(sum_m h_m(z_m), y) over all learners.

Choices: w1 = w2 = 1 makes the per-sample weight (1 - p_{-m}(y)) in [0, 1], a residual-like boosting weight;
the reference's extra 1/C factor (a mean over classes) is dropped as a constant rescaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.models.net import ForwardOutput


def reconboost_stage(epoch: int, stage_epochs: int, M: int) -> int:
    """Which learner epoch trains: 0..M-1 boosts that modality, -1 is global rectification."""
    s = (epoch // stage_epochs) % (2 * M)
    return s // 2 if s % 2 == 0 else -1


def boosting_loss(logits: torch.Tensor, others: torch.Tensor, y: torch.Tensor, w1: float,
                  w2: float) -> torch.Tensor:
    """mean_i (w1 - w2 * softmax(others)_i[y_i]) * CE(logits_i, y_i): (B, C), (B, C) detached, (B,) -> scalar."""
    weight = w1 - w2 * F.softmax(others.detach(), 1).gather(1, y[:, None]).squeeze(1)
    return (weight * F.cross_entropy(logits, y, reduction="none")).mean()


@dataclass
class ReconBoostParams:
    stage_epochs: int = opt(1, "epochs per stage (boost one modality, then rectify)", ge=1)
    w1: float = opt(1.0, "weight of the learner's own CE", ge=0.0)
    w2: float = opt(1.0, "weight of the reconcilement (others' confidence) discount", ge=0.0)
    alpha: float = opt(0.5, "weight of the logged consolidation term MSE(p_m, p_prev)", ge=0.0)


class ReconBoost(Method):
    name = "reconboost"
    Params = ReconBoostParams

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        M, p = model.num_modalities, self.params
        stage = reconboost_stage(ctx.epoch, p.stage_epochs, M)
        logs = {"coef/reconboost/stage": float(stage)}
        if stage < 0:
            loss = F.cross_entropy(torch.stack(out.heads).sum(0), y)
            logs["loss/rectify"] = loss.item()
        else:
            m = stage
            others = torch.stack([out.heads[j] for j in range(M) if j != m]).sum(0)
            loss = boosting_loss(out.heads[m], others, y, p.w1, p.w2)
            prev = (m - 1) % M
            ga = F.mse_loss(F.softmax(out.heads[m].detach(), 1), F.softmax(out.heads[prev].detach(), 1))
            loss = loss + p.alpha * ga
            logs.update({"loss/boost": loss.item(), "loss/consolidation": ga.item()})
        return StepResult(loss=loss, out=out, logs=logs)

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        stage = reconboost_stage(epoch, self.params.stage_epochs, self.model.num_modalities)
        return {"coef/reconboost/stage": float(stage)}

    def predict(self, out: ForwardOutput) -> torch.Tensor:
        return torch.stack(out.heads).sum(0)

"""ReconBoost (Hua, Xu, Yang, Zhou, Ma & Huang, ICML 2024, "ReconBoost: boosting can achieve modality
reconcilement"). Reference: github.com/huacong/ReconBoost @14ab57a, train.py, models/dynamic_net.py.

Modalities are learned alternately, boosting-style, and the model predicts with the ensemble of the
unimodal learners, F(x) = rho * sum_m H(z_m): one classification head H shared by all modalities (the
reference's common_space=True; ``shared_head=false`` gives each modality its own head h_m) and a learnable
boost rate rho (initialised at 1.0, as the reference's --boost_rate). A run cycles through stages of
`stage_epochs` epochs: boost m (m = 0..M-1, each followed by) -> global rectification.
Boosting stage of modality m (only encoder m and the head receive gradient):
  L = (1/C) mean_i (w1 - w2 * p_{-m}(y_i | x_i)) * CE(H(z_m)_i, y_i) + alpha * MSE(softmax H(z_m), softmax H(z_prev))
where p_{-m} = softmax(rho * sum_{j != m} H(z_j)) is the (detached) ensemble of the other learners: samples
the others already fit get less weight. The 1/C is the reference's mean over the one-hot classes. z_prev is
the previously boosted modality (both sides detached, as in the reference, so the term is logged but carries
no gradient). Global rectification stage: L = CE(rho * sum_m H(z_m), y) over all learners and rho.

Reference defaults: w1 = 5, w2 = 1, alpha = 0.5, SGD momentum 0.9, weight decay 5e-4 (``defaults``).
Simplification, documented: the reference keeps a growing list of learners (one per stage); here each
modality has one encoder that later stages keep training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mcrlab.config import ConfigError, opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.models.net import ForwardOutput, MultimodalNet


def reconboost_stage(epoch: int, stage_epochs: int, M: int) -> int:
    """Which learner epoch trains: 0..M-1 boosts that modality, -1 is global rectification."""
    s = (epoch // stage_epochs) % (2 * M)
    return s // 2 if s % 2 == 0 else -1


def boosting_loss(logits: torch.Tensor, others: torch.Tensor, y: torch.Tensor, w1: float,
                  w2: float) -> torch.Tensor:
    """(1/C) mean_i (w1 - w2 * softmax(others)_i[y_i]) * CE(logits_i, y_i): (B, C), (B, C) detached, (B,) -> ()."""
    weight = w1 - w2 * F.softmax(others.detach(), 1).gather(1, y[:, None]).squeeze(1)
    return (weight * F.cross_entropy(logits, y, reduction="none")).mean() / logits.shape[1]


class _Learners(nn.Module):
    """The shared head (or one head per modality) and the boost rate rho."""

    def __init__(self, dims: list[int], num_classes: int, shared: bool, rate: float):
        super().__init__()
        self.heads = nn.ModuleList([nn.Linear(dims[0], num_classes)] if shared else
                                   [nn.Linear(d, num_classes) for d in dims])
        self.boost_rate = nn.Parameter(torch.tensor(float(rate)))

    def logits(self, z: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.heads[0 if len(self.heads) == 1 else m](zm) for m, zm in enumerate(z)]


@dataclass
class ReconBoostParams:
    stage_epochs: int = opt(1, "epochs per stage (boost one modality, then rectify)", ge=1)
    w1: float = opt(5.0, "weight of the learner's own CE (reference 5)", ge=0.0)
    w2: float = opt(1.0, "weight of the reconcilement (others' confidence) discount (reference 1)", ge=0.0)
    alpha: float = opt(0.5, "weight of the logged consolidation term MSE(p_m, p_prev) (reference 0.5)", ge=0.0)
    shared_head: bool = opt(True, "one head shared by all modalities (the reference's common_space)")
    boost_rate: float = opt(1.0, "initial value of the learnable boost rate rho (reference 1.0)", gt=0.0)


class ReconBoost(Method):
    name = "reconboost"
    Params = ReconBoostParams
    defaults = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 5e-4}

    def __init__(self, params: ReconBoostParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        if params.shared_head and len(set(model.latent_dims)) != 1:
            raise ConfigError(f"model.latent: reconboost's shared head needs one latent width, got "
                              f"{sorted(set(model.latent_dims))}")
        self.learners = _Learners(model.latent_dims, num_classes, params.shared_head, params.boost_rate)

    def extra_modules(self) -> nn.Module:
        return self.learners

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        M, p = model.num_modalities, self.params
        stage = reconboost_stage(ctx.epoch, p.stage_epochs, M)
        logits = self.learners.logits(out.z)
        rho = self.learners.boost_rate
        logs = {"coef/reconboost/stage": float(stage), "coef/reconboost/boost_rate": float(rho.detach())}
        if stage < 0:
            loss = F.cross_entropy(rho * torch.stack(logits).sum(0), y)
            logs["loss/rectify"] = loss.item()
        else:
            m = stage
            others = rho.detach() * torch.stack([logits[j] for j in range(M) if j != m]).sum(0)
            loss = boosting_loss(logits[m], others, y, p.w1, p.w2)
            prev = (m - 1) % M
            ga = F.mse_loss(F.softmax(logits[m].detach(), 1), F.softmax(logits[prev].detach(), 1))
            loss = loss + p.alpha * ga
            logs.update({"loss/boost": loss.item(), "loss/consolidation": ga.item()})
        return StepResult(loss=loss, out=out, logs=logs)

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        stage = reconboost_stage(epoch, self.params.stage_epochs, self.model.num_modalities)
        return {"coef/reconboost/stage": float(stage),
                "coef/reconboost/boost_rate": float(self.learners.boost_rate.detach())}

    def predict(self, out: ForwardOutput) -> torch.Tensor:
        return self.learners.boost_rate * torch.stack(self.learners.logits(out.z)).sum(0)

"""AGM: Adaptive Gradient Modulation (Li et al., ICCV 2023, "Boosting multi-modal model performance with
adaptive gradient modulation").

Each modality's mono-modal response is its Shapley value in the fused model, with a modality "absent" when its
latent is zeroed (v(S) = g(z_S, 0_{-S})):
  phi_m = sum_{S subset of N\\{m}} |S|! (M-|S|-1)! / M! * (v(S u {m}) - v(S))          (B, C)
Per step, s_m = mean_i -log softmax(phi_m)_i[y_i] (clamped at p >= 1e-8), and with a running mean s_bar_m
over all iterations so far (the "optimal" trajectory):
  r_m = exp(M/(M-1) * (s_m - mean_j s_j)),  r*_m = exp(M/(M-1) * (s_bar_m - mean_j s_bar_j)),
  k_m = exp(alpha * min(r*_m - r_m, 7)),
and encoder m's weight gradients are multiplied by k_m. Loss: fused CE only.

Choices: absence = zeroed latent rather than zeroed input (one fusion-head pass over all 2^M subsets, no
extra encoder pass; for late fusion it equals dropping the modality's logit contribution). Biases are not
modulated and the running mean is updated after computing k (both as in the authors' code). alpha defaults
to 1.0 (tuned per dataset in the paper; searchable).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import opt
from mcrlab.methods.base import StepContext, StepResult
from mcrlab.methods.modulation import CoefficientMethod, encoder_params, scale_grads
from mcrlab.methods.ogm_ge import OGMGEParams, in_window
from mcrlab.models.net import MultimodalNet


def subset_masks(M: int) -> torch.Tensor:
    """All 2^M presence masks, (2^M, M) float, row index = bitmask of present modalities."""
    return torch.tensor([[(s >> m) & 1 for m in range(M)] for s in range(2 ** M)], dtype=torch.float32)


def shapley_logits(head, z: list[torch.Tensor]) -> list[torch.Tensor]:
    """Shapley value of each modality in head(z): M latents (B, d_m) -> M tensors (B, C).

    ``head`` maps M latents with any leading shape to (..., C); absent modalities are zero latents.
    """
    M = len(z)
    masks = subset_masks(M).to(z[0].device, z[0].dtype)  # (2^M, M)
    v = head([masks[:, m, None, None] * z[m][None] for m in range(M)])  # (2^M, B, C)
    phis = []
    for m in range(M):
        others = [j for j in range(M) if j != m]
        phi = torch.zeros_like(v[0])
        for size in range(M):
            w = math.factorial(size) * math.factorial(M - size - 1) / math.factorial(M)
            for S in itertools.combinations(others, size):
                s = sum(1 << j for j in S)
                phi = phi + w * (v[s | (1 << m)] - v[s])
        phis.append(phi)
    return phis


def agm_scores(phis: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """s_m = mean_i -log max(softmax(phi_m)_i[y_i], 1e-8): M tensors (B, C) -> (M,)."""
    return torch.stack([-F.softmax(p.float(), 1).gather(1, y[:, None]).clamp_min(1e-8).log().mean()
                        for p in phis])


def agm_coefficients(scores: torch.Tensor, running: torch.Tensor, alpha: float, cap: float = 7.0) -> torch.Tensor:
    """k_m = exp(alpha * min(r*_m - r_m, cap)) from current scores and their running means: (M,) -> (M,)."""
    M = scores.numel()
    r = torch.exp(M / (M - 1) * (scores - scores.mean()))
    r_opt = torch.exp(M / (M - 1) * (running - running.mean()))
    return torch.exp(alpha * torch.clamp(r_opt - r, max=cap))


@dataclass
class AGMParams:
    alpha: float = opt(1.0, "modulation strength alpha in k = exp(alpha * (r* - r))", ge=0.0)
    start_epoch: int = opt(0, "first epoch (0-based) with modulation", ge=0)
    end_epoch: int = opt(-1, "last epoch with modulation (-1 = to the end)", ge=-1)

    __post_init__ = OGMGEParams.__post_init__


class AGM(CoefficientMethod):
    name = "agm"
    tag = "agm"
    Params = AGMParams

    def __init__(self, params: AGMParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        self.running = torch.zeros(model.num_modalities, dtype=torch.float64)
        self.iters = 0

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        loss = F.cross_entropy(out.fused, y)
        with torch.no_grad():
            scores = agm_scores(shapley_logits(model.fusion, [z.detach() for z in out.z]), y).double().cpu()
        coef_logs = self.record(agm_coefficients(scores, self.running, self.params.alpha))
        self.iters += 1
        self.running = self.running * (self.iters - 1) / self.iters + scores / self.iters
        logs = {"loss/fused": loss.item(), **coef_logs}
        return StepResult(loss=loss, out=out, logs=logs)

    def after_backward(self, model, ctx: StepContext) -> dict[str, float]:
        if in_window(ctx.epoch, self.params.start_epoch, self.params.end_epoch):
            for m in range(model.num_modalities):
                scale_grads(encoder_params(model, m, matrices_only=True), float(self.coef[m]))
        return {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "running": self.running.clone(), "iters": self.iters}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.running, self.iters = state["running"].clone(), int(state["iters"])

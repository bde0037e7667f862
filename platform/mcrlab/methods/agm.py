"""AGM: Adaptive Gradient Modulation (Li, Li, Hu, Yang & Zhou, ICCV 2023, "Boosting multi-modal model
performance with adaptive gradient modulation"). Reference: github.com/lihong2303/AGM @5a65542,
run/CREMAD_main.py (coefficients), model/CREMAD_net.py (GradMod: the backward hooks).

Each modality's mono-modal response is its Shapley value in the fused model plus an equal share of the empty
coalition, o_m = phi_m + v(empty)/M, with a modality "absent" when its latent is zeroed (v(S) = g(z_S, 0_{-S})):
  phi_m = sum_{S subset of N\\{m}} |S|! (M-|S|-1)! / M! * (v(S u {m}) - v(S))          (B, C)
so that sum_m o_m = v(N) = g(z) (for M = 2, o_a = (v(a,v) - v(0,v) + v(a,0)) / 2 as in the reference).
Per step, s_m = mean_i -log max(softmax(o_m)_i[y_i], 1e-8) (a loss: large = weak), and with a running mean
s_bar_m over all iterations so far:
  r_m = exp(M/(M-1) * (mean_j s_j - s_m)),  r*_m = exp(M/(M-1) * (mean_j s_bar_j - s_bar_m)),
  k_m = exp(alpha * min(r*_m - r_m, 10)).
For M = 2 this is the reference's ratio_a = exp(s_v - s_a): a modality doing better than its running
trajectory (r_m > r*_m) is damped (k_m < 1), one doing worse is boosted. The training loss is
CE(sum_m o_m, y) with the gradient flowing back through o_m multiplied by k_m (the reference's backward hook
on each modality's output): it reaches everything o_m depends on - for late fusion encoder m (weights and
biases), its fusion weights W_m and a 1/M share of the fusion bias. The forward value is the fused logits.

As in the reference: the running mean is updated after computing k; when any fusion-weight gradient entry
leaves [-1, 1], the whole gradient is clipped to norm 1 (``clip_fusion_grad``); SGD with momentum 0.9 and
weight decay 1e-4 (``defaults``); modulation in epochs 0..20 (``end_epoch``; the reference counts epochs from
1 and its default runs are longer). Deviations, documented: absence = zeroed latent rather than zeroed
input (one fusion-head pass over all 2^M subsets, no extra encoder pass; for late fusion it is exactly the
modality's logit contribution); outside the modulation window k = 1 (the reference keeps its last
coefficient there, an artefact of setting the hook's scale only inside the window).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import ConfigError, opt
from mcrlab.methods.base import StepContext, StepResult
from mcrlab.methods.modulation import CoefficientMethod
from mcrlab.methods.ogm_ge import in_window
from mcrlab.models.net import MultimodalNet

COEF_CAP = 10.0  # the reference's min(r* - r, 10)


def subset_masks(M: int) -> torch.Tensor:
    """All 2^M presence masks, (2^M, M) float, row index = bitmask of present modalities."""
    return torch.tensor([[(s >> m) & 1 for m in range(M)] for s in range(2 ** M)], dtype=torch.float32)


def coalition_values(head, z: list[torch.Tensor]) -> torch.Tensor:
    """v(S) = head(z_S, 0_{-S}) for all 2^M subsets S: M latents (B, d_m) -> (2^M, B, C)."""
    M = len(z)
    masks = subset_masks(M).to(z[0].device, z[0].dtype)  # (2^M, M)
    return head([masks[:, m, None, None] * z[m][None] for m in range(M)])


def shapley_from_values(v: torch.Tensor) -> list[torch.Tensor]:
    """Shapley values from all coalition values: (2^M, B, C) -> M tensors (B, C)."""
    M = int(round(math.log2(v.shape[0])))
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


def shapley_logits(head, z: list[torch.Tensor]) -> list[torch.Tensor]:
    """Shapley value of each modality in head(z): M latents (B, d_m) -> M tensors (B, C).

    ``head`` maps M latents with any leading shape to (..., C); absent modalities are zero latents.
    """
    return shapley_from_values(coalition_values(head, z))


def modality_outputs(head, z: list[torch.Tensor]) -> list[torch.Tensor]:
    """o_m = phi_m + v(empty) / M (sums to head(z)): M latents (B, d_m) -> M tensors (B, C)."""
    v = coalition_values(head, z)
    M = len(z)
    return [phi + v[0] / M for phi in shapley_from_values(v)]


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by a constant (the reference's hook)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: float) -> torch.Tensor:
        ctx.k = k
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g * ctx.k, None


def scale_grad(x: torch.Tensor, k: float) -> torch.Tensor:
    """x in the forward pass, k * dL/dx in the backward pass."""
    return _ScaleGrad.apply(x, k)


def agm_scores(phis: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """s_m = mean_i -log max(softmax(phi_m)_i[y_i], 1e-8): M tensors (B, C) -> (M,)."""
    return torch.stack([-F.softmax(p.float(), 1).gather(1, y[:, None]).clamp_min(1e-8).log().mean()
                        for p in phis])


def agm_coefficients(scores: torch.Tensor, running: torch.Tensor, alpha: float,
                     cap: float = COEF_CAP) -> torch.Tensor:
    """k_m = exp(alpha * min(r*_m - r_m, cap)), r_m = exp(M/(M-1) (mean(s) - s_m)) and r*_m the same of the
    running means; scores are losses (large = weak): (M,) -> (M,)."""
    M = scores.numel()
    r = torch.exp(M / (M - 1) * (scores.mean() - scores))
    r_opt = torch.exp(M / (M - 1) * (running.mean() - running))
    return torch.exp(alpha * torch.clamp(r_opt - r, max=cap))


@dataclass
class AGMParams:
    alpha: float = opt(1.0, "modulation strength alpha in k = exp(alpha * (r* - r)) (reference default 1.0)",
                       ge=0.0)
    start_epoch: int = opt(0, "first epoch (0-based) with modulation (reference: 0)", ge=0)
    end_epoch: int = opt(20, "last epoch with modulation (reference: 20; -1 = to the end)", ge=-1)
    clip_fusion_grad: bool = opt(True, "clip the gradient norm to 1 when a fusion-weight gradient entry leaves "
                                       "[-1, 1] (as the reference)")

    def __post_init__(self) -> None:
        if self.end_epoch != -1 and self.end_epoch < self.start_epoch:
            raise ConfigError("end_epoch: must be -1 or >= start_epoch")


class AGM(CoefficientMethod):
    name = "agm"
    tag = "agm"
    Params = AGMParams
    # reference: optim.SGD(lr, momentum=0.9, weight_decay=1e-4) (tasks/CREMAD_task.py); its StepLR(70, 0.1)
    # first acts at epoch 70, past this platform's usual budgets, so no schedule is set
    defaults = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 1e-4}

    def __init__(self, params: AGMParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        self.running = torch.zeros(model.num_modalities, dtype=torch.float64)
        self.iters = 0

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        outs = modality_outputs(model.fusion, out.z)
        scores = agm_scores([o.detach() for o in outs], y).double().cpu()
        coef = agm_coefficients(scores, self.running, self.params.alpha)
        self.iters += 1
        self.running = self.running * (self.iters - 1) / self.iters + scores / self.iters
        if not in_window(ctx.epoch, self.params.start_epoch, self.params.end_epoch):
            coef = torch.ones_like(coef)
        coef_logs = self.record(coef)
        fused = torch.stack([scale_grad(o, float(k)) for o, k in zip(outs, coef, strict=True)]).sum(0)
        loss = F.cross_entropy(fused, y)
        logs = {"loss/fused": loss.item(), **coef_logs,
                **{f"score/agm/{m}": float(s) for m, s in enumerate(scores)}}
        return StepResult(loss=loss, out=out, logs=logs)

    def after_backward(self, model, ctx: StepContext) -> dict[str, float]:
        if self.params.clip_fusion_grad:
            grads = [p.grad for p in model.fusion.parameters() if p.ndim > 1 and p.grad is not None]
            if grads and max(float(g.abs().max()) for g in grads) > 1.0:
                torch.nn.utils.clip_grad_norm_(list(model.parameters()), max_norm=1.0)
        return {}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "running": self.running.clone(), "iters": self.iters}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.running, self.iters = state["running"].clone(), int(state["iters"])

"""MMPareto (Wei & Hu, ICML 2024, "MMPareto: boosting multimodal learning with innocent unimodal assistance").

Tasks: the multimodal loss CE(g(z), y) and each unimodal loss CE(h_m(z_m), y). On encoder m, whose
parameters both tasks share, with g_mm and g_m the two flattened task gradients:
  if cos(g_mm, g_m) > 0:  (w_mm, w_m) = (1/2, 1/2)
  else:                   (w_mm, w_m) = the min-norm (MGDA) point of the convex hull of {g_mm, g_m}
  d = 2 (w_mm g_mm + w_m g_m);  if ||g_mm + g_m|| > ||d||: d <- d * ||g_mm + g_m|| / ||d||
  encoder grad = gamma * d          (gamma = 1.5 in the authors' code)
Heads and the fusion head keep the plain gradient of the summed loss. The min-norm point has a non-negative
inner product with both task gradients, so the combined direction never increases either loss to first order.

Choice: the authors' code rescales per parameter tensor; we rescale the whole encoder's vector at once, which
keeps that guarantee exactly (a per-tensor rescale can break it). Works for any M (one pair per encoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.methods.modulation import encoder_params


def min_norm_weights(g1: torch.Tensor, g2: torch.Tensor) -> tuple[float, float]:
    """argmin_{w in [0,1]} ||w g1 + (1-w) g2||^2 (closed form for two vectors): flat (P,), (P,) -> (w, 1-w)."""
    diff = g1 - g2
    denom = float(diff.dot(diff))
    if denom <= 1e-30:
        return 0.5, 0.5
    w = float((g2 - g1).dot(g2)) / denom
    w = min(max(w, 0.0), 1.0)
    return w, 1.0 - w


def pareto_direction(g_mm: torch.Tensor, g_uni: torch.Tensor, gamma: float = 1.5) -> tuple[torch.Tensor, float]:
    """MMPareto's combined gradient for one shared block: flat (P,), (P,) -> ((P,), w_mm)."""
    cos = F.cosine_similarity(g_mm, g_uni, dim=0)
    w_mm, w_uni = (0.5, 0.5) if float(cos) > 0 else min_norm_weights(g_mm, g_uni)
    d = 2 * (w_mm * g_mm + w_uni * g_uni)
    total, dn = float((g_mm + g_uni).norm()), float(d.norm())
    if dn > 0 and total > dn:
        d = d * (total / dn)
    return gamma * d, w_mm


@dataclass
class MMParetoParams:
    gamma: float = opt(1.5, "scale of the combined encoder gradient (1.5 in the authors' code)", gt=0.0)


def _flat(grads: tuple, params: list) -> torch.Tensor:
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)])


class MMPareto(Method):
    name = "mmpareto"
    Params = MMParetoParams
    # reference: code/MMPareto.py, optim.SGD(lr, momentum=0.9, weight_decay=1e-4) (its StepLR(30, 0.1) is not set)
    defaults = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 1e-4}

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        loss_mm = F.cross_entropy(out.fused, y)
        losses = [F.cross_entropy(h, y) for h in out.heads]
        M = model.num_modalities
        enc = [encoder_params(model, m) for m in range(M)]
        g_mm = torch.autograd.grad(loss_mm, [p for ps in enc for p in ps], retain_graph=True, allow_unused=True)
        total = loss_mm + torch.stack(losses).sum()
        logs = {"loss/fused": loss_mm.item()}
        combined, offset = [], 0
        for m in range(M):
            n = len(enc[m])
            gm = _flat(g_mm[offset:offset + n], enc[m])
            offset += n
            gu = _flat(torch.autograd.grad(losses[m], enc[m], retain_graph=True, allow_unused=True), enc[m])
            d, w_mm = pareto_direction(gm, gu, self.params.gamma)
            combined.append(d)
            logs[f"coef/mmpareto/w_mm/{m}"] = w_mm
            logs[f"cos/mmpareto/{m}"] = float(F.cosine_similarity(gm, gu, dim=0))
            logs[f"loss/head/{m}"] = losses[m].item()
        total.backward()
        for m in range(M):
            offset = 0
            for p in enc[m]:
                p.grad = combined[m][offset:offset + p.numel()].view_as(p).to(p.dtype).clone()
                offset += p.numel()
        return StepResult(loss=total.detach(), out=out, logs=logs, backward_done=True)

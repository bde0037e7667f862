"""CML against the official rank loss (QingyangZhang/CML @9d2496e, cpm/CPM_Nets.py): per sample, a reduced
prediction more confident than the fuller one is penalised unless it is right where the fuller one is wrong."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcrlab.config import ModelConfig
from mcrlab.methods.base import StepContext
from mcrlab.methods.cml import CML, CMLParams, confidence_penalty
from mcrlab.models import build_model


def _reference_penalty(fuller: torch.Tensor, reduced: torch.Tensor, y: torch.Tensor) -> float:
    total = 0.0
    for b in range(len(y)):
        pf, pr = torch.softmax(fuller[b], 0), torch.softmax(reduced[b], 0)
        cf, kf = float(pf.max()), int(pf.argmax())
        cr, kr = float(pr.max()), int(pr.argmax())
        sign = 0.0 if (kr == int(y[b]) and kf != int(y[b])) else 1.0
        total += max(0.0, (cr - cf) * sign)
    return total


def test_penalty_is_the_official_rank_loss():
    gen = torch.Generator().manual_seed(0)
    fuller, reduced = torch.randn(40, 3, generator=gen) * 2, torch.randn(40, 3, generator=gen) * 2
    y = torch.randint(0, 3, (40,), generator=gen)
    assert math.isclose(float(confidence_penalty(fuller, reduced, y)), _reference_penalty(fuller, reduced, y),
                        rel_tol=1e-5)
    # a reduced prediction that is right where the fuller one is wrong is not penalised
    f, r, y1 = torch.tensor([[0.0, 3.0]]), torch.tensor([[5.0, 0.0]]), torch.tensor([0])
    assert float(confidence_penalty(f, r, y1)) == 0.0
    assert float(confidence_penalty(r, f, torch.tensor([1]))) == 0.0
    assert float(confidence_penalty(f, r, torch.tensor([1]))) > 0  # wrong and more confident: penalised


def test_loss_removes_modalities_in_the_epoch_order(tiny3):
    torch.manual_seed(0)
    net = build_model(tiny3.dims, 3, ModelConfig(hidden=8, latent=4))
    cml = CML(CMLParams(lam=0.3), net, 3)
    ctx = StepContext(0, 0, 0, 1, 1, torch.Generator().manual_seed(5), torch.device("cpu"))
    cml.on_epoch_start(0, ctx)
    xs = [torch.as_tensor(x[:16]) for x in tiny3.splits["train"].x]
    y = torch.as_tensor(tiny3.splits["train"].y[:16])
    res = cml.training_step(net, xs, y, ctx)
    out = res.out
    o = [out.fused]
    for m in cml.order[:2]:
        o.append(o[-1] - out.contribs[m])
    ce = sum(F.cross_entropy(oi, y) for oi in o) / 3
    reg = sum(_reference_penalty(o[i].detach(), o[i + 1].detach(), y) for i in range(2))
    assert math.isclose(float(res.loss.detach()), float(ce.detach()) + 0.3 * reg, rel_tol=1e-5)

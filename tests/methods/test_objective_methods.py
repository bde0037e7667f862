"""MMCosine, PMR, ReconBoost, Gradient-Blending, ensemble: their distinctive maths."""

import math

import torch
import torch.nn.functional as F

from mcrlab.methods.ensemble import ensemble_logits
from mcrlab.methods.gradient_blending import blend_weights
from mcrlab.methods.mmcosine import cosine_logits
from mcrlab.methods.pmr import pmr_gammas, prototype_logits
from mcrlab.methods.reconboost import boosting_loss, reconboost_stage


def test_cosine_logits_are_bounded_and_scale_free():
    gen = torch.Generator().manual_seed(0)
    z, w = torch.randn(5, 4, generator=gen), torch.randn(3, 4, generator=gen)
    (a,) = cosine_logits([z], [w], scale=10.0)
    (b,) = cosine_logits([7 * z], [0.1 * w], scale=10.0)
    assert torch.allclose(a, b, atol=1e-5) and float(a.abs().max()) <= 10.0 + 1e-5


def test_pmr_weights_are_the_reference_constant_alpha():
    # reference: ratio_a_p = s_a / s_v > 1 -> beta (audio) = 0, lam (visual) = alpha; < 1 -> the reverse
    for s0, s1, alpha in [(3.0, 2.0, 1.0), (1.0, 4.0, 0.7), (2.0, 2.0, 1.0), (2.9, 3.0, 2.5)]:
        beta, lam = (0.0, alpha) if s0 / s1 > 1 else (alpha, 0.0) if s0 / s1 < 1 else (0.0, 0.0)
        assert torch.allclose(pmr_gammas(torch.tensor([s0, s1]), alpha), torch.tensor([beta, lam]))
    # the gap-scaled variant (an option, off by default) is not the reference's
    assert torch.allclose(pmr_gammas(torch.tensor([3.0, 2.0]), 1.0, "gap"), torch.tensor([0.0, 0.5]))
    z, c = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert torch.allclose(prototype_logits(z, c), torch.tensor([[-5.0, -1.0]]))


def test_pmr_loss_is_fused_ce_plus_alpha_times_the_lagging_prototype_ce(tiny2):
    from mcrlab.config import ModelConfig
    from mcrlab.methods.base import StepContext
    from mcrlab.methods.pmr import PMR, PMRParams
    from mcrlab.models import build_model

    torch.manual_seed(0)
    net = build_model(tiny2.dims, 3, ModelConfig(hidden=8, latent=4))
    pmr = PMR(PMRParams(alpha=0.7), net, 3)
    xs = [torch.as_tensor(x[:32]) for x in tiny2.splits["train"].x]
    y = torch.as_tensor(tiny2.splits["train"].y[:32])
    pmr.protos = [torch.randn(3, 4) for _ in range(2)]
    ctx = StepContext(epoch=0, step=0, global_step=0, epochs=1, steps_per_epoch=1, generator=torch.Generator(),
                      device=torch.device("cpu"))
    res = pmr.training_step(net, xs, y, ctx)
    sims = [prototype_logits(z, c) for z, c in zip(res.out.z, pmr.protos, strict=True)]
    s = [float(F.softmax(sm, 1).gather(1, y[:, None]).sum()) for sm in sims]
    lag = 0 if s[0] < s[1] else 1
    expected = F.cross_entropy(res.out.fused, y) + 0.7 * F.cross_entropy(sims[lag], y)  # no entropy term
    assert math.isclose(float(res.loss), float(expected), rel_tol=1e-6)


def test_reconboost_schedule_and_reconcilement_weight():
    assert [reconboost_stage(e, 1, 2) for e in range(5)] == [0, -1, 1, -1, 0]
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    certain = torch.tensor([[50.0, 0.0], [50.0, 0.0]])  # the others already fit every sample
    assert float(boosting_loss(logits, certain, y, 1.0, 1.0)) < 1e-12
    unsure = torch.zeros(2, 2)  # p_-m(y) = 1/2: half weight
    assert math.isclose(float(boosting_loss(logits, unsure, y, 1.0, 1.0)),
                        0.5 * float(F.cross_entropy(logits, y)), rel_tol=1e-6)


def test_blend_weights_hand_computed():
    vp, tp = torch.tensor([1.0, 1.0]), torch.tensor([0.9, 0.9])
    vn, tn = torch.tensor([0.8, 0.9]), torch.tensor([0.6, 0.5])
    # dG = (0.2, 0.1); dO = (0.2 - 0.1, 0.4 - 0.1) = (0.1, 0.3); raw = (20, 1.111..)
    w = blend_weights(vp, tp, vn, tn)
    raw = torch.tensor([0.2 / 0.01, 0.1 / 0.09])
    assert torch.allclose(w, raw / raw.sum(), atol=1e-6)
    assert blend_weights(vn, tn, vp, tp) is None  # no head generalised better: keep old weights


def test_ensemble_sum_and_standardisation():
    h0, h1 = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.equal(ensemble_logits([h0, h1], None), torch.tensor([[10.0, 1.0]]))
    st = ensemble_logits([h0, h1], [5.0, 0.5])  # scales equalise the two modalities' magnitudes
    assert torch.allclose(st, torch.tensor([[1.0 - 1.0, -1.0 + 1.0]]))

"""MMCosine, PMR, ReconBoost, Gradient-Blending, ensemble: their distinctive maths."""

import math

import pytest
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
    s = [float(F.softmax(sm.detach(), 1).gather(1, y[:, None]).sum()) for sm in sims]
    lag = 0 if s[0] < s[1] else 1
    expected = F.cross_entropy(res.out.fused, y) + 0.7 * F.cross_entropy(sims[lag], y)  # no entropy term
    assert math.isclose(float(res.loss), float(expected), rel_tol=1e-6)


def test_reconboost_schedule_and_reconcilement_weight():
    assert [reconboost_stage(e, 1, 2) for e in range(5)] == [0, -1, 1, -1, 0]
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    target = F.one_hot(y, 2).float()
    for others, w1, w2 in [(torch.tensor([[50.0, 0.0], [50.0, 0.0]]), 1.0, 1.0), (torch.zeros(2, 2), 5.0, 1.0),
                           (torch.tensor([[0.3, -0.2], [1.0, 2.0]]), 5.0, 1.0)]:
        # the reference: -w1 mean_c(t log p) + w2 mean_c(t softmax(others) log p), averaged over the batch
        ref = (-w1 * (target * logits.log_softmax(1)).mean(-1)
               + w2 * (target * others.softmax(1) * logits.log_softmax(1)).mean(-1)).mean()
        assert math.isclose(float(boosting_loss(logits, others, y, w1, w2)), float(ref), rel_tol=1e-6, abs_tol=1e-9)


def test_reconboost_shares_one_head_and_learns_its_boost_rate(tiny2):
    from mcrlab.config import ModelConfig
    from mcrlab.methods.base import StepContext
    from mcrlab.methods.reconboost import ReconBoost, ReconBoostParams
    from mcrlab.models import build_model

    torch.manual_seed(0)
    net = build_model(tiny2.dims, 3, ModelConfig(hidden=8, latent=4))
    rb = ReconBoost(ReconBoostParams(), net, 3)
    assert len(rb.learners.heads) == 1 and rb.params.w1 == 5.0
    xs = [torch.as_tensor(x[:16]) for x in tiny2.splits["train"].x]
    y = torch.as_tensor(tiny2.splits["train"].y[:16])
    ctx = StepContext(epoch=1, step=0, global_step=0, epochs=2, steps_per_epoch=1, generator=torch.Generator(),
                      device=torch.device("cpu"))  # epoch 1: rectification
    rb.training_step(net, xs, y, ctx).loss.backward()
    assert rb.learners.boost_rate.grad is not None and float(rb.learners.boost_rate.grad.abs()) > 0
    ctx.epoch = 0  # boosting modality 0: encoder 1 gets no gradient
    net.zero_grad()
    rb.learners.zero_grad()
    rb.training_step(net, xs, y, ctx).loss.backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in net.encoders[1].parameters())
    assert all(p.grad is not None for p in net.encoders[0].parameters())


def test_blend_weights_hand_computed():
    # the reference's default (delta = False): G = L^V, O = L^V - L^T (1e-4 if negative), w = |G / O^2| / Z
    vn, tn = torch.tensor([0.8, 0.9, 0.5]), torch.tensor([0.6, 0.5, 0.7])
    w = blend_weights(vn, tn, floor=1e-4)
    raw = torch.tensor([0.8 / 0.2 ** 2, 0.9 / 0.4 ** 2, 0.5 / 1e-4 ** 2])
    assert torch.allclose(w, raw / raw.sum(), atol=1e-6)
    # the delta form: G = L^V(n+s) - L^V(n), O = gap(n+s) - gap(n), absolute values
    vp, tp = torch.tensor([1.0, 1.0]), torch.tensor([0.9, 0.9])
    vn, tn = torch.tensor([0.8, 0.9]), torch.tensor([0.6, 0.5])
    raw = torch.tensor([0.2 / 0.1 ** 2, 0.1 / 0.3 ** 2])
    assert torch.allclose(blend_weights(vn, tn, vp, tp, floor=1e-4), raw / raw.sum(), atol=1e-6)
    w = blend_weights(vp, tp, vn, tn)  # no head generalised better: still every weight > 0 (never stuck at 0)
    assert bool((w > 0).all()) and math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_blending_keeps_every_weight_inside_0_1(tiny2, seed):
    from mcrlab.config import RunConfig
    from mcrlab.engine.fit import fit

    cfg = RunConfig.from_dict({"method": {"name": "gradient_blending"}, "model": {"hidden": 16, "latent": 8},
                               "train": {"epochs": 6, "batch_size": 16, "device": "cpu", "probe_epochs": 0,
                                         "eval_perms": 1, "seed": seed}})
    reports = []
    fit(cfg, lambda m, c: reports.append(dict(m)), dataset=tiny2)
    for r in reports:
        w = [r[f"coef/gblend/{k}"] for k in ("fused", "0", "1")]
        assert all(0 < x < 1 for x in w), (r["epoch"], w)
        assert math.isclose(sum(w), 1.0, rel_tol=1e-6)
        assert w[0] > 1e-3, (r["epoch"], w)  # the fused head stays in use


def test_ensemble_sum_and_standardisation():
    h0, h1 = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.equal(ensemble_logits([h0, h1], None), torch.tensor([[10.0, 1.0]]))
    st = ensemble_logits([h0, h1], [5.0, 0.5])  # scales equalise the two modalities' magnitudes
    assert torch.allclose(st, torch.tensor([[1.0 - 1.0, -1.0 + 1.0]]))

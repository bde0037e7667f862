"""AGM (Shapley responses and coefficients) and MLB (accelerate / decelerate coefficients)."""

import math

import torch

from mcrlab.config import ModelConfig
from mcrlab.methods.agm import shapley_logits
from mcrlab.methods.mlb import mlb_coefficients
from mcrlab.models import build_model


def test_shapley_of_late_fusion_is_each_contribution():
    torch.manual_seed(0)
    net = build_model([4, 3, 5], 3, ModelConfig(hidden=8, latent=6)).double()
    out = net([torch.randn(7, d, dtype=torch.float64) for d in (4, 3, 5)])
    phis = shapley_logits(net.fusion, out.z)
    for phi, c in zip(phis, out.contribs, strict=True):
        assert torch.allclose(phi, c, atol=1e-12)


def test_shapley_is_efficient_for_mlp_fusion():
    torch.manual_seed(1)
    net = build_model([4, 3, 5], 3, ModelConfig(hidden=8, latent=6, fusion="mlp")).double()
    out = net([torch.randn(7, d, dtype=torch.float64) for d in (4, 3, 5)])
    phis = shapley_logits(net.fusion, out.z)
    empty = net.fusion([torch.zeros_like(z) for z in out.z])
    assert torch.allclose(torch.stack(phis).sum(0), out.fused - empty, atol=1e-10)


def test_mlb_accelerates_the_lagging_and_slows_the_leading():
    k = mlb_coefficients(torch.tensor([4.0, 2.0], dtype=torch.float64), alpha=1.5, beta_max=3.0)
    # leader: r = 0.5, k = 1 + tanh(-0.75); lagger: r = 2, k = 1 + 2 tanh(1.5)
    assert math.isclose(float(k[0]), 1 + math.tanh(-0.75), rel_tol=1e-12)
    assert math.isclose(float(k[1]), 1 + 2 * math.tanh(1.5), rel_tol=1e-12)
    assert torch.allclose(mlb_coefficients(torch.tensor([2.0, 2.0]), 1.5, 3.0), torch.ones(2))


def test_mlb_scales_the_encoder_and_its_fusion_weights(tiny2):
    from mcrlab.config import ModelConfig
    from mcrlab.methods.base import StepContext
    from mcrlab.methods.mlb import MLB, MLBParams

    torch.manual_seed(0)
    net = build_model(tiny2.dims, 3, ModelConfig(hidden=8, latent=4))
    mlb = MLB(MLBParams(), net, 3)
    assert mlb.params.alpha == 0.8
    xs = [torch.as_tensor(x[:32]) for x in tiny2.splits["train"].x]
    y = torch.as_tensor(tiny2.splits["train"].y[:32])
    ctx = StepContext(0, 0, 0, 1, 1, torch.Generator(), torch.device("cpu"))
    mlb.training_step(net, xs, y, ctx).loss.backward()
    before = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    mlb.after_backward(net, ctx)
    k = mlb.coef
    for n, p in net.named_parameters():
        if p.grad is None:
            continue
        if n.startswith(("encoders.", "fusion.proj.")):
            assert torch.allclose(p.grad, float(k[int(n.split(".")[-2 if n.startswith("fusion") else 1])]) * before[n]), n
        else:
            assert torch.equal(p.grad, before[n]), n

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

"""MLA against the reference (Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation @ab6c184):
every modality is updated on every batch, the projector update and the dynamic test-time fusion are the
reference's formulas."""

from __future__ import annotations

import math

import torch
from tests.methods.loop_helpers import drive

from mcrlab.config import ModelConfig, RunConfig
from mcrlab.methods.mla import MLA, MLAParams, batch_entropy, entropy_weights, owm_alpha, owm_update
from mcrlab.models import build_model


def test_every_encoder_changes_in_every_step(tiny3):
    torch.manual_seed(0)
    net = build_model(tiny3.dims, 3, ModelConfig(hidden=8, latent=4))
    mla = MLA(MLAParams(), net, 3)
    opt = torch.optim.SGD([*net.parameters(), *mla.extra_modules().parameters()], lr=0.05, momentum=0.9)
    snap = [[p.detach().clone() for p in e.parameters()] for e in net.encoders]
    checked = []

    def on_step(epoch, step):
        for m, enc in enumerate(net.encoders):
            now = [p.detach().clone() for p in enc.parameters()]
            assert all(not torch.equal(a, b) for a, b in zip(snap[m], now, strict=True)), (epoch, step, m)
            snap[m] = now
        checked.append(step)

    drive(mla, net, tiny3, opt, epochs=2, batch_size=32, on_step=on_step)
    assert len(checked) == 6
    assert mla.updates == 6 * 3  # one modality update per modality per batch


def test_projector_update_is_the_reference_formula():
    gen = torch.Generator().manual_seed(0)
    P0 = torch.eye(4, dtype=torch.float64) + 0.1 * torch.randn(4, 4, generator=gen, dtype=torch.float64)
    r = torch.randn(4, generator=gen, dtype=torch.float64)
    alpha = owm_alpha(3, 10)
    assert math.isclose(alpha, 0.1 ** 1.3, rel_tol=1e-12)
    k = P0 @ r[:, None]  # reference: k = P r^T; P -= k k^T / (alpha + r k); P /= ||P||_F
    ref = P0 - (k @ k.T) / (alpha + float(r[None] @ k))
    ref = ref / torch.sqrt((ref ** 2).sum())
    assert torch.allclose(owm_update(P0, r, alpha), ref, atol=1e-12)


def test_dynamic_fusion_weights_are_the_reference_batch_entropy():
    a = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    v = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])

    def ref_entropy(x):  # softmax over the batch axis (dim 0), summed over everything
        p = torch.softmax(x, dim=0)
        return float(-(p * torch.log(p)).sum())

    assert math.isclose(float(batch_entropy(a)), ref_entropy(a), rel_tol=1e-6)
    ea, ev = ref_entropy(a), ref_entropy(v)
    top = max(ea, ev)
    wa, wv = math.exp(top - ea), math.exp(top - ev)
    w = entropy_weights([a, v])
    assert w.shape == (2, 1)
    assert math.isclose(float(w[0, 0]), wa / (wa + wv), rel_tol=1e-6)


def test_reference_optimiser_is_the_default():
    cfg = RunConfig.from_dict({"method": {"name": "mla"}})
    assert (cfg.train.optimizer, cfg.train.momentum, cfg.train.weight_decay) == ("sgd", 0.9, 1e-4)

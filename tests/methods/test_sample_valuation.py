"""Sample-level modality valuation against the reference (GeWu-Lab/Valuate-and-Enhance-Multimodal-Cooperation
@7ed12b0, code/sample_level.py, code/datasets/dataloader.py): the per-sample Shapley contributions by hand, the
re-sampling table, the enlarged batch's loss, and the weak modality re-sampled more than the strong one."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from tests.methods.conftest import tiny_dataset
from tests.methods.loop_helpers import drive

from mcrlab.config import ModelConfig, RunConfig
from mcrlab.methods.base import StepContext
from mcrlab.methods.sample_valuation import (
    SampleValuation,
    SampleValuationParams,
    coalition_values,
    resample_copies,
    shapley_values,
)
from mcrlab.models import build_model


def test_two_modality_contributions_are_the_references_by_hand():
    """Every combination of (audio alone right, visual alone right, both right): execute_modulation's
    contrib_a = (value_a + value_all - value_v) / 2 with value_all = 2, value_a = value_v = 1 when right."""
    rows = list(itertools.product([0.0, 1.0], repeat=3))  # (a right, v right, av right)
    values = {(0,): torch.tensor([r[0] for r in rows]), (1,): torch.tensor([r[1] for r in rows]),
              (0, 1): torch.tensor([2 * r[2] for r in rows])}
    phi = shapley_values(values, 2)
    for i, (a, v, av) in enumerate(rows):
        assert float(phi[0, i]) == (a + 2 * av - v) / 2
        assert float(phi[1, i]) == (v + 2 * av - a) / 2


def test_three_modality_shapley_is_the_mean_marginal_over_orderings():
    """The subset-weighted sum against the definition: the mean over all 3! orderings of each modality's
    marginal value when it joins the ones before it (v(S) = |S| * right, one sample)."""
    right = {(0,): 1, (1,): 0, (2,): 0, (0, 1): 1, (0, 2): 0, (1, 2): 1, (0, 1, 2): 1}
    v = {s: torch.tensor([float(len(s) * r)], dtype=torch.float64) for s, r in right.items()}
    phi = shapley_values(v, 3)

    def val(s):
        return len(s) * right[tuple(sorted(s))] if s else 0

    for m in range(3):
        marginals = []
        for order in itertools.permutations(range(3)):
            before = order[:order.index(m)]
            marginals.append(val((*before, m)) - val(before))
        assert math.isclose(float(phi[m, 0]), sum(marginals) / 6, abs_tol=1e-12)
    assert math.isclose(float(phi.sum()), 3.0, abs_tol=1e-12)  # efficiency: the phi add up to v(all)


def test_coalitions_zero_the_missing_latents():
    torch.manual_seed(0)
    net = build_model([3, 4], 3, ModelConfig(hidden=5, latent=4, depth=1)).double()
    z = [torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)]
    y = torch.tensor([0, 1, 2, 0, 1])
    v = coalition_values(net.fusion, z, y, "size")
    w, b = net.fusion.proj, net.fusion.bias  # the reference's exec_drop: the other latent zeroed, bias kept
    assert torch.equal(v[(0,)], ((w[0](z[0]) + b).argmax(1) == y).double())
    assert torch.equal(v[(1,)], ((w[1](z[1]) + b).argmax(1) == y).double())
    assert torch.equal(v[(0, 1)], 2 * (net.fusion(z).argmax(1) == y).double())
    assert torch.equal(coalition_values(net.fusion, z, y, "correct")[(0, 1)], v[(0, 1)] / 2)


def test_resampling_table_is_the_references():
    phi = torch.tensor([[-0.5, 0.0, 0.5, 1.0, 1.5, 0.4, -0.1, 0.39]], dtype=torch.float64)
    assert resample_copies(phi).tolist() == [[3, 2, 1, 0, 0, 0, 0, 2]]


def test_step_loss_is_the_fused_ce_over_originals_and_copies():
    torch.manual_seed(1)
    net = build_model([3, 4], 3, ModelConfig(hidden=5, latent=4, depth=1)).double()
    xs = [torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)]
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    sv = SampleValuation(SampleValuationParams(warmup=0), net, 3)
    ctx = StepContext(epoch=0, step=0, global_step=0, epochs=2, steps_per_epoch=1,
                      generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    res = sv.training_step(net, xs, y, ctx)
    copies = sv.last_copies
    assert copies is not None and int(copies.sum()) > 0
    z = net.encode(xs)
    logits, labels = [net.fusion(z)], [y]
    for m in range(2):
        for b in range(8):
            for _ in range(int(copies[m, b])):
                kept = [zj[b:b + 1] if j == m else torch.zeros_like(zj[b:b + 1]) for j, zj in enumerate(z)]
                logits.append(net.fusion(kept))
                labels.append(y[b:b + 1])
    assert torch.allclose(res.loss, F.cross_entropy(torch.cat(logits), torch.cat(labels)), atol=1e-12)
    # in warm-up: the originals only
    sv_w = SampleValuation(SampleValuationParams(warmup=1), net, 3)
    res = sv_w.training_step(net, xs, y, ctx)
    assert torch.allclose(res.loss, F.cross_entropy(net(xs).fused, y), atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_weak_modality_is_resampled_more(seed):
    """Modality 1 weak (tiny_dataset): after warm-up, most steps add more copies keeping only modality 1."""
    data = tiny_dataset(2, n_train=256, seed=seed)
    torch.manual_seed(seed)
    net = build_model(data.dims, data.num_classes, ModelConfig(hidden=16, latent=8))
    sv = SampleValuation(SampleValuationParams(warmup=2), net, data.num_classes)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-4)
    seen: list[tuple[int, int]] = []

    def on_step(epoch, step):
        if epoch >= 2:
            c = sv.last_copies.sum(1)
            seen.append((int(c[0]), int(c[1])))

    drive(sv, net, data, opt, epochs=8, seed=seed, on_step=on_step)
    assert sum(weak > strong for strong, weak in seen) > 0.7 * len(seen), seen


def test_reference_defaults():
    cfg = RunConfig.from_dict({"method": {"name": "sample_valuation"}})
    assert (cfg.train.optimizer, cfg.train.weight_decay) == ("adam", 1e-4)
    assert cfg.method.params.warmup_epochs(60) == 5 and cfg.method.params.value == "size"
    RunConfig.from_dict({"method": {"name": "sample_valuation"}, "model": {"fusion": "mlp"}})  # any fusion head

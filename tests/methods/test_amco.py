"""AMCo against the reference (BalanceBenchmark @4c1482f, balancemm/trainer/AMCo_trainer.py and
balancemm/models/avclassify_model.py): the mask ramp, the dependence shares, the masked loss through the
extra C x C layer, and which modality gets masked on data with a known strong modality."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.methods.loop_helpers import drive

from mcrlab.config import ConfigError, ModelConfig, RunConfig
from mcrlab.methods.amco import AMCo, AMCoParams, amco_class_mask, amco_mask_fraction, dependence_shares
from mcrlab.methods.base import StepContext
from mcrlab.models import build_model


def test_mask_ramp_is_the_reference_counter():
    """The reference adds epoch/10 to l_t after every batch and masks floor(pt * C) classes."""
    C, eps = 3, 0.3
    for epoch in range(4):
        l_t = 0.0
        for step in range(8):
            pt = math.sin(math.pi / 2 * (min(eps, l_t) / eps))
            assert math.isclose(amco_mask_fraction(epoch, step, eps), pt, abs_tol=1e-12)
            mask = amco_class_mask(C, amco_mask_fraction(epoch, step, eps), torch.Generator().manual_seed(step))
            assert int((mask == 0).sum()) == int(pt * C) and set(mask.tolist()) <= {0.0, 1.0}
            l_t += epoch / 10
    # by hand: epoch 0 never masks; in epoch 1, steps 0..3 mask 0, 1 (sin 30deg = 0.5), 2 (sin 60deg), 3 classes
    assert [int((amco_class_mask(3, amco_mask_fraction(1, s, eps), None) == 0).sum()) for s in range(5)] == \
        [0, 1, 2, 3, 3]
    assert all(amco_mask_fraction(0, s, eps) == 0.0 for s in range(50))


def test_shares_are_one_softmax_over_all_modalities_logits():
    # softmax over [ln 3, 0 | 0, 0] = [3, 1, 1, 1] / 6: modality 0 holds 4/6, modality 1 2/6
    a = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    b = torch.zeros(1, 2, dtype=torch.float64)
    assert torch.allclose(dependence_shares([a, b]), torch.tensor([4 / 6, 2 / 6], dtype=torch.float64))
    # batch mean of the per-sample shares; three modalities
    gen = torch.Generator().manual_seed(0)
    lg = [torch.randn(5, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    ref = []
    for m in range(3):
        per = [sum(math.exp(float(lg[m][i, c])) for c in range(4))
               / sum(math.exp(float(lg[k][i, c])) for k in range(3) for c in range(4)) for i in range(5)]
        ref.append(sum(per) / 5)
    assert torch.allclose(dependence_shares(lg), torch.tensor(ref, dtype=torch.float64), atol=1e-12)


def _step(amco: AMCo, net, xs, y, epoch: int, step: int, seed: int = 0):
    ctx = StepContext(epoch, step, step, 10, 10, torch.Generator().manual_seed(seed), torch.device("cpu"))
    return amco.training_step(net, xs, y, ctx)


def test_loss_masks_the_dependent_modality_and_sums_through_the_extra_layer(tiny2):
    torch.manual_seed(0)
    net = build_model(tiny2.dims, 3, ModelConfig(hidden=8, latent=4)).double()
    amco = AMCo(AMCoParams(), net, 3)
    amco.star.double()
    xs = [torch.as_tensor(x[:16]).double() for x in tiny2.splits["train"].x]
    y = torch.as_tensor(tiny2.splits["train"].y[:16])
    amco.dependent = torch.tensor([True, False])
    for epoch, step in [(1, 5), (1, 1), (0, 3)]:  # all classes, one class, no class masked
        amco.dependent = torch.tensor([True, False])
        res = _step(amco, net, xs, y, epoch, step, seed=7)
        mask = amco_class_mask(3, amco_mask_fraction(epoch, step, 0.3), torch.Generator().manual_seed(7))
        with torch.no_grad():
            out = net(xs)
            b = net.fusion.bias
            l0, l1 = (out.contribs[0] + b / 2) * mask.double(), out.contribs[1] + b / 2
            o = amco.star(l0 + l1)
            ref = F.cross_entropy(o, y) + F.cross_entropy(l0, y) + F.cross_entropy(l1, y)
            assert math.isclose(res.loss.item(), ref.item(), rel_tol=1e-12)
            # the next step's decision: the shares of the masked logits against sigma 0.5
            p = torch.softmax(torch.cat([l0, l1], 1), 1)
            share0 = float(p[:, :3].sum(1).mean())
            assert amco.dependent.tolist() == [share0 > 0.5, (1 - share0) > 0.5]
        assert res.logs["coef/amco/0"] == 1.0 and res.logs["coef/amco/1"] == 0.0
        assert res.logs["coef/amco/masked_classes"] == float(3 - mask.sum())
    # the prediction is the extra layer on the fused logits (no mask at evaluation)
    with torch.no_grad():
        out = net(xs)
        assert torch.allclose(amco.predict(out), amco.star(out.fused))


def test_every_modality_is_independent_at_the_start_of_an_epoch(tiny2):
    net = build_model(tiny2.dims, 3, ModelConfig(hidden=8, latent=4))
    amco = AMCo(AMCoParams(), net, 3)
    amco.dependent = torch.tensor([True, True])
    amco.on_epoch_start(3, StepContext(3, 0, 0, 5, 1, torch.Generator(), torch.device("cpu")))
    assert amco.dependent.tolist() == [False, False]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confidence_score_masks_the_strong_modality_in_most_steps(tiny2, seed):
    """score=confidence (the named deviation): with modality 0 strong, it is the masked one in most steps.
    (The reference's share of the joint softmax measures how large a modality's logits are, not how right;
    docs/baselines.md records what it does on the same data.)"""
    torch.manual_seed(seed)
    net = build_model(tiny2.dims, 3, ModelConfig(hidden=16, latent=8))
    amco = AMCo(AMCoParams(score="confidence"), net, 3)
    opt = torch.optim.AdamW([*net.parameters(), *amco.star.parameters()], lr=1e-2, weight_decay=0.01)
    seen: list[tuple[bool, bool]] = []
    drive(amco, net, tiny2, opt, epochs=6, batch_size=16, seed=seed,
          on_step=lambda e, s: seen.append((bool(amco.dependent[0]), bool(amco.dependent[1]))))
    assert sum(d0 and not d1 for d0, d1 in seen) > 0.6 * len(seen)


def test_reference_defaults_and_fusion():
    cfg = RunConfig.from_dict({"method": {"name": "amco"}})
    assert (cfg.train.optimizer, cfg.train.weight_decay) == ("adamw", 0.01)
    assert (cfg.method.params.sigma, cfg.method.params.eps, cfg.method.params.score) == (0.5, 0.3, "share")
    with pytest.raises(ConfigError, match="needs model.fusion=late"):
        RunConfig.from_dict({"method": {"name": "amco"}, "model": {"fusion": "mlp"}})

"""MBSD against the reference (BalanceBenchmark @4c1482f, balancemm/trainer/MBSD_trainer.py): its per-sample
loop written out (weights, the kl_div term, rs on logits for two modalities and on probabilities for three),
values and gradients in float64, and the weak modality pulled towards the strong one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.methods.loop_helpers import drive

from mcrlab.config import ModelConfig, RunConfig
from mcrlab.methods.base import StepContext
from mcrlab.methods.mbsd import MBSD, mbsd_regulariser
from mcrlab.methods.modulation import modality_logits
from mcrlab.models import build_model


def _reference_pair(la, lb, y, on_probs: bool):
    """The trainer's loop for one pair: w[i], ps[i], pw[i] filled sample by sample (gradients flow)."""
    pa, pb = torch.softmax(la, 1), torch.softmax(lb, 1)
    B, C = la.shape
    w, ps, pw = torch.zeros(B, dtype=la.dtype), torch.zeros(B, dtype=la.dtype), torch.zeros(B, dtype=la.dtype)
    for i in range(B):
        qa, qb = pa[i][y[i]], pb[i][y[i]]
        if pa[i].argmax() == y[i] or pb[i].argmax() == y[i]:
            w[i] = max(qa, qb) - min(qa, qb)
        ps[i], pw[i] = max(qa, qb), min(qa, qb)
    kl = F.kl_div(ps, pw, reduction="none")  # as the reference calls it: a probability as the "input"
    diff = pa - pb if on_probs else la - lb
    rs = 1 / C * torch.sum(diff ** 2, dim=1)
    return (w @ kl) / B, (w @ rs) / B


def _logits(M: int, B: int = 12, C: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lg = [(2 * torch.randn(B, C, generator=gen, dtype=torch.float64)).requires_grad_() for _ in range(M)]
    return lg, torch.randint(0, C, (B,), generator=gen)


@pytest.mark.parametrize("M", [2, 3])
def test_regulariser_and_its_gradients_are_the_reference_loop(M):
    lg, y = _logits(M)
    kl, rs = mbsd_regulariser(lg, y)
    pairs = [(0, 1)] if M == 2 else [(0, 1), (0, 2), (1, 2)]
    terms = [_reference_pair(lg[a], lg[b], y, on_probs=M > 2) for a, b in pairs]
    kl_ref = sum(t[0] for t in terms) / len(pairs)
    rs_ref = sum(t[1] for t in terms) / len(pairs)
    assert math.isclose(kl.item(), kl_ref.item(), rel_tol=1e-12, abs_tol=1e-15)
    assert math.isclose(rs.item(), rs_ref.item(), rel_tol=1e-12)
    assert rs.item() > 0 and kl.item() != 0.0  # the example exercises both terms
    g = torch.autograd.grad(kl + rs, lg)
    g_ref = torch.autograd.grad(kl_ref + rs_ref, lg)
    for a, b in zip(g, g_ref, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_by_hand_one_sample():
    # C = 2; modality a: p = softmax(ln 3, 0) = (3/4, 1/4), right for y = 0; modality b: (1/2, 1/2) (argmax 0,
    # also "right"): w = 3/4 - 1/2, kl = 1/2 (ln 1/2 - 3/4), rs = ((ln 3)^2 + 0) / 2
    la = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    lb = torch.zeros(1, 2, dtype=torch.float64)
    kl, rs = mbsd_regulariser([la, lb], torch.tensor([0]))
    w = 0.25
    assert math.isclose(float(kl), w * 0.5 * (math.log(0.5) - 0.75), rel_tol=1e-12)
    assert math.isclose(float(rs), w * math.log(3.0) ** 2 / 2, rel_tol=1e-12)
    # neither modality right (y = 1, both argmax 0): weight 0, no regularisation
    kl, rs = mbsd_regulariser([la, torch.tensor([[0.5, 0.0]], dtype=torch.float64)], torch.tensor([1]))
    assert float(kl) == 0.0 and float(rs) == 0.0


def _step(tiny2, model: ModelConfig):
    """One MBSD step in float64 on 16 rows: (net, xs, y, StepResult)."""
    torch.manual_seed(0)
    net = build_model(tiny2.dims, 3, model).double()
    xs = [torch.as_tensor(x[:16]).double() for x in tiny2.splits["train"].x]
    y = torch.as_tensor(tiny2.splits["train"].y[:16])
    res = MBSD(MBSD.Params(), net, 3).training_step(
        net, xs, y, StepContext(0, 0, 0, 1, 1, torch.Generator(), torch.device("cpu")))
    return net, xs, y, res


def test_loss_is_fused_ce_plus_unimodal_ces_plus_the_regulariser(tiny2):
    net, xs, y, res = _step(tiny2, ModelConfig(hidden=8, latent=4))
    with torch.no_grad():
        out = net(xs)
        b = net.fusion.bias
        l0, l1 = out.contribs[0] + b / 2, out.contribs[1] + b / 2  # the reference's W_m z_m + b/M
        kl, rs = _reference_pair(l0, l1, y, on_probs=False)
        ref = F.cross_entropy(out.fused, y) + F.cross_entropy(l0, y) + F.cross_entropy(l1, y) + kl + rs
    assert math.isclose(res.loss.item(), ref.item(), rel_tol=1e-12)


def test_mlp_fusion_uses_the_unimodal_heads(tiny2):
    net, xs, y, res = _step(tiny2, ModelConfig(hidden=8, latent=4, fusion="mlp", fusion_hidden=8))
    with torch.no_grad():
        out = net(xs)
        kl, rs = _reference_pair(out.heads[0], out.heads[1], y, on_probs=False)
        ref = F.cross_entropy(out.fused, y) + sum(F.cross_entropy(h, y) for h in out.heads) + kl + rs
    assert math.isclose(res.loss.item(), ref.item(), rel_tol=1e-12)
    res.loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in net.heads.parameters())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_regulariser_pulls_the_weak_modality_up_in_most_steps(tiny2, seed):
    """With modality 0 strong: a small descent step on the distillation terms alone raises the weak modality's
    mean true-class probability, at most training steps."""
    torch.manual_seed(seed)
    net = build_model(tiny2.dims, 3, ModelConfig(hidden=16, latent=8))
    mbsd = MBSD(MBSD.Params(), net, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.01)
    xs = [torch.as_tensor(x) for x in tiny2.splits["train"].x]
    y = torch.as_tensor(tiny2.splits["train"].y)
    helped: list[bool] = []

    def probe(epoch, step):
        with torch.no_grad():
            out = net(xs)
            lg = [t.double() for t in modality_logits(out, net.fusion.bias)]
        lg = [t.requires_grad_() for t in lg]
        kl, rs = mbsd_regulariser(lg, y)
        g1 = torch.autograd.grad(kl + rs, lg[1])[0]
        before = torch.softmax(lg[1], 1).gather(1, y[:, None]).mean()
        after = torch.softmax(lg[1] - 0.1 * g1, 1).gather(1, y[:, None]).mean()
        helped.append(bool(after > before))

    drive(mbsd, net, tiny2, opt, epochs=5, batch_size=16, seed=seed, on_step=probe)
    assert sum(helped) > 0.5 * len(helped)


def test_reference_defaults():
    cfg = RunConfig.from_dict({"method": {"name": "mbsd"}})
    assert (cfg.train.optimizer, cfg.train.weight_decay) == ("adamw", 0.01)

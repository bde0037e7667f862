"""Shared (contrastive) and irrelevant (ceb_mse, club) bounds against loops; gradcheck in float64."""

from __future__ import annotations

import math

import pytest
import torch

from mcrlab.mcr import CLUB, CEBDecoder, CLUBNet, ceb_mse, club_bound, contrastive_loss
from tests.mcr.reference import contrastive_reference


def _contrastive_loop(embs: list[torch.Tensor], y: torch.Tensor, tau: float, bound: str) -> torch.Tensor:
    """NT-Xent written anchor by anchor, pair by pair."""
    M, B = len(embs), len(y)
    e = [torch.nn.functional.normalize(x, dim=-1) for x in embs]
    items = [(m, i) for m in range(M) for i in range(B)]
    total, count = 0.0, 0
    for a, (ma, ia) in enumerate(items):
        def sim(b, ma=ma, ia=ia):
            mb, ib = items[b]
            return (e[ma][ia] * e[mb][ib]).sum() / tau
        denom = sum(torch.exp(sim(b)) for b in range(len(items)) if b != a)
        pos = [b for b, (mb, ib) in enumerate(items) if b != a and
               (y[ib] == y[ia] if bound == "supcon" else ib == ia)]
        if not pos:
            continue
        total = total - sum(sim(b) - torch.log(denom) for b in pos) / len(pos)
        count += 1
    return total / count


@pytest.mark.parametrize("bound", ["supcon", "infonce"])
@pytest.mark.parametrize("M", [2, 3])
def test_contrastive_matches_loop(bound, M):
    g = torch.Generator().manual_seed(M)
    y = torch.tensor([0, 1, 0, 2, 1])
    embs = [torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(M)]
    got = contrastive_loss(embs, y, 0.5, bound)
    torch.testing.assert_close(got, _contrastive_loop(embs, y, 0.5, bound), rtol=0, atol=1e-12)


def test_contrastive_hand_case_and_ordering():
    # two modalities, two samples of different labels; identical views across modalities
    e = [torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)] * 2
    y = torch.tensor([0, 1])
    # anchor (0,0): sims to others = [0 (other sample), 1/tau (same sample other modality), 0]
    tau = 0.5
    want = -(2.0 - math.log(math.exp(2.0) + 2.0))
    assert contrastive_loss(e, y, tau, "supcon").item() == pytest.approx(want, abs=1e-12)
    # aligned views give a lower loss than misaligned ones
    bad = [e[0], torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)]
    assert contrastive_loss(bad, y, tau, "infonce") > contrastive_loss(e, y, tau, "infonce")


@pytest.mark.parametrize("bound", ["supcon", "infonce"])
def test_contrastive_gradcheck(bound):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    proj = torch.randn(2, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda a, b: contrastive_loss([a, b @ proj], y, 0.5, bound), (a, b))


@pytest.mark.parametrize("bound", ["supcon", "infonce"])
@pytest.mark.parametrize("M", [2, 3])
@pytest.mark.parametrize("tau", [0.5, 0.3, 0.04])  # no shift (symmetric E), and the row maxima (1/tau > 20)
def test_fused_contrastive_node_equals_the_autograd_reference(bound, M, tau):
    """Value and gradients of the one-node bound (value and gradient in one forward) against plain autograd
    ops, with a label that has no positive in one modality set (supcon), a zero-norm row and a row of norm
    below F.normalize's eps (clamped: no projection in its gradient), and the value alone under no_grad."""
    g = torch.Generator().manual_seed(10 + M)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 3])
    embs = [(torch.randn(7, 4, generator=g, dtype=torch.float64) * 2).requires_grad_() for _ in range(M)]
    got = contrastive_loss(embs, y, tau, bound, num_classes=5)
    want = contrastive_reference(embs, y, tau, bound)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    w = torch.tensor(1.7, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got * w, embs), torch.autograd.grad(want * w, embs), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    zero = [torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)]
    embs2 = [torch.cat([zero[0], embs[0][1:]])] + embs[1:]
    assert torch.autograd.gradcheck(lambda *t: contrastive_loss(list(t), y, tau, bound), tuple(embs))
    a = torch.autograd.grad(contrastive_loss(embs2, y, tau, bound), zero)[0]
    b = torch.autograd.grad(contrastive_reference(embs2, y, tau, bound), zero)[0]
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)  # 1 / eps-sized: relative
    tiny = (torch.randn(1, 4, generator=g, dtype=torch.float64) * 1e-14).requires_grad_()
    embs3 = [torch.cat([tiny, embs[0][1:]])] + embs[1:]
    got, want = contrastive_loss(embs3, y, tau, bound), contrastive_reference(embs3, y, tau, bound)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(got, tiny)[0], torch.autograd.grad(want, tiny)[0],
                               rtol=1e-12, atol=0)
    with torch.no_grad():  # evaluation: the value alone, no gradient work
        torch.testing.assert_close(contrastive_loss(embs, y, tau, bound), contrastive_reference(embs, y, tau, bound),
                                   rtol=0, atol=1e-12)


def test_contrastive_defaults_one_modality_and_validation():
    g = torch.Generator().manual_seed(3)
    y = torch.tensor([0, 1, 0, 2])  # label 2: no positive within one modality
    embs = [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(2)]
    assert torch.equal(contrastive_loss(embs, y), contrastive_loss(embs, y, 0.5, "supcon"))
    one = [embs[0]]  # anchors without positives are left out of the mean
    torch.testing.assert_close(contrastive_loss(one, y, 0.5, "supcon"), contrastive_reference(one, y, 0.5),
                               rtol=0, atol=1e-12)
    x = embs[0].clone().requires_grad_()  # infonce over one modality: no anchor has a positive -> 0, finite
    loss = contrastive_loss([x], y, 0.5, "infonce")
    assert loss.item() == 0.0 and torch.equal(torch.autograd.grad(loss, x)[0], torch.zeros_like(x))
    with pytest.raises(ValueError, match="unknown shared bound 'simclr'"):
        contrastive_loss(embs, y, 0.5, "simclr")


def test_contrastive_low_precision_and_small_temperature():
    """bf16 embeddings are computed in float32; a tiny temperature in float32 stays finite and exact for an
    anchor whose every similarity is far below the batch's largest one (row-wise, not global, max)."""
    x = torch.tensor([[1.0, 0.0], [0.3, 1.0]])
    embs = [x, torch.stack([x[0], -x[0]])]  # anchor (1, 1) = -x0: similarities -1 / tau at best
    y = torch.tensor([0, 1])
    got = contrastive_loss(embs, y, 0.005, "supcon")
    want = contrastive_reference([e.double() for e in embs], y, 0.005, "supcon")
    assert torch.isfinite(got) and got.item() == pytest.approx(want.item(), rel=1e-5)
    # the largest temperature-scale of the constant shift (1/tau = 20): anti-aligned pairs give exp(-40)
    got = contrastive_loss(embs, y, 0.05, "supcon")
    want = contrastive_reference([e.double() for e in embs], y, 0.05, "supcon")
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    b16 = contrastive_loss([e.bfloat16() for e in embs], y, 0.5)
    assert b16.dtype == torch.float32
    ref = contrastive_reference([e.bfloat16().double() for e in embs], y, 0.5)
    assert b16.item() == pytest.approx(ref.item(), rel=1e-5)
    # under bf16 autocast the node's products stay in float32: the same value and gradient as without it
    g = torch.Generator().manual_seed(4)
    embs = [torch.randn(6, 8, generator=g, requires_grad=True) for _ in range(2)]
    y = torch.tensor([0, 1, 0, 2, 1, 1])
    plain = contrastive_loss(embs, y, 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = contrastive_loss(embs, y, 0.5)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain, rtol=1e-6, atol=0)
    for a, b in zip(torch.autograd.grad(cast, embs), torch.autograd.grad(plain, embs), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_ceb_mse_value_gradients_and_gradcheck():
    torch.manual_seed(0)
    dec = CEBDecoder(3, 4, 5).double()
    assert all(m.bias is None for m in dec.net if isinstance(m, torch.nn.Linear))
    fused = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    z1 = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    loss = ceb_mse(dec, fused, [z1, z2])
    w1, w2 = dec.net[0].weight, dec.net[2].weight
    want = ((torch.relu(fused @ w1.T) @ w2.T - torch.cat([z1, z2], 1)) ** 2).mean()
    torch.testing.assert_close(loss, want, rtol=0, atol=1e-14)
    loss.backward()
    assert fused.grad is None  # the logits are detached: the prediction is not moved by this bound
    assert z1.grad.abs().sum() > 0 and w1.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda a, b: ceb_mse(dec, fused.detach(), [a, b]),
                                    (z1.detach().requires_grad_(), z2.detach().requires_grad_()))


def _club_loop(net: CLUBNet, za, zb, y):
    mu, logvar = net(za, y)
    def logq(i, j):  # log q(zb_j | za_i, y_i) up to constants
        return -0.5 * (((zb[j] - mu[i]) ** 2) / logvar[i].exp() + logvar[i]).sum()
    B = len(y)
    total = 0.0
    for i in range(B):
        same = [j for j in range(B) if y[j] == y[i]]
        total = total + logq(i, i) - sum(logq(i, j) for j in same) / len(same)
    return total / B


def test_club_bound_matches_loop_and_trains_only_what_it_should():
    torch.manual_seed(1)
    net = CLUBNet(3, 2, 2, 5).double()
    g = torch.Generator().manual_seed(2)
    za = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    zb = torch.randn(7, 2, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    bound, nll = club_bound(net, za, zb, y)
    torch.testing.assert_close(bound, _club_loop(net, za, zb, y), rtol=0, atol=1e-12)
    # the bound moves the latents, never q; the nll moves q, never the latents
    gb = torch.autograd.grad(bound, [za, zb, *net.parameters()], allow_unused=True, retain_graph=True)
    assert gb[0].abs().sum() > 0 and gb[1].abs().sum() > 0 and all(g is None for g in gb[2:])
    gn = torch.autograd.grad(nll, [za, zb, *net.parameters()], allow_unused=True)
    assert gn[0] is None and gn[1] is None and any(g is not None and g.abs().sum() > 0 for g in gn[2:])
    assert torch.autograd.gradcheck(lambda a, b: club_bound(net, a, b, y)[0],
                                    (za.detach().requires_grad_(), zb.detach().requires_grad_()))
    # q's training signal: the Gaussian negative log-likelihood of the positive pairs (less log 2 pi / 2)
    mu, logvar = net(za, y)
    want = torch.stack([0.5 * (((zb[i] - mu[i]) ** 2) / logvar[i].exp() + logvar[i]).sum()
                        for i in range(len(y))]).mean()
    torch.testing.assert_close(nll, want, rtol=0, atol=1e-12)


def test_club_separates_dependent_from_independent_pairs():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    n = 256
    y = torch.randint(0, 2, (n,), generator=g)
    za = torch.randn(n, 2, generator=g)
    dep = za + 0.1 * torch.randn(n, 2, generator=g)  # shares label-irrelevant content with za
    ind = torch.randn(n, 2, generator=g)
    values = {}
    for name, zb in (("dep", dep), ("ind", ind)):
        club = CLUB([2, 2], 2, 16)
        opt = torch.optim.Adam(club.parameters(), lr=2e-2)
        for _ in range(100):
            _, nll = club([za, zb], y)
            opt.zero_grad()
            nll.backward()
            opt.step()
        values[name] = club([za, zb], y)[0].item()
    assert values["dep"] > 3.0 and abs(values["ind"]) < 0.5  # true I: ~4.6 and 0 nats


def test_club_network_is_nonlinear_and_codes_every_class_even_when_a_batch_lacks_some():
    """q(z_b | z_a, y) is an MLP (a ReLU between its layers: mu is not affine in z_a), and y is one-hot coded
    over all num_classes classes whatever the batch holds (a batch without the top class keeps the width)."""
    torch.manual_seed(0)
    net = CLUBNet(3, 2, num_classes=4, hidden=16).double()
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(8, 3, generator=g, dtype=torch.float64), torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.zeros(8, dtype=torch.long)  # only class 0 in this batch
    mu_a, _ = net(a, y)
    mu_b, _ = net(b, y)
    mu_mid, _ = net((a + b) / 2, y)
    assert (mu_mid - (mu_a + mu_b) / 2).abs().max().item() > 1e-3  # an affine map would give 0
    want = net.body[0](torch.cat([a, torch.nn.functional.one_hot(y, 4).double()], dim=-1)).relu()
    torch.testing.assert_close(mu_a, net.mu(want), rtol=0, atol=1e-12)

"""Divergences against hand-computed values; perturbation draws and their behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from mcrlab.mcr import divergence, draw_permutations, draw_perturbation
from mcrlab.mcr.divergence import inverse_permutations, mean_divergence, permuted_mean_divergence
from mcrlab.mcr.perturb import device_generator
from tests.mcr.reference import div_reference


def test_hand_computed_values():
    # p = softmax([0, 0]) = (1/2, 1/2); q = softmax([ln 3, 0]) = (3/4, 1/4)
    p = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # = 1/2 ln(4/3)
    m = (0.625, 0.375)
    jsd = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) \
        + 0.5 * (0.75 * math.log(0.75 / m[0]) + 0.25 * math.log(0.25 / m[1]))
    assert divergence(p, q, "kl").item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-15)
    assert divergence(p, q, "kl").item() == pytest.approx(kl, abs=1e-15)
    assert divergence(p, q, "jsd").item() == pytest.approx(jsd, abs=1e-15)
    a = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    assert divergence(a, b, "mse").item() == pytest.approx(13 / 3, abs=1e-15)


@pytest.mark.parametrize("kind", ["jsd", "kl", "mse"])
def test_divergence_matches_reference_and_broadcasts(kind):
    g = torch.Generator().manual_seed(0)
    p = torch.randn(5, 4, generator=g, dtype=torch.float64) * 3
    q = torch.randn(7, 5, 4, generator=g, dtype=torch.float64) * 3
    got = divergence(p, q, kind)  # (7, 5)
    assert got.shape == (7, 5)
    want = torch.stack([div_reference(p, q[s], kind) for s in range(7)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert (got >= 0).all()
    assert (divergence(p, p, kind) == 0).all()  # exactly zero for identical predictions


def test_jsd_is_symmetric_bounded_and_stable():
    p = torch.tensor([[300.0, -300.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[-300.0, 300.0, 0.0]], dtype=torch.float64)
    val = divergence(p, q, "jsd")
    assert torch.isfinite(val).all() and val.item() == pytest.approx(math.log(2), abs=1e-12)
    assert divergence(q, p, "jsd").item() == pytest.approx(val.item(), abs=1e-15)
    p32 = p.float().requires_grad_()
    divergence(p32, q.float(), "jsd").sum().backward()
    assert torch.isfinite(p32.grad).all()


def test_permutations_are_permutations_and_seeded():
    perms = draw_permutations(16, 10, torch.Generator().manual_seed(3))
    assert perms.shape == (16, 10)
    assert (perms.sort(dim=1).values == torch.arange(10)).all()
    again = draw_permutations(16, 10, torch.Generator().manual_seed(3))
    assert torch.equal(perms, again)
    assert len({tuple(r.tolist()) for r in perms}) > 1  # not the same permutation repeated


def test_cpu_permutations_are_fisher_yates_shuffles_of_the_generator():
    """On the CPU the S permutations are S ``torch.randperm`` draws from the run's generator, in order
    (the documented scheme: exact uniform, no sort), and the device defaults to the generator's."""
    perms = draw_permutations(5, 7, torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    assert torch.equal(perms, torch.stack([torch.randperm(7, generator=g) for _ in range(5)]))
    assert perms.device == torch.device("cpu")
    assert torch.equal(draw_permutations(5, 7, torch.Generator().manual_seed(8), "cpu"), perms)


def test_defaults_are_the_documented_ones():
    g = torch.Generator().manual_seed(5)
    p, q = torch.randn(2, 4, 3, generator=g, dtype=torch.float64), torch.randn(2, 2, 4, 3, generator=g,
                                                                               dtype=torch.float64)
    perms = draw_permutations(2, 4, g)
    assert torch.equal(divergence(p, q), divergence(p, q, "jsd"))
    assert torch.equal(mean_divergence(p, q), mean_divergence(p, q, "jsd"))
    assert torch.equal(permuted_mean_divergence(p, p, q[:, 0], perms),
                       permuted_mean_divergence(p, p, q[:, 0], perms, "jsd"))
    for fn in (lambda: divergence(p, q, "js"), lambda: mean_divergence(p, q, "js"),
               lambda: permuted_mean_divergence(p, p, q[:, 0], perms, "js")):
        with pytest.raises(ValueError, match="unknown divergence 'js'"):
            fn()


def test_permutations_are_uniform():
    """All 3! permutations of a batch of 3 come out equally often (chi-square, 5 dof, p ~ 1e-4 cut-off)."""
    perms = draw_permutations(6000, 3, torch.Generator().manual_seed(11))
    counts = torch.unique(perms, dim=0, return_counts=True)[1]
    assert counts.numel() == 6
    chi2 = ((counts.double() - 1000.0) ** 2 / 1000.0).sum()
    assert chi2 < 25.0
    g = torch.Generator().manual_seed(0)
    assert device_generator(g, torch.device("cpu")) is g  # no re-seeding on the generator's own device


def test_noise_and_zero_perturbations():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 3, dtype=torch.float64, generator=g) * torch.tensor([1.0, 5.0, 0.0], dtype=torch.float64)
    pert = draw_perturbation("noise", 50, [z, z[:, :2]], torch.Generator().manual_seed(1))
    zn = pert.latent(z, 0)  # (S, B, d)
    assert zn.shape == (50, 200, 3)
    diff = zn - z
    std = z.std(0, correction=0)
    # the added noise is N(0, 1) * batch std per feature: empirical std matches, zero-variance stays put
    torch.testing.assert_close(diff.std(dim=(0, 1)) / std.clamp(min=1e-12),
                               torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), atol=0.03, rtol=0)
    assert (diff[..., 2] == 0).all()
    zero = draw_perturbation("zero", 50, [z], torch.Generator().manual_seed(1))
    assert zero.size == 1 and (zero.latent(z, 0) == 0).all()
    w = torch.randn(4, 3, dtype=torch.float64, generator=g)
    torch.testing.assert_close(pert.contribution(z @ w.T, 0, z, w), zn @ w.T, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="unknown perturbation 'shuffle'"):
        draw_perturbation("shuffle", 2, [z], g)
    whole = r"^noise perturbation of a contribution needs z and the fusion weight$"
    with pytest.raises(ValueError, match=whole):
        pert.contribution(z @ w.T, 0, None, w)
    with pytest.raises(ValueError, match=whole):
        pert.contribution(z @ w.T, 0, z, None)


@pytest.mark.parametrize("kind", ["jsd", "kl", "mse"])
@pytest.mark.parametrize("batch", [5, 1])  # a batch of one: every reduction keeps its axes (no squeeze)
def test_fused_mean_divergences_equal_the_plain_formula(kind, batch):
    g = torch.Generator().manual_seed(1)
    p = (torch.randn(2, batch, 4, generator=g, dtype=torch.float64) * 4).requires_grad_()
    q = (torch.randn(2, 3, batch, 4, generator=g, dtype=torch.float64) * 4).requires_grad_()
    rest = (torch.randn(2, batch, 4, generator=g, dtype=torch.float64) * 4).requires_grad_()
    perms = draw_permutations(3, batch, g)
    w = torch.randn(2, dtype=torch.float64, generator=g)
    cases = [(lambda p, q: mean_divergence(p, q, kind), lambda p, q: divergence(p.unsqueeze(1), q, kind)),
             (lambda p, c: permuted_mean_divergence(p, rest, c, perms, kind),
              lambda p, c: divergence(p.unsqueeze(1), rest.unsqueeze(1) + c[:, perms], kind))]
    for fused, plain in cases:
        args = (p, q) if fused is cases[0][0] else (p, q[:, 0])
        a, b = fused(*args), plain(*args).mean((1, 2))
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        ga = torch.autograd.grad((a * w).sum(), args)
        gb = torch.autograd.grad((b * w).sum(), args)
        for x, y in zip(ga, gb, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
        assert torch.autograd.gradcheck(fused, args)
    extra = torch.autograd.grad(permuted_mean_divergence(p, rest, q[:, 0], perms, kind).sum(), rest)[0]
    want = torch.autograd.grad(divergence(p.unsqueeze(1), rest.unsqueeze(1) + q[:, 0][:, perms],
                                          kind).mean((1, 2)).sum(), rest)[0]
    torch.testing.assert_close(extra, want, rtol=0, atol=1e-12)


def test_fused_jsd_is_finite_for_extreme_logits_in_float32():
    p = torch.tensor([[[300.0, -300.0, 0.0], [0.0, -200.0, 0.0]]], requires_grad=True)
    q = torch.tensor([[[[-300.0, 300.0, 0.0], [0.0, -190.0, 0.0]]]], requires_grad=True)
    val = mean_divergence(p, q, "jsd")
    want = divergence(p.detach().double().unsqueeze(1), q.detach().double(), "jsd").mean()
    assert val.item() == pytest.approx(want.item(), rel=1e-6)
    val.sum().backward()
    assert torch.isfinite(p.grad).all() and torch.isfinite(q.grad).all()


def test_half_precision_logits_are_upcast():
    g = torch.Generator().manual_seed(4)
    p, q = torch.randn(2, 5, 3, generator=g), torch.randn(2, 4, 5, 3, generator=g)
    for fn in (lambda a, b: divergence(a.unsqueeze(1), b), lambda a, b: mean_divergence(a, b)):
        low = fn(p.bfloat16(), q.bfloat16())
        assert low.dtype == torch.float32
        torch.testing.assert_close(low, fn(p.bfloat16().double(), q.bfloat16().double()).float(),
                                   rtol=1e-5, atol=1e-6)


def test_inverse_permutations():
    perms = draw_permutations(6, 9, torch.Generator().manual_seed(2))
    inv = inverse_permutations(perms)
    assert torch.equal(inv, perms.argsort(dim=1))
    flat = inverse_permutations(perms, flat=True)  # row indices into the flattened (S * B) axis
    assert torch.equal(flat, inv + 9 * torch.arange(6).unsqueeze(1))
    assert torch.equal(torch.gather(perms, 1, inv), torch.arange(9).expand(6, 9))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_noise_is_drawn_in_the_latents_precision(dtype):
    """float64 latents get float64 noise (a float32 draw would be another, coarser sample)."""
    zs = [torch.randn(5, 3, dtype=dtype), torch.randn(5, 2, dtype=dtype)]
    pert = draw_perturbation("noise", 4, zs, torch.Generator().manual_seed(0))
    assert [n.dtype for n in pert.noise] == [dtype, dtype]
    assert [tuple(n.shape) for n in pert.noise] == [(4, 5, 3), (4, 5, 2)]

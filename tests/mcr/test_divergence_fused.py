"""The late-fusion node ``permuted_mean_divergence`` (value and gradients computed together, in reused
working arrays) against the literal loop over permutations and samples, float64, every divergence."""

from __future__ import annotations

import sys

import pytest
import torch

from mcrlab.mcr import divergence, draw_permutations
from mcrlab.mcr.divergence import (
    _core_backward,
    _core_forward,
    _permuted_value_and_grads,
    _sum_through_permutations,
    mean_divergence,
    permuted_mean_divergence,
)
from tests.mcr.reference import div_reference

KINDS = ["jsd", "kl", "mse"]


def _inputs(M=2, S=3, B=5, C=4, seed=0, scale=4.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    p, rest, contrib = ((torch.randn(M, B, C, generator=g, dtype=torch.float64) * scale).to(dtype)
                        .requires_grad_() for _ in range(3))
    return p, rest, contrib, draw_permutations(S, B, g)


def _loop(p, rest, contrib, perms, kind):
    """mean over s, i of div(p[m, i], rest[m, i] + contrib[m, pi_s(i)]), one sample at a time: (M,)."""
    M, B = p.shape[0], p.shape[1]
    S = perms.shape[0]
    def one(m, s, i):
        return div_reference(p[m, i:i + 1], rest[m, i:i + 1] + contrib[m, perms[s, i]].unsqueeze(0), kind)[0]

    return torch.stack([sum(one(m, s, i) for s in range(S) for i in range(B)) / (S * B) for m in range(M)])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (2, 1, 2, 3), (3, 6, 2, 2)])  # (M, S, B, C); S = 1, B = 2
def test_value_and_every_gradient_equal_the_loop(kind, shape):
    M, S, B, C = shape
    p, rest, contrib, perms = _inputs(M, S, B, C, seed=S + B)
    w = torch.randn(M, dtype=torch.float64, generator=torch.Generator().manual_seed(9))  # a gradient per row
    val = permuted_mean_divergence(p, rest, contrib, perms, kind)
    want = _loop(p, rest, contrib, perms, kind)
    torch.testing.assert_close(val, want, rtol=0, atol=1e-12)
    ref_grads = torch.autograd.grad((want * w).sum(), (p, rest, contrib), retain_graph=True)
    for a, b in zip(torch.autograd.grad((val * w).sum(), (p, rest, contrib)), ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    # the operator's unit gradients are the gradients of each row at weight 1
    op_val, *units = _permuted_value_and_grads(p.detach(), rest.detach(), contrib.detach(), perms, kind)
    torch.testing.assert_close(op_val, want.detach(), rtol=0, atol=1e-12)
    for m in range(M):
        row = torch.autograd.grad(want[m], (p, rest, contrib), retain_graph=True)
        for unit, ref in zip(units, row, strict=True):
            torch.testing.assert_close(unit[m], ref[m], rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_without_gradients_the_value_is_the_same(kind):
    p, rest, contrib, perms = _inputs(S=2, B=7)  # a shape of its own: the working arrays are made here
    with torch.inference_mode():  # first, so the working arrays are made in inference mode
        inference = permuted_mean_divergence(p, rest, contrib, perms, kind)
    with_grad = permuted_mean_divergence(p, rest, contrib, perms, kind)  # they cannot be written out of it
    with torch.no_grad():
        plain = permuted_mean_divergence(p, rest, contrib, perms, kind)
    for v in (plain, inference):
        torch.testing.assert_close(v, with_grad.detach(), rtol=0, atol=1e-14)
    torch.testing.assert_close(with_grad, _loop(p, rest, contrib, perms, kind), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_identical_prediction_gives_zero(kind):
    # contrib is the same row for every sample, so every permutation leaves q == rest + contrib == p exactly
    # (small integers: no rounding in the sums). Zero to rounding: log q and log p are two log-softmaxes
    # computed apart (as in main's node); the JSD's own terms are exactly 0 where they agree.
    g = torch.Generator().manual_seed(3)
    contrib = torch.randint(-3, 4, (2, 1, 5), generator=g).double().expand(2, 6, 5)
    rest = torch.randint(-3, 4, (2, 6, 5), generator=g).double()
    p = (rest + contrib).requires_grad_()
    contrib = contrib.clone().requires_grad_()
    rest = rest.requires_grad_()
    val = permuted_mean_divergence(p, rest, contrib, draw_permutations(4, 6, g), kind)
    assert val.abs().max() < 1e-15
    for x in torch.autograd.grad(val.sum(), (p, rest, contrib)):
        assert x.abs().max() < 1e-15


@pytest.mark.parametrize("kind", KINDS)
def test_extreme_logits_in_float32_stay_finite_and_accurate(kind):
    p, rest, contrib, perms = _inputs(S=4, B=6, C=3, seed=5, scale=150.0, dtype=torch.float32)
    val = permuted_mean_divergence(p, rest, contrib, perms, kind)
    p64, r64, c64 = (x.detach().double().requires_grad_() for x in (p, rest, contrib))
    # (the log-domain formula as the reference: plain probabilities underflow at these logits)
    want = divergence(p64.unsqueeze(1), r64.unsqueeze(1) + c64[:, perms], kind).mean((1, 2))
    torch.testing.assert_close(val.double(), want.detach(), rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(val.sum(), (p, rest, contrib))
    for a, b in zip(grads, torch.autograd.grad(want.sum(), (p64, r64, c64)), strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-5)


def test_results_do_not_share_the_reused_working_arrays():
    # a second call of the same shape reuses the working arrays: the first call's value and gradients stay
    a = _inputs(seed=1)
    b = _inputs(seed=2)
    first = _permuted_value_and_grads(*(x.detach() for x in a[:3]), a[3], "jsd")
    kept = [x.clone() for x in first]
    _permuted_value_and_grads(*(x.detach() for x in b[:3]), b[3], "jsd")
    for x, y in zip(first, kept, strict=True):
        assert torch.equal(x, y)
    # a change of shape or dtype between calls
    for S, dtype in ((7, torch.float64), (3, torch.float32), (3, torch.float64)):
        p, rest, contrib, perms = _inputs(S=S, seed=S, dtype=dtype)
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(permuted_mean_divergence(p, rest, contrib, perms).double(),
                                   _loop(*(x.double() for x in (p, rest, contrib)), perms, "jsd"),
                                   rtol=0, atol=tol)


@pytest.mark.parametrize("index_add", [True, False])  # the CPU's way and the GPU's, both run here
def test_sum_through_permutations_is_the_loop(index_add):
    g = torch.Generator().manual_seed(4)
    dq = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
    perms = draw_permutations(4, 5, g)
    want = torch.zeros(2, 3, 5, dtype=torch.float64)
    for s in range(4):
        for i in range(5):
            want[:, :, perms[s, i]] += dq[:, :, s, i]
    torch.testing.assert_close(_sum_through_permutations(dq, perms, index_add), want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_core_kernels_run_under_autograd_too(kind):
    # the working arrays are skipped where an input is tracked (``out=`` is refused there): same numbers
    g = torch.Generator().manual_seed(6)
    p = torch.randn(2, 4, 1, 5, generator=g, dtype=torch.float64)
    q = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        want, saved = _core_forward(kind, p, q.clone())
        want_grads = _core_backward(kind, saved, torch.ones(2, dtype=torch.float64), 3, 5)
    val, saved = _core_forward(kind, p.clone().requires_grad_(), q.clone())
    torch.testing.assert_close(val.detach(), want, rtol=0, atol=1e-15)
    grads = _core_backward(kind, saved, torch.ones(2, dtype=torch.float64), 3, 5)
    for a, b in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-15)


def test_compiled_mean_divergence_leaves_the_working_arrays_alone():
    # dynamo traces _MeanDivergence (no opaque operator there): its arrays stay out of the shared workspace
    module = sys.modules["mcrlab.mcr.divergence"]  # (the package's ``divergence`` is the function)
    g = torch.Generator().manual_seed(8)
    p = torch.randn(2, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(2, 5, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    module._WORKSPACE.__dict__.get("buffers", {}).clear()
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: mean_divergence(a, b), backend="eager", fullgraph=True)(p, q)
    assert not module._WORKSPACE.__dict__.get("buffers")
    torch.testing.assert_close(compiled, mean_divergence(p, q), rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_without_working_arrays_the_node_is_the_same(kind, monkeypatch):
    # above the size cap (and off the CPU) every temporary is a fresh array: the same numbers
    module = sys.modules["mcrlab.mcr.divergence"]
    p, rest, contrib, perms = _inputs(S=4, B=6, seed=11)
    reused = _permuted_value_and_grads(p.detach(), rest.detach(), contrib.detach(), perms, kind)
    monkeypatch.setattr(module, "_WORKSPACE_MAX_BYTES", 0)
    fresh = _permuted_value_and_grads(p.detach(), rest.detach(), contrib.detach(), perms, kind)
    for a, b in zip(fresh, reused, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    torch.testing.assert_close(fresh[0], _loop(p, rest, contrib, perms, kind).detach(), rtol=0, atol=1e-12)

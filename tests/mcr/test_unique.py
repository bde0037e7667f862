"""Unique information D_m: hand cases, fast path == loop reference == general path, a COPY task."""

from __future__ import annotations

import pytest
import torch

from mcrlab.config import ModelConfig
from mcrlab.mcr import (
    can_use_fast_path,
    draw_permutations,
    draw_perturbation,
    fast_perturbed_logits,
    unique_from_perturbation,
    unique_information,
)
from mcrlab.mcr.unique import fusion_weight
from mcrlab.models.net import ForwardOutput, MultimodalNet
from tests.mcr.reference import perturbed_latent_row, random_batch, tiny_net, unique_loop

KINDS = ["jsd", "kl", "mse"]
PERTS = ["permute", "noise", "zero"]


def test_constant_contribution_has_zero_unique_information():
    # M = 2; modality 1's contribution is the same row for every sample, modality 2's varies.
    l1 = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64).expand(4, 3)
    l2 = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, -1.0], [1.0, 1.0, 1.0], [-2.0, 0.5, 0.0]],
                      dtype=torch.float64)
    b = torch.tensor([0.25, 0.0, -0.5], dtype=torch.float64)
    z = [torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64)]
    out = ForwardOutput(z=z, fused=l1 + l2 + b, heads=[], contribs=[l1, l2])
    fusion = torch.nn.Module()
    fusion.additive = True
    for kind in KINDS:
        pert = draw_perturbation("permute", 8, z, torch.Generator().manual_seed(0))
        d = unique_from_perturbation(out, fusion, pert, divergence=kind)
        assert d[0].item() == 0.0  # exactly
        assert d[1].item() > 0.01


@pytest.mark.parametrize("fusion", ["late", "mlp"])
@pytest.mark.parametrize("pert_kind", PERTS)
@pytest.mark.parametrize("kind", KINDS)
def test_batched_paths_equal_per_permutation_loop(fusion, pert_kind, kind):
    model = tiny_net(fusion)
    xs, _ = random_batch()
    out = model(xs)
    pert = draw_perturbation(pert_kind, 5, out.z, torch.Generator().manual_seed(2))
    want = unique_loop(model, out, pert, kind)
    got = unique_from_perturbation(out, model.fusion, pert, divergence=kind)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    general = unique_from_perturbation(out, model.fusion, pert, divergence=kind, path="general")
    torch.testing.assert_close(general, want, rtol=0, atol=1e-10)
    if fusion == "late":  # gradients of the fast path equal those of the head re-run
        g_fast = torch.autograd.grad(got.sum(), list(model.parameters()), allow_unused=True,
                                     retain_graph=True)
        g_gen = torch.autograd.grad(general.sum(), list(model.parameters()), allow_unused=True)
        for a, b in zip(g_fast, g_gen, strict=True):
            if a is None or b is None:
                assert a is None and b is None
            else:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_unique_information_accepts_model_or_head_and_is_seeded():
    model = tiny_net("late")
    xs, _ = random_batch(batch=16)
    out = model(xs)
    a = unique_information(model, out, num_perms=4, generator=torch.Generator().manual_seed(5))
    b = unique_information(model.fusion, out, num_perms=4, generator=torch.Generator().manual_seed(5))
    assert a.shape == (2,) and torch.equal(a, b)
    one = unique_information(model, out, num_perms=4, generator=torch.Generator().manual_seed(5),
                             modalities=[1])
    assert one.shape == (1,)


def _copy_task(n: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x1 = torch.randn(n, 4, generator=g) * 0.3
    x1[:, 0] += 2.0 * y - 1.0  # the label bit lives in modality 1 only
    x2 = torch.randn(n, 4, generator=g)  # modality 2: noise
    return [x1, x2], y


def test_copy_task_trained_model_has_d1_much_larger_than_d2():
    torch.manual_seed(0)
    model = MultimodalNet([4, 4], 2, ModelConfig(hidden=16, depth=1, latent=8, fusion="late"))
    xs, y = _copy_task(512, 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(100):
        idx = torch.arange(step * 64, step * 64 + 64) % 512
        out = model([x[idx] for x in xs])
        loss = torch.nn.functional.cross_entropy(out.fused, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = _copy_task(256, 1)
    with torch.no_grad():
        out = model(xt)
        assert (out.fused.argmax(1) == yt).float().mean() > 0.95
        d = unique_information(model, out, num_perms=8, generator=torch.Generator().manual_seed(0))
    assert d[0] > 0.2  # nats; JSD <= ln 2
    assert d[0] > 20 * d[1]


@pytest.mark.parametrize("chunk,S", [(1, 3), (1 << 17, 3), (1, 8)])
def test_permuted_relu_linear_equals_the_plain_head_rerun(monkeypatch, chunk, S):
    """The MLP head's fused re-run (chunks of permutations, rebuilt in backward) against the plain ops:
    values, gradients to every input, gradcheck; chunk = 1 element forces one permutation per chunk."""
    from mcrlab.mcr import unique as unique_mod

    monkeypatch.setattr(unique_mod, "_CHUNK_ELEMS", chunk)
    g = torch.Generator().manual_seed(3)
    rest, contrib = (torch.randn(3, 5, 4, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    w = torch.randn(2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    perms = draw_permutations(S, 5, g)  # S > B too
    args = (rest, contrib, w, b)

    def fused(r, c, w, b):
        return unique_mod.permuted_relu_linear(r, c, perms, w, b)

    def plain(r, c, w, b):
        return torch.relu(r.unsqueeze(1) + c[:, perms]) @ w.T + b

    got, want = fused(*args), plain(*args)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    up = torch.randn(got.shape, generator=g, dtype=torch.float64)
    for a, c in zip(torch.autograd.grad((got * up).sum(), args), torch.autograd.grad((want * up).sum(), args),
                    strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(fused, args)
    assert torch.autograd.gradcheck(lambda r, c, w: unique_mod.permuted_relu_linear(r, c, perms, w, None),
                                    args[:3])


def _relu_linear_reference(p, rest, contrib, perms, w, b, kind):
    """The MLP game path literally: per m and s the tail re-run on the permuted hidden contribution."""
    from tests.mcr.reference import div_reference

    tail = lambda h: torch.relu(h) @ w.T + (0.0 if b is None else b)  # noqa: E731
    return torch.stack([torch.stack([div_reference(p[m], tail(rest[m] + contrib[m][perms[s]]), kind).mean()
                                     for s in range(perms.shape[0])]).mean() for m in range(p.shape[0])])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk,S,with_bias", [(1, 3, True), (1 << 17, 5, False), (2 * 7 * 4 * 2, 5, True)])
def test_relu_linear_divergence_node_equals_the_reference_loop(monkeypatch, kind, chunk, S, with_bias):
    """The one-node MLP game path (chunks re-run, scored and differentiated in forward; backward scales the
    stored gradients) against the literal loop: values, gradients of a weighted sum, gradcheck, and the
    value alone under no_grad. chunk = 1 forces one permutation per chunk, 2*7*4*2 a last partial chunk."""
    from mcrlab.mcr import unique as unique_mod

    monkeypatch.setattr(unique_mod, "_CHUNK_ELEMS", chunk)
    g = torch.Generator().manual_seed(5)
    M, B, H, C = 2, 7, 4, 3
    p = torch.randn(M, B, C, generator=g, dtype=torch.float64, requires_grad=True)
    rest, contrib = (torch.randn(M, B, H, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w = torch.randn(C, H, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64) if with_bias else None
    perms = draw_permutations(S, B, g)
    fused = unique_mod.permuted_relu_linear_divergence(p, rest, contrib, perms, w, b, kind)
    ref = _relu_linear_reference(p, rest, contrib, perms, w, b, kind)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-14)
    up = torch.tensor([0.7, -1.3], dtype=torch.float64)
    for a, c in zip(torch.autograd.grad((fused * up).sum(), [p, rest, contrib]),
                    torch.autograd.grad((ref * up).sum(), [p, rest, contrib]), strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda a, r, c: unique_mod.permuted_relu_linear_divergence(a, r, c, perms, w, b, kind), (p, rest, contrib))
    with torch.no_grad():
        torch.testing.assert_close(unique_mod.permuted_relu_linear_divergence(p, rest, contrib, perms, w, b, kind),
                                   ref.detach(), rtol=1e-12, atol=1e-14)


def test_relu_linear_divergence_node_runs_half_precision_inputs_in_float32():
    """bf16 inputs (autocast's logits) are scored in float32: the value is float32, close to the float64
    reference on the same bf16 numbers, and each gradient comes back in its input's dtype."""
    from mcrlab.mcr import unique as unique_mod

    g = torch.Generator().manual_seed(6)
    p, rest, contrib = (torch.randn(2, 8, k, generator=g).bfloat16().requires_grad_() for k in (3, 5, 5))
    w, b = torch.randn(3, 5, generator=g).bfloat16(), torch.randn(3, generator=g).bfloat16()
    perms = draw_permutations(4, 8, g)
    val = unique_mod.permuted_relu_linear_divergence(p, rest, contrib, perms, w, b, "jsd")
    assert val.dtype == torch.float32
    ref = _relu_linear_reference(*(t.detach().double() for t in (p, rest, contrib)), perms, w.double(), b.double(),
                                 "jsd")
    torch.testing.assert_close(val.double(), ref, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(val.sum(), [p, rest, contrib])
    assert all(gr.dtype == torch.bfloat16 and torch.isfinite(gr).all() for gr in grads)


@pytest.mark.parametrize("pert_kind", PERTS)
def test_split_head_with_another_tail_equals_the_loop(pert_kind):
    model = tiny_net("mlp", (4, 3, 2))
    model.fusion.net[1] = torch.nn.Tanh()  # not ReLU -> Linear: the generic tail re-run
    xs, _ = random_batch((4, 3, 2))
    out = model(xs)
    pert = draw_perturbation(pert_kind, 5, out.z, torch.Generator().manual_seed(2))
    got = unique_from_perturbation(out, model.fusion, pert, divergence="jsd")
    torch.testing.assert_close(got, unique_loop(model, out, pert, "jsd"), rtol=0, atol=1e-10)


def test_fast_perturbed_logits_needs_no_latents_for_permute_and_zero():
    model = tiny_net("late")
    xs, _ = random_batch()
    out = model(xs)
    for kind in ("permute", "zero"):
        pert = draw_perturbation(kind, 3, out.z, torch.Generator().manual_seed(1))
        q = fast_perturbed_logits(out.fused, out.contribs, 1, pert)  # zs, weight not given
        zs = [perturbed_latent_row(out.z[1], pert, 1, s) for s in range(pert.size)]
        want = torch.stack([model.fusion([out.z[0], z]) for z in zs])
        torch.testing.assert_close(q, want, rtol=0, atol=1e-12)


def test_perturbed_latents_keep_the_latent_dtype():
    """Noise is drawn in float32 for low-precision latents and cast to the latent's dtype (bf16 autocast)."""
    z = torch.randn(6, 4).bfloat16()
    pert = draw_perturbation("noise", 2, [z], torch.Generator().manual_seed(0))
    assert pert.noise[0].dtype == torch.float32
    assert pert.latent(z, 0).dtype == torch.bfloat16
    w = torch.randn(3, 4).bfloat16()
    assert pert.contribution(z @ w.T, 0, z, w).dtype == torch.bfloat16


def test_unique_defaults_paths_and_fast_path_conditions():
    model = tiny_net("late")
    xs, _ = random_batch(batch=16)
    out = model(xs)
    gen = torch.Generator
    # documented defaults: S = 8 permutations, jsd, path auto
    default = unique_information(model, out, generator=gen().manual_seed(5))
    explicit = unique_information(model, out, num_perms=8, divergence="jsd", perturbation="permute",
                                  path="auto", generator=gen().manual_seed(5))
    assert torch.equal(default, explicit)
    pert = draw_perturbation("permute", 3, out.z, gen().manual_seed(1))
    assert torch.equal(unique_from_perturbation(out, model.fusion, pert),
                       unique_from_perturbation(out, model.fusion, pert, divergence="jsd"))
    # "fast" is refused where there are no per-modality contributions; "general" is always possible
    mlp = tiny_net("mlp")
    out_mlp = mlp(xs)
    with pytest.raises(ValueError, match="fast path needs late fusion"):
        unique_from_perturbation(out_mlp, mlp.fusion, pert, path="fast")
    # the fast path needs contributions AND an additive head; noise also needs the weights W_m
    assert can_use_fast_path(out, model.fusion, "noise") and can_use_fast_path(out, model.fusion, "permute")
    assert not can_use_fast_path(out, mlp.fusion, "permute")
    bare = torch.nn.Module()
    bare.additive = True  # additive, but no W_m to push noise through
    assert can_use_fast_path(out, bare, "permute") and not can_use_fast_path(out, bare, "noise")
    assert fusion_weight(bare, 0) is None and fusion_weight(model.fusion, 1) is model.fusion.proj[1].weight

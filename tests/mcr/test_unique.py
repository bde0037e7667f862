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

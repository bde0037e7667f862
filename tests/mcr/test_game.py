"""The game term: fast form == literal reference; gradients as the spec states them; behaviour."""

from __future__ import annotations

import itertools

import pytest
import torch

from mcrlab.config import ModelConfig
from mcrlab.mcr import coefficients, draw_perturbation, game_term, game_term_reference
from mcrlab.models.net import ForwardOutput, MultimodalNet
from tests.mcr.reference import div_reference, perturbed_latent_row, random_batch, tiny_net

STRATEGIES = [-1.0, 0.0, 1.0]


def _grads(value: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    gs = torch.autograd.grad(value, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params, strict=True)]


def _assert_same_grads(a: torch.Tensor, b: torch.Tensor, model: MultimodalNet, atol: float) -> None:
    """d a / d theta == d b / d theta for every parameter of ``model`` (an unused one counts as zero)."""
    params = list(model.parameters())
    for ga, gb in zip(_grads(a, params), _grads(b, params), strict=True):
        torch.testing.assert_close(ga, gb, rtol=0, atol=atol)


def _player_params(model: MultimodalNet, m: int) -> list[torch.Tensor]:
    return [p for mod in model.player_modules(m) for p in mod.parameters()]


@pytest.mark.parametrize("fusion,in_dims", [("late", (4, 3)), ("late", (4, 3, 2)), ("mlp", (4, 3, 2))])
@pytest.mark.parametrize("k", STRATEGIES)
@pytest.mark.parametrize("ref", ["same", "full"])
@pytest.mark.parametrize("pert_kind,div", [("permute", "jsd"), ("permute", "kl"), ("permute", "mse"),
                                           ("noise", "jsd"), ("zero", "kl")])
def test_fast_game_equals_literal_reference(fusion, in_dims, k, ref, pert_kind, div):
    model = tiny_net(fusion, in_dims)
    xs, _ = random_batch(in_dims)
    out = model(xs)
    pert = draw_perturbation(pert_kind, 3, out.z, torch.Generator().manual_seed(4))
    kw = dict(lambda_m=0.3, k=k, divergence=div, reference_grad=ref)
    fast, d = game_term(out, model.fusion, pert, **kw)
    slow = game_term_reference(out, model.fusion, pert, **kw)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    _assert_same_grads(fast, slow, model, atol=1e-10)
    M = len(in_dims)
    assert d.shape == (M,) and not d.requires_grad
    # the value is the definition's: -lambda (1 + k(M-1)) sum_j D_j; collaborative: the spec's -lambda sum_j D_j
    scale = 1.0 if k == 1.0 else 1 + k * (M - 1)
    torch.testing.assert_close(fast.detach(), -0.3 * scale * d.sum(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", STRATEGIES)
@pytest.mark.parametrize("ref", ["same", "full"])
@pytest.mark.parametrize("pert_kind", ["permute", "noise"])
def test_generic_head_rerun_game_equals_reference(k, ref, pert_kind):
    """The whole-head re-run (used for heads without a linear first layer), forced on late fusion."""
    model = tiny_net("late", (4, 3, 2))
    xs, _ = random_batch((4, 3, 2))
    out = model(xs)
    pert = draw_perturbation(pert_kind, 3, out.z, torch.Generator().manual_seed(4))
    kw = dict(lambda_m=0.3, k=k, reference_grad=ref, path="general")
    fast, _ = game_term(out, model.fusion, pert, **kw)
    slow = game_term_reference(out, model.fusion, pert, **kw)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    _assert_same_grads(fast, slow, model, atol=1e-10)


def _d_terms(model: MultimodalNet, out: ForwardOutput, pert, q_live: set[int], p_live: set[int],
             kind: str = "jsd") -> torch.Tensor:
    """D_j (M,) with explicit detach sets for q's and p's branches; bias / head detached; loops."""
    M = len(out.z)
    late = out.contribs is not None
    if late:
        b = (out.fused - sum(out.contribs)).detach()
        lq = [c if m in q_live else c.detach() for m, c in enumerate(out.contribs)]
        lp = [c if m in p_live else c.detach() for m, c in enumerate(out.contribs)]
        p = sum(lp) + b
    else:
        params = {n: t.detach() for n, t in model.fusion.named_parameters()}

        def head(zs):
            return torch.func.functional_call(model.fusion, params, (zs,))

        zq = [z if m in q_live else z.detach() for m, z in enumerate(out.z)]
        p = head([z if m in p_live else z.detach() for m, z in enumerate(out.z)])
    ds = []
    for j in range(M):
        rows = []
        for s in range(pert.size):
            if late:
                w = model.fusion.proj[j].weight if j in q_live else model.fusion.proj[j].weight.detach()
                zj = perturbed_latent_row(out.z[j] if j in q_live else out.z[j].detach(), pert, j, s)
                lj = lq[j][pert.perms[s]] if pert.kind == "permute" else zj @ w.T
                q = sum(lj if m == j else lq[m] for m in range(M)) + b
            else:
                q = head([perturbed_latent_row(zq[j], pert, j, s) if m == j else zq[m] for m in range(M)])
            rows.append(div_reference(p, q, kind).mean())
        ds.append(torch.stack(rows).mean())
    return torch.stack(ds)


@pytest.mark.parametrize("fusion,in_dims", [("late", (4, 3)), ("mlp", (4, 3)), ("late", (4, 3, 2))])
@pytest.mark.parametrize("k", STRATEGIES)
@pytest.mark.parametrize("pert_kind", ["permute", "noise"])
def test_player_gradients_as_the_spec_states(fusion, in_dims, k, pert_kind):
    """Player m's gradient from R_game (lambda = 1) is that of -(D_m + k sum_{j!=m} D_j) with every other
    branch detached ("same"); with "full", the p side of each D_j counts (1 + k(M-1)) times instead."""
    model = tiny_net(fusion, in_dims, seed=3)
    xs, _ = random_batch(in_dims, batch=7, seed=5)
    out = model(xs)
    M = len(in_dims)
    pert = draw_perturbation(pert_kind, 4, out.z, torch.Generator().manual_seed(6))
    c = coefficients(M, k, dtype=torch.float64)
    for ref in ("same", "full"):
        r, _ = game_term(out, model.fusion, pert, lambda_m=1.0, k=k, reference_grad=ref)
        for m in range(M):
            params = _player_params(model, m)
            if ref == "same":
                target = -(c[m] * _d_terms(model, out, pert, {m}, {m})).sum()
            else:
                target = -(c[m] * _d_terms(model, out, pert, {m}, set())).sum() \
                         - (c.sum(0) * _d_terms(model, out, pert, set(), {m})).sum()
            for a, b in zip(_grads(r, params), _grads(target, params), strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        # nothing outside the players moves: fusion bias (late) or the whole head (mlp)
        others = [model.fusion.bias] if fusion == "late" else list(model.fusion.parameters())
        assert all((g == 0).all() for g in _grads(r, others))


def test_greedy_same_and_full_differ():
    model = tiny_net("late", seed=2)
    xs, _ = random_batch(batch=8)
    out = model(xs)
    pert = draw_perturbation("permute", 4, out.z, torch.Generator().manual_seed(0))
    params = _player_params(model, 0)
    same, _ = game_term(out, model.fusion, pert, lambda_m=1.0, k=-1.0, reference_grad="same")
    full, _ = game_term(out, model.fusion, pert, lambda_m=1.0, k=-1.0, reference_grad="full")
    gap = max((a - b).abs().max().item() for a, b in zip(_grads(same, params), _grads(full, params),
                                                          strict=True))
    assert gap > 1e-4


def _both_informative(n: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    xs = [torch.randn(n, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    xs[0][:, 0] += 1.5 * (2 * y - 1)
    xs[1][:, 0] += 1.0 * (2 * y - 1)
    return xs, y


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fusion", ["late", "mlp"])
def test_greedy_step_on_encoder_1_raises_d1_and_lowers_d2(seed, fusion):
    """The spec's behavioural check, on a model briefly trained where both modalities carry the label.

    At initialisation (logits ~ 0) D_2's gradient on encoder 1 is tiny and can align with D_1's (both
    grow with the overall logit scale), so the first-order statement is only meaningful once the
    modalities compete for the prediction; there the two gradients are nearly opposite.
    """
    torch.manual_seed(seed)
    model = MultimodalNet([4, 4], 2, ModelConfig(hidden=16, depth=1, latent=8, fusion=fusion,
                                                 fusion_hidden=16)).double()
    xs, y = _both_informative(256, seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(xs).fused, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model(xs)
    pert = draw_perturbation("permute", 8, out.z, torch.Generator().manual_seed(seed))
    r, d0 = game_term(out, model.fusion, pert, lambda_m=1.0, k=-1.0)
    enc = list(model.encoders[0].parameters())
    grads = torch.autograd.grad(r, enc)
    norm = torch.cat([g.flatten() for g in grads]).norm()
    with torch.no_grad():
        for p, g in zip(enc, grads, strict=True):
            p -= 1e-3 * g / norm  # a small step along -grad R_game, encoder 1 only
        _, d1 = game_term(model(xs), model.fusion, pert, lambda_m=1.0, k=-1.0)
    assert d1[0] > d0[0]
    assert d1[1] < d0[1]


def test_coefficients():
    c = coefficients(3, -1.0)
    assert torch.equal(c, torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]]))
    assert list(itertools.chain(*coefficients(2, 0.0).tolist())) == [1.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("k", STRATEGIES)
@pytest.mark.parametrize("pert_kind", ["permute", "noise", "zero"])
def test_split_head_with_another_tail_equals_reference(k, pert_kind):
    """An MLP head whose tail is not ReLU -> Linear (Tanh here) takes the generic tail path of the split
    head (perturbed hidden contributions, tail re-run): still the reference's value and gradients."""
    model = tiny_net("mlp", (4, 3, 2))
    model.fusion.net[1] = torch.nn.Tanh()
    xs, _ = random_batch((4, 3, 2))
    out = model(xs)
    pert = draw_perturbation(pert_kind, 3, out.z, torch.Generator().manual_seed(4))
    kw = dict(lambda_m=0.3, k=k)
    fast, _ = game_term(out, model.fusion, pert, **kw)
    slow = game_term_reference(out, model.fusion, pert, **kw)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    _assert_same_grads(fast, slow, model, atol=1e-10)


@pytest.mark.parametrize("div", ["kl", "mse"])
@pytest.mark.parametrize("k", [-1.0, 0.3])  # 0.3: not exact in float32, so the coefficients keep float64
def test_generic_head_rerun_honours_the_divergence_and_precision(div, k):
    """The whole-head re-run with a divergence other than the default and a k with no exact float32 value:
    value and gradients are the reference's to 1e-12 (a JSD, or float32 coefficients, would be off)."""
    model = tiny_net("late", (4, 3, 2))
    xs, _ = random_batch((4, 3, 2))
    out = model(xs)
    pert = draw_perturbation("permute", 3, out.z, torch.Generator().manual_seed(4))
    kw = dict(lambda_m=0.3, k=k, divergence=div, path="general")
    fast, _ = game_term(out, model.fusion, pert, **kw)
    slow = game_term_reference(out, model.fusion, pert, **kw)
    jsd, _ = game_term(out, model.fusion, pert, **{**kw, "divergence": "jsd"})
    assert (fast - jsd).abs().item() > 1e-3  # the choice matters at this point
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    _assert_same_grads(fast, slow, model, atol=1e-12)


@pytest.mark.parametrize("pert_kind", ["permute", "noise"])
def test_split_head_with_a_bias_free_last_layer_equals_reference(pert_kind):
    """An MLP head whose last Linear has no bias (a plug-in head may): the fused ReLU -> Linear node runs
    without a bias and still gives the reference's value and gradients."""
    model = tiny_net("mlp", (4, 3, 2))
    last = [m for m in model.fusion.modules() if isinstance(m, torch.nn.Linear)][-1]
    last.bias = None
    xs, _ = random_batch((4, 3, 2))
    out = model(xs)
    pert = draw_perturbation(pert_kind, 3, out.z, torch.Generator().manual_seed(4))
    kw = dict(lambda_m=0.3, k=-1.0)
    fast, _ = game_term(out, model.fusion, pert, **kw)
    slow = game_term_reference(out, model.fusion, pert, **kw)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)
    _assert_same_grads(fast, slow, model, atol=1e-10)


def test_forcing_the_fast_path_without_late_fusion_is_refused_with_its_reason():
    model = tiny_net("mlp", (4, 3))
    xs, _ = random_batch((4, 3))
    out = model(xs)
    pert = draw_perturbation("permute", 2, out.z, torch.Generator().manual_seed(0))
    from mcrlab.mcr import unique_from_perturbation

    whole = r"^the fast path needs late fusion \(per-modality contributions\)$"
    for call in (lambda: game_term(out, model.fusion, pert, lambda_m=1.0, k=-1.0, path="fast"),
                 lambda: game_term_reference(out, model.fusion, pert, lambda_m=1.0, k=-1.0, path="fast"),
                 lambda: unique_from_perturbation(out, model.fusion, pert, path="fast")):
        with pytest.raises(ValueError, match=whole):
            call()


@pytest.mark.parametrize("pert_kind", ["permute", "noise"])
@pytest.mark.parametrize("path", ["fast", "general"])
def test_fusion_bias_enters_p_and_q_alike(pert_kind, path):
    """A trained late-fusion head has a bias (it starts at 0, where +b and -b cannot be told apart): with a
    nonzero bias each path equals the literal reference of that path (value and gradients; the re-run path
    keeps the head's weights out of the game, so gradients are compared path by path), and both paths give
    the same value."""
    model = tiny_net("late", (4, 3, 2))
    with torch.no_grad():
        model.fusion.bias.copy_(torch.tensor([1.5, -2.0, 0.7], dtype=torch.float64))
    xs, _ = random_batch((4, 3, 2))
    out = model(xs)
    pert = draw_perturbation(pert_kind, 3, out.z, torch.Generator().manual_seed(4))
    kw = dict(lambda_m=0.3, k=-1.0)
    got, _ = game_term(out, model.fusion, pert, **kw, path=path)
    slow = game_term_reference(out, model.fusion, pert, **kw, path=path)
    other = game_term_reference(out, model.fusion, pert, **kw, path="general" if path == "fast" else "fast")
    assert got.abs().item() > 1e-4  # M = 3: the greedy game has a value
    torch.testing.assert_close(got, slow, rtol=0, atol=1e-10)
    torch.testing.assert_close(got, other, rtol=0, atol=1e-10)
    _assert_same_grads(got, slow, model, atol=1e-10)

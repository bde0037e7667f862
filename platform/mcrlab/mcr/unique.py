"""Unique information D_m = mean_{s,i} div(p_i, q_i^{ms}) by latent perturbation (mcr-method.md 2.1).

M = modalities, S = perturbations, B = batch, C = classes, d_m = latent width of modality m.

p_i = softmax(g(z_i)) is the clean prediction; q_i^{ms} the prediction with modality m's latent
perturbed (permuted across the batch by pi_s, noised or zeroed). Two exact ways to get q's logits,
both batched over all S at once (no Python loop over permutations):

- FAST PATH (late linear fusion g = sum_m l_m + b, l_m = W_m z_m): perturbing z_m equals perturbing l_m,
  so q's logits are  l_m[pi_s] + sum_{j != m} l_j + b  =  fused - l_m + l_m[pi_s]:  O(S*B*C) work, no
  encoder or head pass. Noise needs W_m: fused - l_m + (z_m + eps*std) W_m^T.
- GENERAL PATH (any fusion head accepting leading dims): re-run only the head on latents stacked to
  (S, B, d), with modality m's row perturbed and the others broadcast. For the concat -> MLP head the
  same identity holds at its first (linear) layer, so only the layers after it are re-run.
"""

from __future__ import annotations

import torch
from torch import nn

from mcrlab.mcr.divergence import (
    _core_backward,
    _core_forward,
    _upcast,
    mean_divergence,
    permuted_mean_divergence,
)
from mcrlab.mcr.opaque import with_gradients
from mcrlab.mcr.perturb import Perturbation, draw_perturbation
from mcrlab.models.fusion import MLPFusion
from mcrlab.models.net import ForwardOutput

__all__ = ["fast_perturbed_logits", "head_perturbed_logits", "split_head", "relu_linear_tail",
           "permuted_relu_linear", "permuted_relu_linear_divergence", "unique_from_perturbation", "unique_information", "can_use_fast_path",
           "fusion_weight"]


def fusion_weight(fusion: nn.Module, m: int) -> torch.Tensor | None:
    """W_m (C, d_m) of a late-fusion head (``LateFusion.proj[m]``), else None."""
    proj = getattr(fusion, "proj", None)
    return None if proj is None else proj[m].weight


def can_use_fast_path(out: ForwardOutput, fusion: nn.Module, kind: str) -> bool:
    """The fast path needs per-modality contributions; noise also needs the weights W_m."""
    if out.contribs is None or not getattr(fusion, "additive", False):
        return False
    return kind != "noise" or fusion_weight(fusion, 0) is not None


def fast_perturbed_logits(fused: torch.Tensor, contribs: list[torch.Tensor], m: int, pert: Perturbation,
                          zs: list[torch.Tensor] | None = None, weight: torch.Tensor | None = None
                          ) -> torch.Tensor:
    """q's logits for modality m under late fusion: fused (B, C), contribs M x (B, C) -> (S', B, C).

    ``fused`` must equal sum(contribs) + b; the bias and the other modalities enter through
    ``fused - l_m``, so whatever gradient pattern ``fused`` and ``contribs`` carry is kept.
    """
    l_m = contribs[m]
    z_m = None if zs is None else zs[m]
    return (fused - l_m).unsqueeze(0) + pert.contribution(l_m, m, z_m, weight)


def split_head(fusion: nn.Module, dims: list[int]) -> tuple[list[torch.Tensor], torch.Tensor, nn.Module] | None:
    """For an ``MLPFusion`` head, tail(W [z_1; ..; z_M] + b): (W_m (H, d_m) per modality, b (H,), tail).

    Its first layer is linear in each latent, so perturbing z_m equals perturbing the hidden contribution
    u_m = z_m W_m^T: the head re-run then costs O(S*B*H*(1 + C)) instead of O(S*B*sum(d)*H). None for
    heads without that structure (they are re-run whole).
    """
    if not isinstance(fusion, MLPFusion) or not isinstance(fusion.net[0], nn.Linear):
        return None
    first = fusion.net[0]
    if first.in_features != sum(dims):
        return None
    return list(first.weight.split(dims, dim=1)), first.bias, fusion.net[1:]


def relu_linear_tail(tail: nn.Module) -> nn.Linear | None:
    """The Linear of a head tail of the form ReLU -> Linear (``MLPFusion``'s), else None."""
    if isinstance(tail, nn.Sequential) and len(tail) == 2 and isinstance(tail[0], nn.ReLU) \
            and isinstance(tail[1], nn.Linear) and not tail[0].inplace:
        return tail[1]
    return None


# elements of one (M, S_chunk, B, H) hidden block: small enough to stay in cache between the ops on it
_CHUNK_ELEMS = 1 << 19


def permuted_relu_linear(rest: torch.Tensor, contrib: torch.Tensor, perms: torch.Tensor,
                         weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """relu(rest_i + contrib[pi_s(i)]) @ weight^T + bias for all S permutations, as one autograd node.

    rest, contrib (M, B, H); perms (S, B); weight (C, H); bias (C,) or None -> (M, S, B, C).
    The MLP head's re-run over every permutation: the (M, S, B, H) hidden activations are never held
    whole; they are built, used and (in backward) rebuilt in cache-sized chunks of permutations, so the
    cost is a few passes over chunks instead of ~10 passes over the full array. Equal to
    ``tail(rest.unsqueeze(1) + contrib[:, perms])`` with tail = ReLU -> Linear(weight, bias).
    """
    return _PermutedReluLinear.apply(rest, contrib, perms, weight, bias)


def permuted_relu_linear_divergence(p_logits: torch.Tensor, rest: torch.Tensor, contrib: torch.Tensor,
                                    perms: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                    kind: str) -> torch.Tensor:
    """``mean_divergence(p_logits, permuted_relu_linear(rest, contrib, perms, weight, bias), kind)``: (M,).

    p_logits (M, B, C), rest and contrib (M, B, H), perms (S, B), weight (C, H), bias (C,) or None.
    The MLP head's game path. With the tail's weights constant (the game detaches them) it is one node,
    ``relu_linear_divergence_and_grads``: each chunk of permutations is re-run, scored and differentiated
    while its hidden activations are in cache (under torch.compile as one opaque operator, mcr/opaque.py).
    With weights that need a gradient it is the two nodes.
    """
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        return mean_divergence(p_logits, permuted_relu_linear(rest, contrib, perms, weight, bias), kind)
    inputs = [p_logits, rest, contrib]
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in inputs)):  # measurement: the value alone
        return relu_linear_divergence_and_grads(p_logits, rest, contrib, perms, weight, bias, kind,
                                                need_grad=False)[0]
    if torch.compiler.is_compiling():
        val, *grads = torch.ops.mcrlab.permuted_relu_linear_divergence(
            p_logits.detach(), rest.detach(), contrib.detach(), perms, weight, bias, kind)
    else:  # the same value and per-row gradients, put into the graph the same way (exact: see mcr/opaque.py)
        val, grads = relu_linear_divergence_and_grads(p_logits, rest, contrib, perms, weight, bias, kind)
    return with_gradients(val, inputs, list(grads))


def relu_linear_divergence_and_grads(p_logits: torch.Tensor, rest: torch.Tensor, contrib: torch.Tensor,
                                     perms: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                     kind: str, need_grad: bool = True
                                     ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The value (M,) of ``permuted_relu_linear_divergence`` and, if ``need_grad``, the gradients of
    value[m] with respect to p_logits[m], rest[m] and contrib[m] (shapes of the inputs; () if not).

    One loop over chunks of permutations. Per chunk: the hidden activations h = relu(rest_i +
    contrib[pi_s(i)]) (M * s * B, H), the logits made class-major directly, q[m] = W h_m^T + b (C, s * B),
    the divergence's forward and backward on them (``_core_forward``/``_core_backward``: a row's gradient
    depends on its own q and p only), then d h = (W^T dq) masked by h > 0, summed into rest's gradient and
    scattered into contrib's through the permutation. So h is built once and never rebuilt, and q is never
    transposed. Computed in float32 for half-precision inputs, autocast off (the logits' differences
    vanish in bf16; the tail is a small share of the step).
    """
    M, B, H = contrib.shape
    S = perms.shape[0]
    dtype = _upcast(p_logits).dtype
    with torch.autocast(p_logits.device.type, enabled=False):
        p, rest, contrib = (t.detach().to(dtype) for t in (p_logits, rest, contrib))
        w = weight.detach().to(dtype)
        b = None if bias is None else bias.detach().to(dtype).unsqueeze(1)  # (C, 1)
        C = w.shape[0]
        pt = p.transpose(1, 2).unsqueeze(2).contiguous()  # (M, C, 1, B)
        val = p.new_zeros(M)
        if need_grad:
            d_pt, d_rest, d_contrib = torch.zeros_like(pt), torch.zeros_like(rest), torch.zeros_like(contrib)
        step = min(S, max(1, _CHUNK_ELEMS // (M * B * H)))
        # buffers reused by every chunk: a fresh multi-MB tensor per op costs its page faults again
        h_buf, q_buf = rest.new_empty(M * step * B * H), rest.new_empty(M * C * step * B)
        if need_grad:
            g_buf, sum_buf = torch.empty_like(h_buf), torch.empty_like(rest)
        w_m = w.expand(M, C, H)
        for s0 in range(0, S, step):
            idx = perms[s0:s0 + step]
            s = idx.shape[0]
            h = _hidden(rest, contrib, idx, out=h_buf[:M * s * B * H].view(M * s * B, H)).view(M, s * B, H)
            # class-major logits (M, C, s * B) straight from the product: W h_m^T (+ b)
            q = q_buf[:M * C * s * B].view(M, C, s * B)
            if b is None:
                torch.bmm(w_m, h.transpose(1, 2), out=q)
            else:
                torch.baddbmm(b, w_m, h.transpose(1, 2), out=q)
            v, saved = _core_forward(kind, pt, q.view(M, C, s, B))
            val += v * (s / S)  # the chunk's mean over its s * B rows, weighted into the mean over S * B
            if not need_grad:
                continue
            dp, dq = _core_backward(kind, saved, val.new_full((M,), s / S), s, B)
            d_pt += dp
            dh = g_buf[:M * s * B * H].view(M, s * B, H)
            torch.bmm(dq.view(M, C, s * B).transpose(1, 2), w_m, out=dh)
            torch.ops.aten.threshold_backward.grad_input(dh, h, 0.0, grad_input=dh)  # relu's mask, in place
            d_rest += torch.sum(dh.view(M, s, B, H), 1, out=sum_buf)
            # contrib[k] reached row (s, i) with pi_s(i) = k
            d_contrib.view(M * B, H).index_add_(0, _flat_rows(idx, M, B), dh.view(-1, H))
    if not need_grad:
        return val, ()
    grads = (d_pt.squeeze(2).transpose(1, 2), d_rest, d_contrib)
    return val, tuple(g.to(x.dtype).contiguous() for g, x in zip(grads, (p_logits, rest, contrib), strict=True))


@torch.library.custom_op("mcrlab::permuted_relu_linear_divergence", mutates_args=())
def _permuted_relu_linear_divergence_op(p_logits: torch.Tensor, rest: torch.Tensor, contrib: torch.Tensor,
                                        perms: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                        kind: str
                                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(value (M,), d value[m] / d p_logits, rest, contrib): ``relu_linear_divergence_and_grads``."""
    val, (dp, d_rest, d_contrib) = relu_linear_divergence_and_grads(p_logits, rest, contrib, perms, weight, bias,
                                                                     kind)
    return val, dp, d_rest, d_contrib


@_permuted_relu_linear_divergence_op.register_fake
def _(p_logits, rest, contrib, perms, weight, bias, kind):
    val = p_logits.new_empty(p_logits.shape[0], dtype=_upcast(p_logits.new_empty(())).dtype)
    return val, torch.empty_like(p_logits), torch.empty_like(rest), torch.empty_like(contrib)


def _hidden(rest: torch.Tensor, contrib: torch.Tensor, perms: torch.Tensor,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """relu(rest_i + contrib[pi_s(i)]) for a chunk of permutations (s, B): -> (M * s * B, H) (into ``out``)."""
    M, B, H = contrib.shape
    h = torch.index_select(contrib.reshape(M * B, H), 0, _flat_rows(perms, M, B), out=out).view(M, -1, B, H)
    return h.add_(rest.unsqueeze(1)).relu_().view(-1, H)


def _flat_rows(perms: torch.Tensor, M: int, B: int) -> torch.Tensor:
    """Row indices m * B + pi_s(i) into a flattened (M * B) axis, in (m, s, i) order: (M * s * B,).
    (index_select along dim 0 of a 2-D tensor is the fast row-copy path; along dim 1 it is not.)"""
    return (perms.reshape(1, -1) + torch.arange(M, device=perms.device).unsqueeze(1) * B).reshape(-1)


class _PermutedReluLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rest, contrib, perms, weight, bias):
        M, B, H = contrib.shape
        S, C = perms.shape[0], weight.shape[0]
        step = max(1, _CHUNK_ELEMS // (M * B * H))
        out = []
        for s0 in range(0, S, step):
            h = _hidden(rest, contrib, perms[s0:s0 + step])
            y = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
            out.append(y.view(M, -1, B, C))
        ctx.step, ctx.has_bias = step, bias is not None
        ctx.save_for_backward(rest, contrib, perms, weight)
        return torch.cat(out, 1)

    @staticmethod
    def backward(ctx, grad):
        rest, contrib, perms, weight = ctx.saved_tensors
        M, B, H = contrib.shape
        S, C = perms.shape[0], weight.shape[0]
        need_w = ctx.needs_input_grad[3]
        d_rest, d_contrib = torch.zeros_like(rest), torch.zeros_like(contrib)
        d_w = torch.zeros_like(weight) if need_w else None
        for s0 in range(0, S, ctx.step):
            idx = perms[s0:s0 + ctx.step]
            h = _hidden(rest, contrib, idx)  # rebuilt: cheaper than keeping (M, S, B, H) alive
            g = grad[:, s0:s0 + ctx.step].reshape(-1, C)
            if need_w:
                d_w.addmm_(g.T, h)
            dh = torch.ops.aten.threshold_backward(g @ weight, h, 0.0).view(M, -1, B, H)
            d_rest += dh.sum(1)
            # contrib[k] reached row (s, i) with pi_s(i) = k
            d_contrib.view(M * B, H).index_add_(0, _flat_rows(idx, M, B), dh.view(-1, H))
        d_b = grad.sum((0, 1, 2)) if ctx.has_bias and ctx.needs_input_grad[4] else None
        return d_rest, d_contrib, None, d_w, d_b


def head_perturbed_logits(fusion: nn.Module, zs: list[torch.Tensor], m: int, pert: Perturbation
                          ) -> torch.Tensor:
    """q's logits for modality m by re-running only the head: zs M x (B, d_j) -> (S', B, C)."""
    split = split_head(fusion, [z.shape[-1] for z in zs])
    if split is not None:  # re-run only what follows the first (linear) layer
        ws, b, tail = split
        u = [z @ w.T for z, w in zip(zs, ws, strict=True)]  # M x (B, H)
        rest = sum(u) + b - u[m]
        last = relu_linear_tail(tail)
        if pert.kind == "permute" and last is not None:
            assert pert.perms is not None  # kind "permute" always carries perms (draw_perturbation)
            return permuted_relu_linear(rest.unsqueeze(0), u[m].unsqueeze(0), pert.perms, last.weight,
                                        last.bias)[0]
        return tail(rest.unsqueeze(0) + pert.contribution(u[m], m, zs[m], ws[m]))
    zm = pert.latent(zs[m], m)  # (S', B, d_m)
    lead = zm.shape[:-1]
    inputs = [zm if j == m else z.expand(*lead, z.shape[-1]) for j, z in enumerate(zs)]
    return fusion(inputs)


def unique_from_perturbation(out: ForwardOutput, fusion: nn.Module, pert: Perturbation,
                             modalities: list[int] | None = None, divergence: str = "jsd",
                             path: str = "auto") -> torch.Tensor:
    """D_m for each m in ``modalities`` (default all) under a given draw: -> (len(modalities),).

    path: "fast" (late fusion only), "general" (head re-run) or "auto" (fast when possible).
    Differentiable; gradients flow wherever ``out`` carries them (no stop-gradients here).
    """
    mods = list(range(len(out.z))) if modalities is None else list(modalities)
    fast = can_use_fast_path(out, fusion, pert.kind) if path == "auto" else path == "fast"
    if fast and out.contribs is None:
        raise ValueError("the fast path needs late fusion (per-modality contributions)")
    if fast and pert.kind == "permute":  # all modalities in one fused node
        assert out.contribs is not None  # checked just above
        assert pert.perms is not None  # kind "permute" always carries perms (draw_perturbation)
        L = torch.stack([out.contribs[m] for m in mods])  # (M', B, C)
        p = out.fused.expand(len(mods), *out.fused.shape)
        return permuted_mean_divergence(p, p - L, L, pert.perms, divergence)
    qs = []
    for m in mods:  # M is small; S and B are batched inside each call
        if fast:
            assert out.contribs is not None  # checked above the loop
            qs.append(fast_perturbed_logits(out.fused, out.contribs, m, pert, out.z, fusion_weight(fusion, m)))
        else:
            qs.append(head_perturbed_logits(fusion, out.z, m, pert))
    q = torch.stack(qs)  # (M', S', B, C)
    return mean_divergence(out.fused.expand(len(mods), *out.fused.shape), q, divergence)


def unique_information(model: nn.Module, out: ForwardOutput, *, num_perms: int = 8,
                       divergence: str = "jsd", perturbation: str = "permute",
                       generator: torch.Generator, modalities: list[int] | None = None,
                       path: str = "auto") -> torch.Tensor:
    """D_m, modality m's unique information as seen by the fusion head, for every m: -> (M',) tensor.

    model: the ``MultimodalNet`` (its ``.fusion`` is used) or a fusion head itself.
    out: that model's ``ForwardOutput`` on a batch (B >= 2 for permutations to mean anything).
    num_perms: S; generator: the source of every random draw (permutations, noise).
    Call under ``torch.no_grad()`` to measure; the result is differentiable otherwise.
    """
    fusion = getattr(model, "fusion", model)
    pert = draw_perturbation(perturbation, num_perms, out.z, generator)
    return unique_from_perturbation(out, fusion, pert, modalities, divergence, path)

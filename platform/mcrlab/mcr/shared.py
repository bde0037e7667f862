"""Shared task-relevant information: a contrastive lower bound, maximised (mcr-method.md 2.4).

M = modalities, B = batch, D = common projection width, N = M*B embeddings.

NT-Xent over the L2-normalised projected latents of all modalities together. For anchor a with
positives P(a) (never a itself) and candidates A(a) = everything but a:

    loss_a = -1/|P(a)| sum_{p in P(a)} log( exp(s_ap / tau) / sum_{c in A(a)} exp(s_ac / tau) )

averaged over anchors with at least one positive (s = cosine similarity). Minimising it maximises the
bound. Positives:
- ``supcon`` (default): every other embedding with the same label, any modality (supervised contrastive).
- ``infonce``: the same sample's embeddings in the other modalities only (instance-level, cross-modal).
"""

from __future__ import annotations

import torch
from torch import nn

from mcrlab.mcr.opaque import value_and_unit_grads, with_gradients

__all__ = ["SHARED_BOUNDS", "SharedProjection", "contrastive_loss"]

SHARED_BOUNDS = ("supcon", "infonce")


class SharedProjection(nn.Module):
    """Linear maps of each latent to a common width: M x (B, d_m) -> M x (B, D)."""

    def __init__(self, dims: list[int], shared_dim: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, shared_dim) for d in dims)

    def forward(self, zs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [p(z) for p, z in zip(self.proj, zs, strict=True)]


def contrastive_loss(embeddings: list[torch.Tensor], labels: torch.Tensor, temperature: float = 0.5,
                     bound: str = "supcon", num_classes: int | None = None) -> torch.Tensor:
    """NT-Xent loss (scalar) over M x (B, D) embeddings (normalised here) and labels (B,).

    Computed as  loss_a = lse_{c != a}(s_ac / tau) - mean_{p in P(a)} s_ap / tau  by one autograd node with a
    hand-written backward (``_NTXent``); the positives'
    sum comes from per-class (supcon) or per-sample (infonce) sums of embeddings, so the only N x N work
    is the similarity matrix and its log-sum-exp. num_classes: labels' range (default: max + 1, a host sync).
    """
    if bound not in SHARED_BOUNDS:
        raise ValueError(f"unknown shared bound {bound!r}; choose from {SHARED_BOUNDS}")
    e = torch.cat(embeddings)
    if e.dtype in (torch.float16, torch.bfloat16):  # similarities / tau need more than bf16's precision
        e = e.float()
    with torch.autocast(e.device.type, enabled=False):  # keep the N x N matmul in e's precision
        return _nt_xent(e, labels, len(embeddings), temperature, bound, num_classes)


def _nt_xent(e: torch.Tensor, labels: torch.Tensor, M: int, temperature: float, bound: str,
             num_classes: int | None) -> torch.Tensor:
    if bound == "supcon":
        K = int(labels.max()) + 1 if num_classes is None else num_classes
        # one-hot by comparison: F.one_hot validates its input with a host sync on CUDA
        onehot = (labels.unsqueeze(1) == torch.arange(K, device=labels.device)).to(e.dtype)  # (B, K)
    else:
        onehot = None  # instance groups: sample i of every modality
    scale = temperature ** -0.5
    if torch.compiler.is_compiling():  # train.compile: the node stays one opaque operator (mcr/opaque.py)
        loss, grad = torch.ops.mcrlab.nt_xent(e.detach(), onehot, M, scale)
        return with_gradients(loss, [e], [grad])
    return _NTXent.apply(e, onehot, M, scale)


def _group_sums(x: torch.Tensor, onehot: torch.Tensor | None, M: int) -> torch.Tensor:
    """For every row a of x (N = M*B, D): the sum of x over a's group (its class, or its sample): (N, D)."""
    B = x.shape[0] // M
    if onehot is None:
        return x.view(M, B, -1).sum(0).repeat(M, 1)
    per_class = onehot.T @ x.view(M, B, -1).sum(0)  # (K, D)
    return (onehot @ per_class).repeat(M, 1)


class _NTXent(torch.autograd.Function):
    """The whole bound as one node: raw embeddings (N, D) -> scalar loss, with a hand-written backward.

    e = x / |x| * tau^(-1/2) (so e_a . e_c = s_ac / tau), P = row-softmax of e e^T over c != a,
    loss = sum_a w_a (lse_a - pos_a), w_a = [a has positives] / #anchors with positives.
    Backward: dL/de = (A + A^T) e - (v * S + groupsum(v e) - 2 v e), A = w * P (rows), v = w / n_pos,
    S = group sums of e; then through the normalisation: dx = (c / |x|) (de - u (u . de)), u = x / |x|.
    """

    @staticmethod
    def forward(ctx, x, onehot, M, scale):
        norm = x.norm(dim=1, keepdim=True).clamp_min(1e-12)  # F.normalize's eps
        e = x * (scale / norm)
        E, shift = _shifted_exp_similarities(e, scale * scale)  # (N, N) exp(s_ac / tau - shift_a), 0 at c = a
        se = E.sum(1, keepdim=True)
        lse = (shift + se.log()).squeeze(1)  # (N,)
        sums = _group_sums(e, onehot, M)  # (N, D), the anchor itself included
        n_pos = (_group_sums(e.new_ones(e.shape[0], 1), onehot, M) - 1.0).squeeze(1)  # (N,)
        self_sim = (e * e).sum(1)
        pos = ((e * sums).sum(1) - self_sim) / n_pos.clamp(min=1.0)
        has = (n_pos > 0).to(e.dtype)  # anchors without positives are left out of the mean (no host sync)
        w = has / has.sum().clamp(min=1.0)
        ctx.M, ctx.scale = M, scale
        # the softmax P = E / se is never formed: backward folds 1 / se into the row weights
        ctx.save_for_backward(x, norm, e, E, se.reciprocal(), sums, w, w / n_pos.clamp(min=1.0), onehot)
        return ((lse - pos) * w).sum()

    @staticmethod
    def backward(ctx, grad):
        x, norm, e, E, inv_se, sums, w, v, onehot = ctx.saved_tensors
        wg = (w * grad).unsqueeze(1) * inv_se  # (N, 1): A = diag(w grad) P = diag(wg) E
        # (A + A^T) e without an N x N temporary: BLAS reads E^T in place
        de = torch.addmm(wg * (E @ e), E.T, wg * e)
        ve = e * (v * grad).unsqueeze(1)
        de -= sums * (v * grad).unsqueeze(1) + _group_sums(ve, onehot, ctx.M) - 2.0 * ve
        # rows whose norm was clamped (|x| <= eps) are a plain scaling: no projection
        u = torch.where(x.norm(dim=1, keepdim=True) > 1e-12, x / norm, 0.0)
        dx = (de - u * (u * de).sum(1, keepdim=True)) * (ctx.scale / norm)
        return dx, None, None, None


# Largest 1/tau for the constant shift: exp(-2/tau) >= e^-40 ~ 4e-18 stays a normal float32 with 1e-7
# relative precision, so no term of a row's sum is lost; below tau = 0.05 the rows' maxima are subtracted.
_SHIFT_MAX = 20.0


def _shifted_exp_similarities(e: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor | float]:
    """E = exp(e e^T - shift) with a zero diagonal, and the shift (a float or (N, 1) row maxima).

    Rows of e have squared norm ``bound`` (= 1/tau; less only for a clamped zero row), so every similarity
    lies in [-bound, bound] and the constant shift ``bound`` keeps exp in [e^(-2 bound), 1]: no overflow,
    and no max pass. The shift is put inside the matrix product, [e, 1] [e, -bound]^T = e e^T - bound, so E
    costs the product and one exp pass. For large ``bound`` (tau < 0.05) the row maxima over c != a are
    subtracted instead (two passes more).
    """
    if bound <= _SHIFT_MAX:
        ones = e.new_ones(e.shape[0], 1)
        E = torch.cat([e, ones], 1) @ torch.cat([e, ones * -bound], 1).T
        E.exp_().diagonal().zero_()
        return E, bound
    E = e @ e.T
    E.diagonal().fill_(float("-inf"))
    rowmax = E.amax(1, keepdim=True)
    return E.sub_(rowmax).exp_(), rowmax


@torch.library.custom_op("mcrlab::nt_xent", mutates_args=())
def _nt_xent_op(x: torch.Tensor, onehot: torch.Tensor | None, M: int, scale: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``_NTXent`` as one operator: (loss, d loss / d x)."""
    loss, (dx, *_) = value_and_unit_grads(_NTXent, x, onehot, M, scale)
    return loss, dx.contiguous()


@_nt_xent_op.register_fake
def _(x, onehot, M, scale):
    return x.new_empty(()), torch.empty_like(x)

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

from mcrlab.mcr.opaque import with_gradients

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

    Computed as  loss_a = lse_{c != a}(s_ac / tau) - mean_{p in P(a)} s_ap / tau  by one autograd node
    (``_NTXent``) whose forward also computes the gradient (``nt_xent_value_and_grad``; under no_grad the
    value alone); the positives' sums come from per-class (supcon) or per-sample (infonce) sums of
    embeddings, so the only N x N work is the similarity matrix, its exp and row sums, and one product with
    it for the gradient. num_classes: labels' range (default: max + 1, a host sync).
    """
    if bound not in SHARED_BOUNDS:
        raise ValueError(f"unknown shared bound {bound!r}; choose from {SHARED_BOUNDS}")
    e = torch.cat(embeddings)
    if e.dtype in (torch.float16, torch.bfloat16):  # similarities / tau need more than bf16's precision
        e = e.float()
    if not torch.is_autocast_enabled(e.device.type):  # (entering the context costs as much as a small op)
        return _nt_xent(e, labels, len(embeddings), temperature, bound, num_classes)
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
    if not (e.requires_grad and torch.is_grad_enabled()):  # evaluation: the value alone
        return nt_xent_value_and_grad(e, onehot, M, scale, grad=False)[0]
    return _NTXent.apply(e, onehot, M, scale)


class _NTXent(torch.autograd.Function):
    """The whole bound as one node. The loss is a scalar, so its gradient is grad * (the gradient at
    grad = 1): forward computes both at once (``nt_xent_value_and_grad``) and backward only scales."""

    @staticmethod
    def forward(ctx, x, onehot, M, scale):
        loss, dx = nt_xent_value_and_grad(x, onehot, M, scale)
        ctx.save_for_backward(dx)
        return loss

    @staticmethod
    def backward(ctx, grad):
        (dx,) = ctx.saved_tensors
        return dx * grad, None, None, None


def nt_xent_value_and_grad(x: torch.Tensor, onehot: torch.Tensor | None, M: int, scale: float,
                           grad: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """NT-Xent of raw embeddings x (N = M*B, D) in modality-major order: (loss, d loss / d x or None).

    onehot: (B, K) labels one-hot (supcon) or None (infonce: the groups are the samples); scale = tau^(-1/2).
    e = x / |x| * scale (so e_a . e_c = s_ac / tau), E = exp(e e^T) with a zero diagonal (or its rows
    shifted by their maxima when 1/tau is large), loss = sum_a w_a (log sum_c E_ac - pos_a) with
    w_a = [a has positives] / #anchors with positives and pos_a = e_a . (S_a - e_a) / n_a, S_a the sum of
    e over a's group (a included), n_a = |group| - 1 its positives. v_a = w_a / n_a depends on a's group
    only, so  sum_a v_a e_a . S_a = sum_b v_b (sum_m e_mb) . S_b  and  d pos / d e = 2 v (S - e).
    Gradient: dL/de = (A + A^T) e - 2 v (S - e), A = diag(w / rowsum E) E = diag(wg) E; unshifted, E is
    symmetric, so (A + A^T) e = wg * (E e) + E (wg e) is one product E [e, wg e]; then through the
    normalisation: dx = (scale / |x|) (de - e (e . de) / scale^2) (no projection where |x| was clamped).
    """
    N, D = x.shape
    B = N // M
    bound = scale * scale  # = 1/tau, the squared norm of every row of e
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (N, 1)
    r = norm.clamp_min(1e-12).reciprocal_().mul_(scale)  # (N, 1) scale / |x|, F.normalize's eps
    # e and wg * e side by side in one buffer: the backward's two products with E become one (N, 2D)
    buf = x.new_empty(N, 2 * D) if grad else None
    e = x * r if buf is None else torch.mul(x, r, out=buf[:, :D])
    E = e @ e.T
    symmetric = bound <= _SHIFT_MAX
    if symmetric:  # every e_a . e_c / tau lies in [-1/tau, 1/tau]: exp neither overflows nor underflows
        E.exp_().diagonal().zero_()
        shift = None
    else:  # the row maxima over c != a are subtracted (E is no longer symmetric)
        E.diagonal().fill_(float("-inf"))
        shift = E.amax(1, keepdim=True)
        E.sub_(shift).exp_()
    se = E.sum(1, keepdim=True)  # (N, 1)
    e3 = e.view(M, B, D)
    w: float | torch.Tensor  # the anchors' weights and v = w / n: floats where every anchor has positives
    v: float | torch.Tensor
    if onehot is None:  # groups = samples: n_a = M - 1 for all
        S = e3.sum(0)  # (B, D)
        w, v = (1.0 / N, 1.0 / (N * (M - 1))) if M > 1 else (0.0, 0.0)
    else:
        counts = onehot.sum(0)  # (K,)
        S = onehot @ (onehot.T @ e3.sum(0))  # (B, D): each sample's class sum over all modalities
        n = (onehot @ counts) * M - 1.0  # (B,) positives per anchor of sample b's class
        if M > 1:  # every anchor has a positive: its own sample in another modality
            w, v = 1.0 / N, (n * N).reciprocal_()
        else:
            has = (n > 0).to(x.dtype)
            w = has / has.sum().clamp(min=1.0)
            v = w / n.clamp(min=1.0)
    Sm = S - e3  # (M, B, D): the positives' sum of every anchor
    dots = (e3 * Sm).sum((0, 2))  # (B,): sum over sample b's anchors of e_a . (S_a - e_a)
    pos = dots.sum() * v if isinstance(v, float) else torch.dot(dots, v)
    lse = se.log()
    if shift is not None:
        lse += shift
    if isinstance(w, float):
        loss = lse.sum() * w - pos
    else:
        loss = torch.dot(lse.view(M, B).sum(0), w) - pos
    if buf is None:
        return loss, None
    wg = (w / se) if isinstance(w, float) else (w.unsqueeze(1) / se.view(M, B, 1)).view(N, 1)
    if symmetric:
        torch.mul(e, wg, out=buf[:, D:])
        R = E @ buf  # (N, 2D) = [E e, E (wg e)]
        de = torch.addcmul(R[:, D:], R[:, :D], wg)
    else:
        de = torch.addmm(wg * (E @ e), E.T, wg * e)
    if isinstance(v, float):
        de.view(M, B, D).add_(Sm, alpha=-2.0 * v)
    else:
        de.view(M, B, D).addcmul_(Sm, v.unsqueeze(1), value=-2.0)
    # through e = x / |x| * scale: remove de's component along e, except where |x| was clamped
    c = torch.linalg.vecdot(e, de).unsqueeze(1).masked_fill_(norm <= 1e-12, 0.0)
    return loss, torch.addcmul(de, e, c, value=-1.0 / bound).mul_(r)


# Largest 1/tau without a shift: exp(+-1/tau) stays a normal float32 (e^20 ~ 5e8 and e^-20 ~ 2e-9, row sums
# far from overflow) with 1e-7 relative precision, so no term of a row's sum is lost; below tau = 0.05 the
# rows' maxima are subtracted (two passes more, and two products in the gradient).
_SHIFT_MAX = 20.0


@torch.library.custom_op("mcrlab::nt_xent", mutates_args=())
def _nt_xent_op(x: torch.Tensor, onehot: torch.Tensor | None, M: int, scale: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The bound as one operator: (loss, d loss / d x)."""
    loss, dx = nt_xent_value_and_grad(x, onehot, M, scale)
    assert dx is not None  # grad=True (the default) always returns it
    return loss, dx


@_nt_xent_op.register_fake
def _(x, onehot, M, scale):
    return x.new_empty(()), torch.empty_like(x)

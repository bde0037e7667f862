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
import torch.nn.functional as F
from torch import nn

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

    Computed as  loss_a = lse_{c != a}(s_ac / tau) - mean_{p in P(a)} s_ap / tau,  where the positives'
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
    B = labels.shape[0]
    e = F.normalize(e, dim=-1) * temperature ** -0.5  # (N, D); e_a . e_c = s_ac / tau
    sim = e @ e.T  # (N, N); the matmul's backward needs only e, so the diagonal may be overwritten
    sim.fill_diagonal_(float("-inf"))
    lse = torch.logsumexp(sim, dim=1)  # (N,) over c != a
    self_sim = (e * e).sum(-1)  # (N,) = 1 / tau up to rounding; removed from the positives' sums
    if bound == "supcon":
        K = int(labels.max()) + 1 if num_classes is None else num_classes
        onehot = F.one_hot(labels.repeat(M), K).to(e.dtype)  # (N, K)
        sums = (onehot.T @ e)[labels.repeat(M)]  # (N, D): sum of the anchor's class
        n_pos = (onehot.sum(0)[labels.repeat(M)] - 1.0)  # (N,)
    else:
        sums = e.view(M, B, -1).sum(0).repeat(M, 1)  # (N, D): sum of the anchor's sample, all modalities
        n_pos = e.new_full((M * B,), float(M - 1))
    pos_mean = ((e * sums).sum(-1) - self_sim) / n_pos.clamp(min=1.0)
    has = (n_pos > 0).to(e.dtype)  # anchors without positives are left out of the mean (no host sync)
    return ((lse - pos_mean) * has).sum() / has.sum().clamp(min=1.0)

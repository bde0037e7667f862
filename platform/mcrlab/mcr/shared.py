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
                     bound: str = "supcon") -> torch.Tensor:
    """NT-Xent loss (scalar) over M x (B, D) embeddings (normalised here) and labels (B,)."""
    if bound not in SHARED_BOUNDS:
        raise ValueError(f"unknown shared bound {bound!r}; choose from {SHARED_BOUNDS}")
    M, B = len(embeddings), labels.shape[0]
    e = torch.cat(embeddings)
    if e.dtype in (torch.float16, torch.bfloat16):  # similarities / tau overflow bf16's precision
        e = e.float()
    e = F.normalize(e, dim=-1)  # (N, D)
    sim = e @ e.T / temperature  # (N, N)
    eye = torch.eye(M * B, dtype=torch.bool, device=e.device)
    log_prob = sim - torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    key = labels.repeat(M) if bound == "supcon" else torch.arange(B, device=e.device).repeat(M)
    pos = (key.unsqueeze(0) == key.unsqueeze(1)) & ~eye  # (N, N)
    n_pos = pos.sum(1)
    per_anchor = -(log_prob * pos).sum(1) / n_pos.clamp(min=1)
    # anchors without positives contribute 0 to the sum and are left out of the count (no host sync)
    return per_anchor.sum() / (n_pos > 0).sum().clamp(min=1)

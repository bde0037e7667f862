"""Transformer encoder for sequences (B, T, F): linear embedding, learned positions, pre-norm
``nn.TransformerEncoder``, mean pooling over T, then Linear -> ``latent`` + ReLU."""

from __future__ import annotations

import torch
from torch import nn

from mcrlab.config import ConfigError
from mcrlab.models.registry import need_shape

__all__ = ["SequenceTransformer", "transformer"]


class SequenceTransformer(nn.Module):
    def __init__(self, in_shape: tuple[int, int], hidden: int, depth: int, latent: int, heads: int,
                 ff_mult: int = 2, dropout: float = 0.0):
        super().__init__()
        t, f = in_shape
        self.embed = nn.Linear(f, hidden)
        self.pos = nn.Parameter(torch.randn(1, t, hidden) * 0.02)  # learned, one per time step
        layer = nn.TransformerEncoderLayer(hidden, heads, dim_feedforward=ff_mult * hidden, dropout=dropout,
                                           batch_first=True, norm_first=True)
        # nested tensors only pay off with padding masks; disabling them also silences their warning
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, latent)
        self.out_dim = latent

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, F) -> (B, latent)
        h = self.encoder(self.embed(x) + self.pos)  # (B, T, hidden)
        return torch.relu(self.proj(self.norm(h).mean(dim=1)))


def transformer(in_shape: tuple[int, ...], hidden: int = 64, depth: int = 2, latent: int = 32,
                dropout: float = 0.0, heads: int = 4, ff_mult: int = 2) -> SequenceTransformer:
    """Registry builder ``transformer``: sequences (T, F); ``hidden`` is d_model, ``depth`` the layers."""
    need_shape("transformer", in_shape, (2,), "(T, F)")
    for arg, v in (("hidden", hidden), ("depth", depth), ("latent", latent), ("heads", heads),
                   ("ff_mult", ff_mult)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"transformer: {arg} must be an integer >= 1, got {v!r}")
    if hidden % heads:
        raise ConfigError(f"transformer: hidden (d_model) {hidden} is not divisible by heads {heads}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"transformer: dropout must be in [0, 1), got {dropout!r}")
    return SequenceTransformer(in_shape, hidden, depth, latent, heads, ff_mult, dropout)  # type: ignore[arg-type]

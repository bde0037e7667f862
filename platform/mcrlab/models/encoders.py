"""The MLP encoder (the default): x_m (B, *shape) -> z_m (B, latent); any shape is flattened first."""

from __future__ import annotations

import math

import torch
from torch import nn

from mcrlab.models.registry import need_shape

__all__ = ["MLPEncoder", "mlp"]


class MLPEncoder(nn.Module):
    """``depth`` hidden Linear+ReLU layers of width ``hidden``, then Linear -> ``latent`` + ReLU.

    The final ReLU makes z_m a non-negative pooled feature like a CNN's pooled output.
    """

    def __init__(self, in_dim: int, hidden: int, depth: int, latent: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers += [nn.Linear(width, latent), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.out_dim = latent

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *shape) -> (B, latent)
        return self.net(x.flatten(1))  # a no-op view on (B, in_dim) vectors


def mlp(in_shape: tuple[int, ...], hidden: int = 64, depth: int = 2, latent: int = 32,
        dropout: float = 0.0) -> MLPEncoder:
    """Registry builder ``mlp``: any input shape, flattened to prod(shape) features."""
    need_shape("mlp", in_shape, tuple(range(1, 9)), "a fixed-shape")
    return MLPEncoder(math.prod(in_shape), hidden, depth, latent, dropout)

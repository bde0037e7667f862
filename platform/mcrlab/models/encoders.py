"""Per-modality encoders: x_m (B, in_dim) -> z_m (B, latent)."""

from __future__ import annotations

import torch
from torch import nn


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in_dim) -> (B, latent)
        return self.net(x)

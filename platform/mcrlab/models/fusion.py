"""Fusion heads: latents [z_1 .. z_M] -> fused logits.

Both heads accept latents with any leading batch shape, e.g. (S, B, d_m) for S perturbations at once,
which is how MCR re-runs only the head, batched over all permutations.
"""

from __future__ import annotations

import torch
from torch import nn


class LateFusion(nn.Module):
    """g(z) = sum_m W_m z_m + b. ``contributions`` gives l_m = W_m z_m (no bias), shape (..., C)."""

    additive = True

    def __init__(self, dims: list[int], num_classes: int):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(d, num_classes, bias=False) for d in dims)
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def contributions(self, zs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [w(z) for w, z in zip(self.proj, zs)]

    def forward(self, zs: list[torch.Tensor]) -> torch.Tensor:  # -> (..., C)
        return torch.stack(self.contributions(zs)).sum(0) + self.bias


class MLPFusion(nn.Module):
    """Non-additive fusion: concat(z_1..z_M) -> Linear -> ReLU -> Linear -> C logits.

    Late fusion cannot represent synergy (XOR-like) information; this head can.
    """

    additive = False

    def __init__(self, dims: list[int], num_classes: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(sum(dims), hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, zs: list[torch.Tensor]) -> torch.Tensor:  # -> (..., C)
        return self.net(torch.cat(zs, dim=-1))

"""Small convolutional encoders: ``cnn`` for images (B, C, H, W), ``conv1d`` for sequences (B, T, F).

Both: ``depth`` blocks of conv -> BatchNorm -> ReLU, block i with ``hidden * 2**i`` channels, a 2x
max-pool between blocks (only along axes still >= 2), global average pooling, then Linear -> ``latent``
+ ReLU (a non-negative pooled feature z_m, like the MLP encoder's).
"""

from __future__ import annotations

import torch
from torch import nn

from mcrlab.config import ConfigError
from mcrlab.models.registry import need_shape

__all__ = ["CNNEncoder", "Conv1dEncoder", "cnn", "conv1d"]


def _check(name: str, hidden: int, depth: int, latent: int, kernel_size: int, dropout: float) -> None:
    for arg, v in (("hidden", hidden), ("depth", depth), ("latent", latent), ("kernel_size", kernel_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name}: {arg} must be an integer >= 1, got {v!r}")
    if kernel_size % 2 == 0:
        raise ConfigError(f"{name}: kernel_size must be odd (same padding), got {kernel_size}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{name}: dropout must be in [0, 1), got {dropout!r}")


class CNNEncoder(nn.Module):
    """(B, C, H, W) -> (B, latent). ``channels_last`` (set by build_model on CUDA) converts the input."""

    def __init__(self, in_shape: tuple[int, int, int], hidden: int, depth: int, latent: int,
                 kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for i in range(depth):
            width = hidden * 2 ** i
            layers += [nn.Conv2d(c, width, kernel_size, padding=kernel_size // 2, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if i < depth - 1 and max(h, w) >= 2:
                kh, kw = min(h, 2), min(w, 2)
                layers.append(nn.MaxPool2d((kh, kw)))
                h, w = h // kh, w // kw
            c = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Linear(c, latent)
        self.out_dim = latent
        self.channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, latent)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.pool(self.features(x)).flatten(1)
        return torch.relu(self.proj(self.drop(h)))


class Conv1dEncoder(nn.Module):
    """(B, T, F) -> (B, latent): convolution along T with the F features as input channels."""

    def __init__(self, in_shape: tuple[int, int], hidden: int, depth: int, latent: int,
                 kernel_size: int = 3, dropout: float = 0.0):
        super().__init__()
        t, c = in_shape
        layers: list[nn.Module] = []
        for i in range(depth):
            width = hidden * 2 ** i
            layers += [nn.Conv1d(c, width, kernel_size, padding=kernel_size // 2, bias=False),
                       nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            if i < depth - 1 and t >= 2:
                layers.append(nn.MaxPool1d(2))
                t //= 2
            c = width
        self.features = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.proj = nn.Linear(c, latent)
        self.out_dim = latent

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, F) -> (B, latent)
        h = self.features(x.transpose(1, 2)).mean(dim=2)  # global average over time
        return torch.relu(self.proj(self.drop(h)))


def cnn(in_shape: tuple[int, ...], hidden: int = 64, depth: int = 2, latent: int = 32, dropout: float = 0.0,
        kernel_size: int = 3) -> CNNEncoder:
    """Registry builder ``cnn``: images (C, H, W)."""
    need_shape("cnn", in_shape, (3,), "(C, H, W)")
    _check("cnn", hidden, depth, latent, kernel_size, dropout)
    return CNNEncoder(in_shape, hidden, depth, latent, kernel_size, dropout)  # type: ignore[arg-type]


def conv1d(in_shape: tuple[int, ...], hidden: int = 64, depth: int = 2, latent: int = 32,
           dropout: float = 0.0, kernel_size: int = 3) -> Conv1dEncoder:
    """Registry builder ``conv1d``: sequences / spectrograms (T, F)."""
    need_shape("conv1d", in_shape, (2,), "(T, F)")
    _check("conv1d", hidden, depth, latent, kernel_size, dropout)
    return Conv1dEncoder(in_shape, hidden, depth, latent, kernel_size, dropout)  # type: ignore[arg-type]

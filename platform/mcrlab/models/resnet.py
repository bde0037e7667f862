"""ResNet-18 encoder for images (B, C, H, W) and spectrograms (B, T, F) (a channel axis is added).

The trunk is torchvision's ``resnet18(weights=None)`` when torchvision imports (nothing is ever
downloaded), else a built-in ResNet-18 of the same architecture and the same module names
(``conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc``; He et al. 2016, BasicBlock x [2, 2, 2, 2],
64-128-256-512 channels), so state dicts carry over between the two. The first convolution takes the
input's channels; ``fc`` is replaced by Linear(512, latent) + ReLU, so ``out_dim = latent``.
"""

from __future__ import annotations

import torch
from torch import nn

from mcrlab.config import ConfigError
from mcrlab.models.registry import need_shape

__all__ = ["ResNet18Encoder", "resnet18", "ResNet18", "torchvision_resnet18"]


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1-conv) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """The built-in ResNet-18 trunk: (B, C, H, W) -> (B, 512) (``fc`` is an identity here)."""

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        # torchvision's names (layer1..layer4), so state dicts carry over
        self.layer1 = nn.Sequential(BasicBlock(64, 64, 1), BasicBlock(64, 64, 1))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128, 1))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256, 1))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512, 1))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Identity()
        for m in self.modules():  # the usual ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torchvision_resnet18() -> nn.Module | None:
    """torchvision's resnet18 without weights, or None when torchvision is absent or broken (e.g. a
    CUDA build of torchvision next to a CPU build of torch fails while it is imported)."""
    try:
        from torchvision.models import resnet18 as tv_resnet18
    except Exception:
        return None
    return tv_resnet18(weights=None)


class ResNet18Encoder(nn.Module):
    """(B, C, H, W) or (B, T, F) -> (B, latent)."""

    def __init__(self, in_shape: tuple[int, ...], latent: int, use_torchvision: bool = True):
        super().__init__()
        self.add_channel = len(in_shape) == 2  # a spectrogram (T, F) becomes a 1-channel image
        channels = 1 if self.add_channel else in_shape[0]
        trunk = torchvision_resnet18() if use_torchvision else None
        self.impl = "torchvision" if trunk is not None else "builtin"
        if trunk is None:
            trunk = ResNet18(channels)
        else:
            trunk.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(trunk.conv1.weight, mode="fan_out", nonlinearity="relu")
            trunk.fc = nn.Identity()
        self.trunk = trunk
        self.proj = nn.Linear(512, latent)
        self.out_dim = latent
        self.channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.add_channel:
            x = x.unsqueeze(1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.relu(self.proj(self.trunk(x)))


def resnet18(in_shape: tuple[int, ...], latent: int = 32, torchvision: bool = True) -> ResNet18Encoder:
    """Registry builder ``resnet18``: images (C, H, W) or spectrograms (T, F); never downloads weights.

    ``torchvision: false`` forces the built-in trunk (same architecture and parameter names).
    """
    need_shape("resnet18", in_shape, (2, 3), "(C, H, W) or (T, F)")
    if isinstance(latent, bool) or not isinstance(latent, int) or latent < 1:
        raise ConfigError(f"resnet18: latent must be an integer >= 1, got {latent!r}")
    if not isinstance(torchvision, bool):
        raise ConfigError(f"resnet18: torchvision must be true or false, got {torchvision!r}")
    return ResNet18Encoder(in_shape, latent, use_torchvision=torchvision)

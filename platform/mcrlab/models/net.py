"""The multimodal network: M encoders, M unimodal heads, one fusion head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mcrlab.config import ModelConfig
from mcrlab.models.encoders import MLPEncoder
from mcrlab.models.fusion import LateFusion, MLPFusion


@dataclass
class ForwardOutput:
    """Everything one forward pass produces (B = batch, C = classes, M = modalities).

    z:        M tensors (B, d_m) - pooled latents
    fused:    (B, C) fused logits g(z)
    heads:    M tensors (B, C) - unimodal head logits h_m(z_m)
    contribs: M tensors (B, C) - l_m = W_m z_m for late fusion, else None
    """

    z: list[torch.Tensor]
    fused: torch.Tensor
    heads: list[torch.Tensor]
    contribs: list[torch.Tensor] | None


class MultimodalNet(nn.Module):
    def __init__(self, in_dims: list[int], num_classes: int, cfg: ModelConfig):
        super().__init__()
        self.encoders = nn.ModuleList(
            MLPEncoder(d, cfg.hidden, cfg.depth, cfg.latent, cfg.dropout) for d in in_dims)
        dims = [e.out_dim for e in self.encoders]
        self.heads = nn.ModuleList(nn.Linear(d, num_classes) for d in dims)
        if cfg.fusion == "late":
            self.fusion: nn.Module = LateFusion(dims, num_classes)
        else:
            self.fusion = MLPFusion(dims, num_classes, cfg.fusion_hidden)
        self.num_modalities = len(in_dims)
        self.num_classes = num_classes
        self.latent_dims = dims

    def encode(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [enc(x) for enc, x in zip(self.encoders, xs)]

    def forward(self, xs: list[torch.Tensor]) -> ForwardOutput:
        z = self.encode(xs)
        heads = [h(zm) for h, zm in zip(self.heads, z)]
        if isinstance(self.fusion, LateFusion):
            contribs = self.fusion.contributions(z)
            fused = torch.stack(contribs).sum(0) + self.fusion.bias
        else:
            contribs = None
            fused = self.fusion(z)
        return ForwardOutput(z=z, fused=fused, heads=heads, contribs=contribs)

    def player_modules(self, m: int) -> list[nn.Module]:
        """Player m's parameters: its encoder, its unimodal head and (late fusion) its W_m."""
        mods: list[nn.Module] = [self.encoders[m], self.heads[m]]
        if isinstance(self.fusion, LateFusion):
            mods.append(self.fusion.proj[m])
        return mods


class _Flatten(nn.Module):
    """(B, *shape) -> (B, prod(shape)) in front of an MLP encoder (keeps ``out_dim``)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder, self.out_dim = encoder, encoder.out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x.flatten(1))


def build_model(in_shapes: list[int] | list[tuple[int, ...]], num_classes: int, cfg: ModelConfig) -> MultimodalNet:
    """``in_shapes``: per modality a width or a sample shape without N; a shape of rank >= 2 is flattened
    into the MLP (placeholder until the encoder registry lands)."""
    shapes = [(s,) if isinstance(s, int) else tuple(s) for s in in_shapes]
    net = MultimodalNet([math.prod(s) for s in shapes], num_classes, cfg)
    for m, s in enumerate(shapes):
        if len(s) > 1:
            net.encoders[m] = _Flatten(net.encoders[m])
    return net

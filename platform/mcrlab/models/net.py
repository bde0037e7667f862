"""The multimodal network: M encoders, M unimodal heads, one fusion head."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mcrlab.config import ConfigError, ModelConfig
from mcrlab.models.fusion import LateFusion, MLPFusion
from mcrlab.models.registry import SHARED_ARGS, build_encoder

Shape = tuple[int, ...]


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


def as_shapes(in_shapes: Sequence[int | Sequence[int]]) -> list[Shape]:
    """Per-modality input shapes without N; a plain int d means a vector (d,)."""
    out = []
    for m, s in enumerate(in_shapes):
        shape: tuple[int, ...] = (s,) if isinstance(s, int) else tuple(s)
        if not shape or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
            raise ConfigError(f"modality {m}: input shape {s!r} is not a tuple of positive integers")
        out.append(shape)
    return out


def encoder_plan(cfg: ModelConfig, num_modalities: int) -> list[tuple[str, str, dict]]:
    """``[(config key, encoder name, args)]`` per modality, from ``encoder``/``encoders`` and
    ``encoder_args``/``encoders_args`` (a modality's own arguments win over the shared ones)."""
    M = num_modalities
    if cfg.encoders and len(cfg.encoders) != M:
        raise ConfigError(f"model.encoders: {len(cfg.encoders)} encoder(s) for {M} modalities "
                          f"(give one per modality, or set model.encoder for all)")
    if cfg.encoders_args and len(cfg.encoders_args) != M:
        raise ConfigError(f"model.encoders_args: {len(cfg.encoders_args)} mapping(s) for {M} modalities "
                          f"(give one per modality, {{}} for none)")
    plan = []
    for m in range(M):
        own = cfg.encoders_args[m] if cfg.encoders_args else {}
        if cfg.encoders:
            key, name = f"model.encoders[{m}]", cfg.encoders[m]
        else:
            key, name = ("model.encoder" if M == 1 else f"model.encoder (modality {m})"), cfg.encoder
        plan.append((key, name, {**cfg.encoder_args, **own}))
    return plan


def use_channels_last(model: nn.Module) -> list[nn.Module]:
    """Switch every encoder that supports it (``channels_last`` attribute: 2-D convs) to the
    channels_last memory format, weights and inputs; returns the switched encoders."""
    switched = []
    for enc in getattr(model, "encoders", []):
        if hasattr(enc, "channels_last"):
            enc.to(memory_format=torch.channels_last)
            enc.channels_last = True
            switched.append(enc)
    return switched


class MultimodalNet(nn.Module):
    def __init__(self, in_shapes: Sequence[int | Sequence[int]], num_classes: int, cfg: ModelConfig):
        super().__init__()
        shapes = as_shapes(in_shapes)
        shared = {k: getattr(cfg, k) for k in SHARED_ARGS}
        self.encoders = nn.ModuleList(
            build_encoder(name, shape, args, shared, key)
            for (key, name, args), shape in zip(encoder_plan(cfg, len(shapes)), shapes, strict=True))
        self.in_shapes = shapes
        dims: list[int] = [int(e.out_dim) for e in self.encoders]  # type: ignore[arg-type]  # checked int
        self.heads = nn.ModuleList(nn.Linear(d, num_classes) for d in dims)
        if cfg.fusion == "late":
            self.fusion: nn.Module = LateFusion(dims, num_classes)
        else:
            self.fusion = MLPFusion(dims, num_classes, cfg.fusion_hidden)
        self.num_modalities = len(shapes)
        self.frozen: list[int] = []  # encoders kept fixed (unimodal_frozen initialisation)
        self.num_classes = num_classes
        self.latent_dims = dims

    def freeze_encoder(self, m: int) -> None:
        """Fix encoder m: no gradients, and eval mode (BatchNorm statistics frozen) even under train()."""
        for p in self.encoders[m].parameters():
            p.requires_grad_(False)
        if m not in self.frozen:
            self.frozen.append(m)
        self.encoders[m].eval()

    def train(self, mode: bool = True) -> MultimodalNet:
        super().train(mode)
        for m in self.frozen:
            self.encoders[m].eval()
        return self

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


def build_model(in_shapes: Sequence[int | Sequence[int]], num_classes: int, cfg: ModelConfig,
                device: torch.device | str | None = None) -> MultimodalNet:
    """The model for per-modality input shapes (tuples without N, e.g. ``dataset.shapes``; an int d
    means (d,)). Encoders come from the registry (``model.encoder(s)``); a shape an encoder cannot take,
    a plug-in that does not import or breaks its contract -> ConfigError naming the key.

    ``device``: when given, the model is moved there, and on CUDA ``model.channels_last`` switches the
    2-D conv encoders to the channels_last memory format (faster convolutions with bf16).
    """
    model = MultimodalNet(in_shapes, num_classes, cfg)
    if device is not None:
        device = torch.device(device)
        model.to(device)
        if cfg.channels_last and device.type == "cuda":
            use_channels_last(model)
    return model

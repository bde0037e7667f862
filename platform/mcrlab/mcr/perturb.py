"""Perturbations that break modality m's information off (mcr-method.md, section 2.1).

S = number of perturbations, B = batch, d = latent width, C = classes.

A ``Perturbation`` is drawn once per step (all randomness from one ``torch.Generator``) and then applied
to any modality, either to its latent z_m (general path: the fusion head is re-run) or directly to its
logit contribution l_m = W_m z_m (fast path for late linear fusion). Kinds:

- ``permute``: z_m -> z_m[pi_s] for S random permutations of the batch (the default). The same S
  permutations serve every modality of the step.
- ``noise``:   z_m -> z_m + eps * std_batch(z_m), eps ~ N(0, 1) of shape (S, B, d_m). The per-feature
  batch std is a scale of the perturbation, not a signal path, so it is detached.
- ``zero``:    z_m -> 0. Deterministic, so it has a single "perturbation" (S' = 1) whatever S is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mcrlab.mcr.divergence import inverse_permutations

__all__ = ["PERTURBATIONS", "Perturbation", "device_generator", "draw_permutations", "draw_perturbation",
           "draw_perturbation_for", "permute_rows"]

PERTURBATIONS = ("permute", "noise", "zero")


def draw_permutations(num_perms: int, batch: int, generator: torch.Generator,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """S independent uniform permutations of range(B), drawn where they are used: a long tensor (S, B).

    On the CPU: S Fisher-Yates shuffles (``torch.randperm``; ~3x cheaper than sorting S x B keys, and
    free of the ties that sorting float32 keys has at ~B^2 / 2^25 per row). On an accelerator: one
    batched argsort of float64 uniform keys on the device (ties ~B^2 / 2^54: negligible), with a
    generator of that device seeded from ``generator`` (a CPU draw: no host-device transfer, no sync).
    ``device`` defaults to the generator's device.
    """
    device = torch.device(device) if device is not None else generator.device
    gen = device_generator(generator, device)
    if device.type == "cpu":
        return torch.stack([torch.randperm(batch, generator=gen) for _ in range(num_perms)])
    return torch.rand(num_perms, batch, generator=gen, device=device, dtype=torch.float64).argsort(dim=1)


def device_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """``generator`` itself if it lives on ``device``, else a fresh generator there seeded by one draw
    from ``generator`` (so every draw stays determined by the run's one seeded generator)."""
    if generator.device.type == device.type:
        return generator
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


def permute_rows(x: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """x[..., pi_s(i), :] for every permutation: x (..., B, K), perms (S, B) -> (..., S, B, K).

    Same values as ``x[..., perms, :]``; its backward gathers through the inverse permutations and sums
    over S instead of scatter-adding (index_put with accumulate), which is several times faster on CPU.
    """
    return _PermuteRows.apply(x, perms)


class _PermuteRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, perms):
        S, B = perms.shape
        ctx.save_for_backward(perms)
        return x.index_select(-2, perms.reshape(-1)).unflatten(-2, (S, B))

    @staticmethod
    def backward(ctx, grad):
        (perms,) = ctx.saved_tensors
        S, B = perms.shape
        # d x[k] = sum_s grad[s, inv_s(k)]; flat row index of (s, inv_s(k)) is s * B + inv_s(k)
        inv = inverse_permutations(perms, flat=True)
        rows = grad.flatten(-3, -2).index_select(-2, inv.reshape(-1))
        return rows.unflatten(-2, (S, B)).sum(-3), None


@dataclass
class Perturbation:
    """One step's draw. ``perms`` (S, B) for permute; ``noise[m]`` (S, B, d_m) for noise."""

    kind: str
    perms: torch.Tensor | None = None
    noise: list[torch.Tensor] | None = None

    @property
    def size(self) -> int:
        """S', the number of perturbed copies produced (1 for zero)."""
        if self.kind == "permute":
            assert self.perms is not None  # kind "permute" always carries perms (draw_perturbation)
            return self.perms.shape[0]
        if self.kind == "noise":
            assert self.noise is not None  # kind "noise" always carries noise (draw_perturbation)
            return self.noise[0].shape[0]
        return 1

    def latent(self, z: torch.Tensor, m: int) -> torch.Tensor:
        """Perturbed latent of modality m: z (B, d) -> (S', B, d)."""
        if self.kind == "permute":
            assert self.perms is not None  # kind "permute" always carries perms (draw_perturbation)
            return permute_rows(z, self.perms)
        if self.kind == "noise":
            assert self.noise is not None  # kind "noise" always carries noise (draw_perturbation)
            return z + self.noise[m].to(z.dtype) * _batch_std(z)
        return torch.zeros_like(z).unsqueeze(0)

    def contribution(self, contrib: torch.Tensor, m: int, z: torch.Tensor | None = None,
                     weight: torch.Tensor | None = None) -> torch.Tensor:
        """Perturbed logit contribution of modality m under late fusion, contrib = z @ W^T: (B, C) -> (S', B, C).

        Equal to ``self.latent(z, m) @ weight.T`` without touching z for permute and zero; noise needs
        z (for its batch std) and the modality's fusion weight W_m (C, d).
        """
        if self.kind == "permute":
            assert self.perms is not None  # kind "permute" always carries perms (draw_perturbation)
            return permute_rows(contrib, self.perms)
        if self.kind == "noise":
            if z is None or weight is None:
                raise ValueError("noise perturbation of a contribution needs z and the fusion weight")
            assert self.noise is not None  # kind "noise" always carries noise (draw_perturbation)
            return contrib + (self.noise[m].to(z.dtype) * _batch_std(z)) @ weight.T.to(z.dtype)
        return torch.zeros_like(contrib).unsqueeze(0)


def _batch_std(z: torch.Tensor) -> torch.Tensor:
    """Per-feature std over the batch (population form, defined for B = 1), detached: (B, d) -> (d,)."""
    return z.detach().std(dim=0, correction=0)


def draw_perturbation(kind: str, num_perms: int, zs: list[torch.Tensor],
                      generator: torch.Generator) -> Perturbation:
    """Draw one step's perturbation for latents ``zs`` (M tensors (B, d_m)); nothing drawn for zero."""
    return draw_perturbation_for(kind, num_perms, zs[0].shape[0], [z.shape[-1] for z in zs], generator,
                                 device=zs[0].device, float64=zs[0].dtype == torch.float64)


def draw_perturbation_for(kind: str, num_perms: int, batch: int, dims: list[int], generator: torch.Generator,
                          *, device: torch.device, float64: bool = False) -> Perturbation:
    """The same draw as ``draw_perturbation`` from the latents' sizes alone (batch B, widths d_m), so that it
    can be made before the forward pass: a compiled step takes the draw as input tensors (random draws
    from a generator break its graph). Noise is float64 when ``float64``, else float32 (as for bf16
    latents)."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; choose from {PERTURBATIONS}")
    if kind == "permute":
        return Perturbation(kind, perms=draw_permutations(num_perms, batch, generator, device))
    if kind == "noise":
        gen = device_generator(generator, device)
        noise = [torch.randn(num_perms, batch, d, generator=gen, device=device,
                             dtype=torch.float64 if float64 else torch.float32)
                 for d in dims]
        return Perturbation(kind, noise=noise)
    return Perturbation(kind)

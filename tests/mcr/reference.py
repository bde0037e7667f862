"""Straightforward references for the MCR tests: explicit loops, probabilities, no batching tricks.

Written independently of ``mcrlab.mcr`` so that agreement means something.
"""

from __future__ import annotations

import torch

from mcrlab.config import ModelConfig
from mcrlab.mcr import Perturbation
from mcrlab.models.net import ForwardOutput, MultimodalNet


def tiny_net(fusion: str = "late", in_dims: tuple[int, ...] = (4, 3), num_classes: int = 3,
             seed: int = 0, latent: int = 5) -> MultimodalNet:
    torch.manual_seed(seed)
    cfg = ModelConfig(hidden=6, depth=1, latent=latent, fusion=fusion, fusion_hidden=7)
    return MultimodalNet(list(in_dims), num_classes, cfg).double()


def random_batch(in_dims: tuple[int, ...] = (4, 3), batch: int = 6, seed: int = 1,
                 num_classes: int = 3) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(batch, d, generator=g, dtype=torch.float64) for d in in_dims]
    return xs, torch.randint(0, num_classes, (batch,), generator=g)


def div_reference(p_logits: torch.Tensor, q_logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample divergence (B,) from (B, C) logits via plain probabilities."""
    if kind == "mse":
        return ((p_logits - q_logits) ** 2).mean(-1)
    p, q = torch.softmax(p_logits, -1), torch.softmax(q_logits, -1)
    if kind == "kl":
        return (p * torch.log(p / q)).sum(-1)
    m = (p + q) / 2
    return 0.5 * (p * torch.log(p / m)).sum(-1) + 0.5 * (q * torch.log(q / m)).sum(-1)


def perturbed_latent_row(z: torch.Tensor, pert: Perturbation, m: int, s: int) -> torch.Tensor:
    """Perturbation s applied to modality m's latent, one row at a time: (B, d) -> (B, d)."""
    if pert.kind == "permute":
        return torch.stack([z[int(pert.perms[s, i])] for i in range(z.shape[0])])
    if pert.kind == "zero":
        return torch.zeros_like(z)
    std = (((z - z.mean(0)) ** 2).mean(0)).sqrt().detach()
    return z + pert.noise[m][s] * std


def unique_loop(model: MultimodalNet, out: ForwardOutput, pert: Perturbation, kind: str) -> torch.Tensor:
    """D_m for every m by re-running the fusion head once per perturbation (Python loop): (M,)."""
    ds = []
    for m in range(len(out.z)):
        rows = []
        for s in range(pert.size):
            zs = [perturbed_latent_row(z, pert, m, s) if j == m else z for j, z in enumerate(out.z)]
            rows.append(div_reference(out.fused, model.fusion(zs), kind).mean())
        ds.append(torch.stack(rows).mean())
    return torch.stack(ds)


def contrastive_reference(embeddings: list[torch.Tensor], labels: torch.Tensor, temperature: float = 0.5,
                          bound: str = "supcon") -> torch.Tensor:
    """NT-Xent with plain autograd ops (the package's implementation before the fused node): scalar."""
    M, B = len(embeddings), labels.shape[0]
    e = torch.nn.functional.normalize(torch.cat(embeddings), dim=-1)
    sim = e @ e.T / temperature  # (N, N)
    eye = torch.eye(M * B, dtype=torch.bool)
    lse = torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1)
    group = labels.repeat(M) if bound == "supcon" else torch.arange(B).repeat(M)
    pos = (group.unsqueeze(0) == group.unsqueeze(1)) & ~eye  # (N, N)
    n_pos = pos.sum(1)
    pos_mean = (sim * pos).sum(1) / n_pos.clamp(min=1)
    has = n_pos > 0
    return (lse - pos_mean)[has].mean()

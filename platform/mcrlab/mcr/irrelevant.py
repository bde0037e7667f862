"""Task-irrelevant shared information: an upper bound, minimised (mcr-method.md 2.5).

B = batch, C = classes, d_m = latent widths, H = hidden width of the auxiliary network.

``ceb_mse`` (default): a decoder C -> H -> sum_m d_m (ReLU, no biases) regresses the concatenated latents
from the DETACHED fused logits; L = MSE. Gradients reach the decoder and, through the regression
target, the encoders: latent content that the prediction cannot explain is penalised.

``club``: a variational CLUB bound (Cheng et al., 2020) of I(Z_a; Z_b | Y), summed over modality pairs
a < b. A Gaussian q(z_b | z_a, y) = N(mu(z_a, y), diag exp(logvar(z_a, y))) is conditioned on Y by
concatenating one_hot(y) to its input, and the negative pairs are drawn from p(z_a|y) p(z_b|y), i.e.
only pairs (i, j) with y_i = y_j:

    bound = mean_i [ log q(z_b,i | z_a,i, y_i) - mean_{j: y_j = y_i} log q(z_b,j | z_a,i, y_i) ]

The bound's gradient goes to the encoders only (q's parameters are detached inside it); q is trained by
its own negative log-likelihood on the positive pairs with the latents detached (``nll``), which the
method adds to the total loss at weight 1, so one optimizer step updates both and the nll never moves
an encoder.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

__all__ = ["IRRELEVANT_BOUNDS", "CEBDecoder", "ceb_mse", "CLUBNet", "CLUB", "club_bound"]

IRRELEVANT_BOUNDS = ("ceb_mse", "club")


class CEBDecoder(nn.Module):
    """Logits (B, C) -> concatenated latents (B, sum d_m); ReLU, no biases."""

    def __init__(self, num_classes: int, hidden: int, latent_total: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_classes, hidden, bias=False), nn.ReLU(),
                                 nn.Linear(hidden, latent_total, bias=False))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.net(logits)


def ceb_mse(decoder: nn.Module, fused: torch.Tensor, zs: list[torch.Tensor]) -> torch.Tensor:
    """MSE between decoder(fused.detach()) and cat(zs): fused (B, C), zs M x (B, d_m) -> scalar."""
    target = torch.cat(zs, dim=-1)
    return F.mse_loss(decoder(fused.detach()).to(target.dtype), target)


class CLUBNet(nn.Module):
    """q(z_b | z_a, y): (B, d_a), (B,) -> mean (B, d_b), log-variance (B, d_b) in (-1, 1) (tanh, as CLUB)."""

    def __init__(self, d_a: int, d_b: int, num_classes: int, hidden: int):
        super().__init__()
        self.num_classes = num_classes
        self.body = nn.Sequential(nn.Linear(d_a + num_classes, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, d_b)
        self.logvar = nn.Sequential(nn.Linear(hidden, d_b), nn.Tanh())

    def forward(self, z_a: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(torch.cat([z_a, F.one_hot(y, self.num_classes).to(z_a.dtype)], dim=-1))
        return self.mu(h), self.logvar(h)


def club_bound(net: nn.Module, z_a: torch.Tensor, z_b: torch.Tensor, y: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditional CLUB bound, nll of q) for one pair: z_a (B, d_a), z_b (B, d_b), y (B,) -> scalars.

    Constants of the Gaussian log-density (log 2 pi, log-variances of the same anchor) cancel in the
    bound and are dropped there.
    """
    params = {n: p.detach() for n, p in net.named_parameters()}
    mu, logvar = functional_call(net, params, (z_a, y))  # q fixed: gradient to the latents only
    inv = torch.exp(-logvar)  # (B, d_b)
    # sq[i, j] = sum_d (z_b,j - mu_i)^2 / var_i  less its term sum_d mu_i^2 / var_i, which is constant per
    # anchor i and cancels between the two means below: as matrix products, (B_i, B_j)
    sq = inv @ (z_b * z_b).T - 2.0 * (mu * inv) @ z_b.T
    same = (y.unsqueeze(0) == y.unsqueeze(1)).to(sq.dtype)  # (B, B); includes j = i
    negative = (sq * same).sum(1) / same.sum(1)
    bound = 0.5 * (negative - sq.diagonal()).mean()
    mu_t, logvar_t = net(z_a.detach(), y)  # q's own training signal, latents detached
    nll = 0.5 * (((z_b.detach() - mu_t) ** 2) * torch.exp(-logvar_t) + logvar_t).sum(-1).mean()
    return bound, nll


class CLUB(nn.Module):
    """One ``CLUBNet`` per modality pair a < b; ``forward`` sums the bounds and the nlls over pairs."""

    def __init__(self, dims: list[int], num_classes: int, hidden: int):
        super().__init__()
        self.pairs = list(itertools.combinations(range(len(dims)), 2))
        self.nets = nn.ModuleList(CLUBNet(dims[a], dims[b], num_classes, hidden) for a, b in self.pairs)

    def forward(self, zs: list[torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bound, nll = zs[0].new_zeros(()), zs[0].new_zeros(())
        for net, (a, b) in zip(self.nets, self.pairs, strict=True):
            bd, nl = club_bound(net, zs[a], zs[b], y)
            bound, nll = bound + bd, nll + nl
        return bound, nll

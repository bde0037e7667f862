"""MCR, the Multimodal Competition Regularizer (see shared/design/mcr-method.md).

L = CE(g(z), y) + w_uni * sum_m CE(h_m(z_m), y) + R_game + lambda_c * L_shared + lambda_b * L_irrelevant

The maths lives in ``mcrlab.mcr`` (pure functions); this class wires it into the hooks of
``methods/base.py``. Per-player learning rates are the training loop's (train.player_lr, adaptive_lr).

Schedule: the regulariser (game, shared and irrelevant terms) is active for epochs
start_epoch..end_epoch (inclusive; end_epoch = -1 means to the end). lambda_M warms up linearly over
``warmup_epochs`` from start_epoch, per step: scale = min(1, (epoch - start + (step + 1) / steps) / warmup),
so it is already > 0 on the first active step and reaches 1 at the end of the warm-up. Outside the window
none of the three terms is computed (the loop still measures D_m at evaluation). When the effective
lambda_M is 0 (lambda_m = 0, an ablation) D_m is still measured, without gradient, for the logs.

Per-step logs: loss/fused, loss/head/<m>, loss/game (exactly the term added to the loss), loss/shared,
loss/irrelevant (and loss/club_nll for club), mcr/D/<m> (detached 0-d tensors: the step never waits for the
device), mcr/lambda_m (effective) and mcr/active (Python floats from the schedule).

train.compile (``compile_step``): the forward and ``_loss_terms`` run as one compiled function, with this
step's perturbation drawn eagerly first (the same draws as the eager path) and lambda_M passed as a tensor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mcrlab.config import ConfigError, opt
from mcrlab.mcr import (
    CLUB,
    CEBDecoder,
    Perturbation,
    SharedProjection,
    ceb_mse,
    contrastive_loss,
    draw_perturbation,
    draw_perturbation_for,
    game_term,
    unique_from_perturbation,
)
from mcrlab.mcr.game import STRATEGY_K
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.models.net import ForwardOutput, MultimodalNet

__all__ = ["MCR", "MCRParams", "STRATEGY_K", "regulariser_schedule"]


@dataclass
class MCRParams:
    w_uni: float = opt(1.0, "weight of the unimodal heads' CE losses (multi-loss)", ge=0.0)
    lambda_m: float = opt(0.01, "weight lambda_M of the unique-information game term", ge=0.0)
    strategy: str = opt("greedy", "game strategy: greedy (k=-1), independent (k=0), collaborative (k=+1)",
                        choices=tuple(STRATEGY_K))
    num_perms: int = opt(32, "S, permutations of the batch per modality", ge=1, le=1024)
    divergence: str = opt("jsd", "divergence between clean and perturbed predictions",
                          choices=("jsd", "kl", "mse"))
    reference_grad: str = opt("same", "gradient through the clean prediction p: same detach pattern as q, "
                              "or full (as in the released code)", choices=("same", "full"))
    perturbation: str = opt("permute", "how modality m's information is broken off",
                            choices=("permute", "noise", "zero"))
    lambda_c: float = opt(0.01, "weight lambda_C of the shared-information lower bound", ge=0.0)
    shared_bound: str = opt("supcon", "shared-information bound", choices=("supcon", "infonce"))
    temperature: float = opt(0.5, "temperature tau of the contrastive bound", gt=0.0)
    shared_dim: int = opt(32, "common projection width for the contrastive bound", ge=1)
    lambda_b: float = opt(0.0, "weight lambda_B of the task-irrelevant upper bound (0 = off)", ge=0.0)
    irrelevant_bound: str = opt("ceb_mse", "task-irrelevant bound", choices=("ceb_mse", "club"))
    club_hidden: int = opt(64, "hidden width of the CLUB variational network (club only)", ge=1)
    decoder_hidden: int = opt(64, "hidden width of the ceb_mse decoder C -> hidden -> sum d_m", ge=1)
    start_epoch: int = opt(0, "first epoch (0-based) with the regulariser active", ge=0)
    end_epoch: int = opt(-1, "last epoch with the regulariser active (-1 = to the end)", ge=-1)
    warmup_epochs: int = opt(0, "linear warm-up of lambda_M over this many epochs from start_epoch", ge=0)

    def __post_init__(self) -> None:
        if self.end_epoch != -1 and self.end_epoch < self.start_epoch:
            raise ConfigError("end_epoch: must be -1 or >= start_epoch")


def regulariser_schedule(params: MCRParams, epoch: int, step: int, steps_per_epoch: int
                         ) -> tuple[bool, float]:
    """(regulariser active?, multiplier of lambda_M) at this step; see the module docstring."""
    if epoch < params.start_epoch or (params.end_epoch != -1 and epoch > params.end_epoch):
        return False, 0.0
    if params.warmup_epochs == 0:
        return True, 1.0
    progress = (epoch - params.start_epoch + (step + 1) / max(steps_per_epoch, 1)) / params.warmup_epochs
    return True, min(1.0, progress)


class MCR(Method):
    name = "mcr"
    Params = MCRParams

    def __init__(self, params: MCRParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        dims = list(model.latent_dims)
        extra: dict[str, nn.Module] = {}
        if params.lambda_c > 0:
            extra["shared"] = SharedProjection(dims, params.shared_dim)
        if params.lambda_b > 0:
            if params.irrelevant_bound == "ceb_mse":
                extra["decoder"] = CEBDecoder(num_classes, params.decoder_hidden, sum(dims))
            else:
                extra["club"] = CLUB(dims, num_classes, params.club_hidden)
        device = next(model.parameters()).device
        self._extra = nn.ModuleDict(extra).to(device) if extra else None
        self.k = STRATEGY_K[params.strategy]
        self._compiled: Callable[..., Any] | None = None  # the compiled step under train.compile (``compile_step``)

    def extra_modules(self) -> nn.Module | None:
        return self._extra

    def compile_step(self, options: dict) -> bool:
        """train.compile: the whole step (forward, CE losses, game term, divergence, shared and irrelevant
        bounds) becomes one compiled function, ``_forward_loss``; the perturbation is drawn eagerly before
        it and passed in as tensors (a generator's draws would break the graph)."""
        self._compiled = torch.compile(self._forward_loss, **options)
        return True

    def training_step(self, model: MultimodalNet, xs: list[torch.Tensor], y: torch.Tensor,
                      ctx: StepContext) -> StepResult:
        if self._compiled is None:
            return super().training_step(model, xs, y, ctx)
        p = self.params
        active, scale = regulariser_schedule(p, ctx.epoch, ctx.step, ctx.steps_per_epoch)
        lam = p.lambda_m * scale
        pert, lam_t = None, None
        if active:  # the same draws, from the same generator, as the eager path's (which draws after the forward)
            dtype = next(self.model.parameters()).dtype
            pert = draw_perturbation_for(p.perturbation, p.num_perms, y.shape[0], list(self.model.latent_dims),
                                         ctx.generator, device=y.device, float64=dtype == torch.float64)
            if lam > 0:  # a device tensor, not a Python float: no recompilation while lambda_M warms up
                lam_t = torch.full((), lam, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                                   device=y.device)
        kind = None if pert is None else pert.kind
        perms = None if pert is None else pert.perms
        noise = None if pert is None else pert.noise
        loss, terms, (z, fused, heads, contribs) = self._compiled(model, xs, y, kind, perms, noise, lam_t)
        out = ForwardOutput(z=z, fused=fused, heads=heads, contribs=contribs)
        return StepResult(loss=loss, out=out, logs=_logs(active, lam, terms))

    def _forward_loss(self, model: MultimodalNet, xs: list[torch.Tensor], y: torch.Tensor, kind: str | None,
                      perms: torch.Tensor | None, noise: list[torch.Tensor] | None, lam: torch.Tensor | None):
        """The compiled step's body: forward and ``_loss_terms`` from tensors only; -> (loss, terms, the
        forward output's tensors)."""
        out = model(xs)
        pert = None if kind is None else Perturbation(kind, perms=perms, noise=noise)
        loss, terms = self._loss_terms(out, y, pert, lam)
        return loss, terms, (out.z, out.fused, out.heads, out.contribs)

    def loss(self, out: ForwardOutput, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        p = self.params
        active, scale = regulariser_schedule(p, ctx.epoch, ctx.step, ctx.steps_per_epoch)
        lam = p.lambda_m * scale
        pert = draw_perturbation(p.perturbation, p.num_perms, out.z, ctx.generator) if active else None
        loss, terms = self._loss_terms(out, y, pert, lam if lam > 0 else None)
        return loss, _logs(active, lam, terms)

    def _loss_terms(self, out: ForwardOutput, y: torch.Tensor, pert: Perturbation | None,
                    lam: float | torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss (scalar) and its terms (0-d tensors) for one batch, given this step's draw: the same
        maths eager and compiled. pert None: the regulariser is off this step. lam: effective lambda_M, None
        when it is 0 (an ablation: D_m is still measured, without gradient)."""
        p = self.params
        fused = F.cross_entropy(out.fused, y)
        heads = [F.cross_entropy(h, y) for h in out.heads]
        loss = fused + p.w_uni * torch.stack(heads).sum()
        terms: dict[str, torch.Tensor] = {"loss/fused": fused}
        terms |= {f"loss/head/{m}": h for m, h in enumerate(heads)}
        if pert is None:
            return loss, terms
        if lam is not None:
            r_game, D = game_term(out, self.model.fusion, pert, lambda_m=lam, k=self.k,
                                  divergence=p.divergence, reference_grad=p.reference_grad)
            loss = loss + r_game
            terms["loss/game"] = r_game
        else:
            with torch.no_grad():
                D = unique_from_perturbation(out, self.model.fusion, pert, divergence=p.divergence)
            terms["loss/game"] = D.new_zeros(())
        terms |= {f"mcr/D/{m}": D[m] for m in range(len(out.z))}
        if p.lambda_c > 0:
            assert self._extra is not None  # __init__ builds it (with "shared") when lambda_c > 0
            shared = contrastive_loss(self._extra["shared"](out.z), y, p.temperature, p.shared_bound,
                                      num_classes=self.num_classes)
            loss = loss + p.lambda_c * shared
            terms["loss/shared"] = shared
        if p.lambda_b > 0:
            assert self._extra is not None  # __init__ builds it (decoder or club) when lambda_b > 0
            if p.irrelevant_bound == "ceb_mse":
                irr = ceb_mse(self._extra["decoder"], out.fused, out.z)
            else:
                irr, nll = self._extra["club"](out.z, y)
                loss = loss + nll  # trains q only: its inputs are detached inside
                terms["loss/club_nll"] = nll
            loss = loss + p.lambda_b * irr
            terms["loss/irrelevant"] = irr
        return loss, terms


def _logs(active: bool, lam: float, terms: dict[str, torch.Tensor]) -> dict:
    """The step's logs: the schedule's Python floats and the terms as detached 0-d tensors (no host sync
    inside the step: the loop reads them once per epoch)."""
    return {"mcr/active": float(active), "mcr/lambda_m": lam, **{k: t.detach() for k, t in terms.items()}}

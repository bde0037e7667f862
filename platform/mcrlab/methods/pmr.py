"""PMR: Prototypical Modal Rebalance (Fan et al., CVPR 2023, "PMR: prototypical modal rebalance for
multimodal learning").

Class prototypes c_m^k (mean latent of class k for modality m) define a non-parametric classifier
p_m(k | z) = softmax_k(-||z_m - c_m^k||). With s_m = sum_i p_m(y_i | z_i) (prototype confidence):
  gamma_m = clip(mean_{j != m} s_j / s_m - 1, 0, 1)       (> 0 only for lagging modalities)
  L = CE(g(z), y) + alpha * sum_m gamma_m * CE(-dist_m, y)  - mu * sum_m omega_m * H(p_m)
The prototype CE (PCE) pulls a lagging modality's features towards its class prototypes, speeding it up; the
entropy term (PER, only during the first norm_epochs epochs of modulation) raises the prediction entropy of
the leading modality (omega_m = max_j gamma_j for the modality with the largest s_m, else 0), slowing it.
For M = 2, gamma reproduces the paper's two coefficients (beta and lambda) exactly.

Choices: prototypes are recomputed each epoch from the latents of the previous epoch's training batches and
smoothed with momentum (new = (1 - momentum) * mean + momentum * old), instead of an extra pass over 10% of
the training set; in the first epoch each batch's own class means (detached) serve as prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import ConfigError, opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.methods.ogm_ge import in_window
from mcrlab.models.net import MultimodalNet


def class_means(z: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums and counts: (B, d), (B,) -> ((C, d), (C,))."""
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, y, z)
    counts = torch.bincount(y, minlength=num_classes).to(z.dtype)
    return sums, counts


def prototype_logits(z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """-||z_i - c_k||: (B, d), (C, d) -> (B, C)."""
    return -torch.cdist(z, protos.to(z.dtype))


def pmr_gammas(scores: torch.Tensor) -> torch.Tensor:
    """gamma_m = clip(mean_{j != m} s_j / s_m - 1, 0, 1): (M,) -> (M,)."""
    M = scores.numel()
    others = (scores.sum() - scores) / (M - 1)
    return (others / scores.clamp_min(1e-12) - 1).clamp(0.0, 1.0)


@dataclass
class PMRParams:
    alpha: float = opt(1.0, "weight of the prototype CE of lagging modalities", ge=0.0)
    mu: float = opt(0.01, "weight of the entropy regulariser (PER) on the leading modality", ge=0.0)
    norm_epochs: int = opt(10, "epochs (from start_epoch) with the entropy regulariser", ge=0)
    momentum: float = opt(0.5, "momentum of the prototype update", ge=0.0, le=1.0)
    start_epoch: int = opt(0, "first epoch (0-based) with rebalancing", ge=0)
    end_epoch: int = opt(-1, "last epoch with rebalancing (-1 = to the end)", ge=-1)

    def __post_init__(self) -> None:
        if self.end_epoch != -1 and self.end_epoch < self.start_epoch:
            raise ConfigError("end_epoch: must be -1 or >= start_epoch")


class PMR(Method):
    name = "pmr"
    Params = PMRParams

    def __init__(self, params: PMRParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        M, C = model.num_modalities, num_classes
        self.protos: list[torch.Tensor] | None = None
        self._sums = [torch.zeros(C, d, dtype=torch.float64) for d in model.latent_dims]
        self._counts = [torch.zeros(C, dtype=torch.float64) for _ in range(M)]
        self._gsum, self._n = torch.zeros(M), 0

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        if self._counts[0].sum() > 0:  # prototypes from the previous epoch's latents
            new = [(s / c.clamp_min(1)[:, None]).float() for s, c in zip(self._sums, self._counts, strict=True)]
            if self.protos is not None:
                mom = self.params.momentum
                new = [(1 - mom) * n + mom * o for n, o in zip(new, self.protos, strict=True)]
            self.protos = new
        for s, c in zip(self._sums, self._counts, strict=True):
            s.zero_()
            c.zero_()
        self._gsum.zero_()
        self._n = 0
        return {}

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        loss = F.cross_entropy(out.fused, y)
        logs = {"loss/fused": loss.item()}
        C = self.num_classes
        for m, z in enumerate(out.z):
            s, c = class_means(z.detach().double().cpu(), y.cpu(), C)
            self._sums[m] += s
            self._counts[m] += c
        p = self.params
        if in_window(ctx.epoch, p.start_epoch, p.end_epoch):
            if self.protos is not None:
                protos = [pr.to(z.device) for pr, z in zip(self.protos, out.z, strict=True)]
            else:
                protos = []
                for z in out.z:
                    s, c = class_means(z.detach(), y, C)
                    protos.append(s / c.clamp_min(1)[:, None])
            sims = [prototype_logits(z, pr) for z, pr in zip(out.z, protos, strict=True)]
            with torch.no_grad():
                scores = torch.stack([F.softmax(sm, 1).gather(1, y[:, None]).sum() for sm in sims]).cpu()
            gam = pmr_gammas(scores)
            for m, sm in enumerate(sims):
                if gam[m] > 0:
                    loss = loss + p.alpha * float(gam[m]) * F.cross_entropy(sm, y)
            if ctx.epoch < p.start_epoch + p.norm_epochs and p.mu > 0:
                lead = int(scores.argmax())
                probs = F.softmax(sims[lead], 1)
                entropy = -(probs * F.log_softmax(sims[lead], 1)).sum(1).mean()
                loss = loss - p.mu * float(gam.max()) * entropy
            self._gsum += gam
            self._n += 1
            logs.update({f"coef/pmr/{m}": float(g) for m, g in enumerate(gam)})
        return StepResult(loss=loss, out=out, logs=logs)

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        mean = self._gsum / max(self._n, 1)
        return {f"coef/pmr/{m}": float(g) for m, g in enumerate(mean)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "protos": self.protos, "sums": self._sums, "counts": self._counts}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.protos = state["protos"]
        self._sums, self._counts = list(state["sums"]), list(state["counts"])

"""PMR: Prototypical Modal Rebalance (Fan, Xu, Wei, Hu & Wang, CVPR 2023, "PMR: prototypical modal rebalance
for multimodal learning"). Reference: github.com/fanyunfeng-bit/Modal-Imbalance-PMR @3615e48,
main_Prototype_grad.py.

Class prototypes c_m^k (mean latent of class k for modality m) define a non-parametric classifier
p_m(k | z) = softmax_k(-||z_m - c_m^k||). With s_m = sum_i p_m(y_i | z_i) (prototype confidence) and
rho_m = s_m / mean_{j != m} s_j:
  L = CE(g(z), y) + sum_m gamma_m * CE(-dist_m, y),   gamma_m = alpha if rho_m < 1 else 0
(reference, two modalities: beta = alpha for audio when s_a / s_v < 1, lam = alpha for visual when > 1).
The prototype CE (PCE) pulls a lagging modality's features towards its class prototypes, speeding it up.

Options off by default (not in the reference): ``weighting=gap`` scales alpha by clip(1/rho_m - 1, 0, 1);
``mu > 0`` adds the paper's entropy regulariser (PER) on the leading modality during the first
``norm_epochs`` epochs of modulation, - mu * max_m gamma_m * H(p_lead). Reference defaults: alpha 1.0,
prototype momentum 0.2 (new = (1 - momentum) * mean + momentum * old), SGD momentum 0.9, weight decay 1e-4.
The reference modulates in epochs 0..100 of 150 (``end_epoch``; -1 here = to the end).

Deviation, documented: prototypes are recomputed each epoch from the latents of the previous epoch's training
batches, instead of an extra pass over 10% of the data; in the first epoch each batch's own class means
(detached) serve as prototypes.
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


def pmr_gammas(scores: torch.Tensor, alpha: float, weighting: str = "constant") -> torch.Tensor:
    """Weights of the prototype CE: (M,) scores -> (M,). ``constant`` (reference): alpha for every modality with
    s_m < mean_{j != m} s_j, else 0; ``gap``: alpha * clip(mean_{j != m} s_j / s_m - 1, 0, 1)."""
    M = scores.numel()
    others = (scores.sum() - scores) / (M - 1)
    if weighting == "constant":
        return torch.where(scores < others, torch.full_like(scores, alpha), torch.zeros_like(scores))
    return alpha * (others / scores.clamp_min(1e-12) - 1).clamp(0.0, 1.0)


@dataclass
class PMRParams:
    alpha: float = opt(1.0, "weight of the prototype CE of lagging modalities (reference 1.0)", ge=0.0)
    weighting: str = opt("constant", "constant alpha for lagging modalities (reference) or gap-scaled",
                         choices=("constant", "gap"))
    mu: float = opt(0.0, "weight of the entropy regulariser (PER) on the leading modality (0 = off, as the "
                         "reference code)", ge=0.0)
    norm_epochs: int = opt(10, "epochs (from start_epoch) with the entropy regulariser when mu > 0", ge=0)
    momentum: float = opt(0.2, "momentum of the prototype update (reference momentum_coef 0.2)", ge=0.0, le=1.0)
    start_epoch: int = opt(0, "first epoch (0-based) with rebalancing", ge=0)
    end_epoch: int = opt(-1, "last epoch with rebalancing (-1 = to the end)", ge=-1)

    def __post_init__(self) -> None:
        if self.end_epoch != -1 and self.end_epoch < self.start_epoch:
            raise ConfigError("end_epoch: must be -1 or >= start_epoch")


class PMR(Method):
    name = "pmr"
    Params = PMRParams
    defaults = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 1e-4}

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
            gam = pmr_gammas(scores, p.alpha, p.weighting)
            for m, sm in enumerate(sims):
                if gam[m] > 0:
                    loss = loss + float(gam[m]) * F.cross_entropy(sm, y)
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

"""ensemble: separately trained unimodal models whose logits are summed at prediction time.

L = sum_m CE(h_m(z_m), y). With independent encoders and per-parameter optimisers (Adam/SGD), summing the
unimodal losses trains each encoder and head exactly as M separate runs would: no parameter receives a
gradient from another modality's loss, and per-parameter optimisers do not mix them. The fusion head is not
trained. predict returns sum_m h_m(z_m), optionally standardised per modality so that a modality with
large-magnitude logits cannot dominate the sum.

Standardisation (our choice, the comparison in Kontras et al. 2025 leaves it open): each head's logits are
centred over classes and divided by a running RMS of that head's centred training logits (an exponential
moving average over training batches, kept in the method state). It equalises the modalities' scale while
keeping each sample's relative confidence, unlike a per-sample z-score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext
from mcrlab.models.net import ForwardOutput, MultimodalNet


def centred_rms(logits: torch.Tensor) -> torch.Tensor:
    """RMS of logits centred over classes: (B, C) -> scalar."""
    c = logits - logits.mean(dim=1, keepdim=True)
    return c.pow(2).mean().sqrt()


def ensemble_logits(heads: list[torch.Tensor], scales: list[float] | None) -> torch.Tensor:
    """sum_m h_m (scales None) or sum_m (h_m - mean_c h_m) / scale_m: M tensors (B, C) -> (B, C)."""
    if scales is None:
        return torch.stack(heads).sum(0)
    return torch.stack([(h - h.mean(dim=1, keepdim=True)) / max(s, 1e-12) for h, s in zip(heads, scales, strict=True)]).sum(0)


@dataclass
class EnsembleParams:
    standardize: bool = opt(False, "divide each modality's centred logits by their running training RMS")
    momentum: float = opt(0.9, "EMA momentum of the running logit scale (standardize only)", ge=0.0, le=0.999)


class Ensemble(Method):
    name = "ensemble"
    Params = EnsembleParams

    def __init__(self, params: EnsembleParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        self.scales: list[float] = [0.0] * model.num_modalities

    def loss(self, out: ForwardOutput, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        losses = [F.cross_entropy(h, y) for h in out.heads]
        logs = {f"loss/head/{m}": v.item() for m, v in enumerate(losses)}
        with torch.no_grad():
            for m, h in enumerate(out.heads):
                r = centred_rms(h.float()).item()
                mom = self.params.momentum
                self.scales[m] = r if self.scales[m] == 0.0 else mom * self.scales[m] + (1 - mom) * r
                logs[f"coef/ensemble/scale/{m}"] = self.scales[m]
        return torch.stack(losses).sum(), logs

    def predict(self, out: ForwardOutput) -> torch.Tensor:
        ready = self.params.standardize and all(s > 0 for s in self.scales)
        return ensemble_logits(out.heads, self.scales if ready else None)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "scales": list(self.scales)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.scales = [float(s) for s in state["scales"]]

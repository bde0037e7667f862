"""The first comparisons: joint, multi-loss and unimodal training.

joint:      L = CE(g(z), y)                                     (fused CE only)
multiloss:  L = CE(g(z), y) + w_uni * sum_m CE(h_m(z_m), y)     (joint + unimodal heads)
unimodal:   L = CE(h_m(z_m), y) for one modality m; evaluation uses that head alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mcrlab.config import ConfigError, opt
from mcrlab.methods.base import HeadsParams, Method, StepContext
from mcrlab.models.net import ForwardOutput, MultimodalNet


def heads_loss(heads: list[torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
    """sum_m CE(h_m(z_m), y) and the per-modality values for logging (detached 0-d tensors: no host sync)."""
    losses = [F.cross_entropy(h, y) for h in heads]
    return torch.stack(losses).sum(), {f"loss/head/{m}": v.detach() for m, v in enumerate(losses)}


class Joint(Method):
    name = "joint"


class MultiLoss(Method):
    name = "multiloss"
    Params = HeadsParams

    def loss(self, out: ForwardOutput, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        fused = F.cross_entropy(out.fused, y)
        uni, logs = heads_loss(out.heads, y)
        return fused + self.params.w_uni * uni, {"loss/fused": fused.detach(), **logs}


@dataclass
class UnimodalParams:
    modality: int = opt(0, "index of the modality trained alone", ge=0)


class Unimodal(Method):
    """Trains one encoder with its own head; the other players receive no gradient."""

    name = "unimodal"
    Params = UnimodalParams

    def __init__(self, params: UnimodalParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        if params.modality >= model.num_modalities:
            raise ConfigError(f"method.modality: {params.modality} is out of range for "
                              f"{model.num_modalities} modalities")

    def loss(self, out: ForwardOutput, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        loss = F.cross_entropy(out.heads[self.params.modality], y)
        return loss, {"loss/head": loss.detach()}

    def predict(self, out: ForwardOutput) -> torch.Tensor:
        return out.heads[self.params.modality]

    def trainable_modalities(self) -> list[int]:
        return [self.params.modality]

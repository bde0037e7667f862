"""MMCosine (Xu et al., ICASSP 2023, "MMCosine: multi-modal cosine loss towards balanced audio-visual
fine-grained learning").

Modality-wise normalisation of both the late-fusion weights and the features:
  logits = s * sum_m cos(W_m[c], z_m) = s * sum_m <W_m[c] / ||W_m[c]||, z_m / ||z_m||>      (B, C)
trained with CE; the fusion bias is not used. Normalising every modality's contribution to the same range
stops the dominant modality from winning by logit magnitude alone. The scale s is a fixed hyperparameter
(searched per dataset in the paper; default 10). Needs late fusion (model.fusion=late).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext
from mcrlab.models.fusion import LateFusion
from mcrlab.models.net import ForwardOutput


def cosine_logits(z: list[torch.Tensor], weights: list[torch.Tensor], scale: float) -> list[torch.Tensor]:
    """Per-modality scaled cosine logits: M latents (B, d_m), M weights (C, d_m) -> M tensors (B, C)."""
    return [scale * F.normalize(zm, dim=-1) @ F.normalize(w, dim=-1).T for zm, w in zip(z, weights, strict=True)]


@dataclass
class MMCosineParams:
    scale: float = opt(10.0, "scaling s of the summed cosine logits", gt=0.0)


class MMCosine(Method):
    name = "mmcosine"
    Params = MMCosineParams
    fusions = ("late",)  # refused at config time otherwise
    fusion_reason = "it normalises the late-fusion weights W_m"

    def _logits(self, out: ForwardOutput) -> list[torch.Tensor]:
        fusion = self.model.fusion
        assert isinstance(fusion, LateFusion)  # refused at config time otherwise
        return cosine_logits(out.z, [cast(nn.Linear, p).weight for p in fusion.proj], self.params.scale)

    def loss(self, out: ForwardOutput, y: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        parts = self._logits(out)
        loss = F.cross_entropy(torch.stack(parts).sum(0), y)
        logs = {"loss/fused": loss.item()}
        with torch.no_grad():
            for m, p in enumerate(parts):
                logs[f"coef/mmcosine/cos_true/{m}"] = float(p.gather(1, y[:, None]).mean()) / self.params.scale
        return loss, logs

    def predict(self, out: ForwardOutput) -> torch.Tensor:
        return torch.stack(self._logits(out)).sum(0)

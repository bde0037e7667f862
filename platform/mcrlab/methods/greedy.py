"""Greedy: balanced multimodal learning against the greedy nature of multimodal DNNs (Wu, Jastrzebski, Cho &
Geras, ICML 2022, "Characterizing and overcoming the greedy nature of learning in multi-modal deep neural
networks").

Conditional learning speed. For modality m, compare how fast its cross-modal ("bypass") block learns relative
to its own branch ("main"): mu(theta) = ||grad theta||^2 / ||theta||^2 accumulated over normal steps, and
  BDR_m = log10(sum mu(bypass_m) / sum mu(main_m)),   d_speed = BDR_0 - BDR_1.
When |d_speed| > alpha the model enters a re-balancing window of `window` steps that cares for one modality
(modality 1 if d_speed < 0, else modality 0, as in the public reference implementation): the fused CE is
computed with the other modality's latent detached, so only the cared-for encoder learns from it.
Defined for two modalities (max_modalities = 2).

Adaptation to this platform's late/MLP fusion (the paper uses intermediate MMTM fusion layers): the bypass
block of modality m is its slice of the fusion head (W_m for late fusion, the columns of the first MLP layer
that read z_m otherwise) and the main block is encoder m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.models.fusion import LateFusion
from mcrlab.models.net import MultimodalNet


def speed_ratio(grads: list[torch.Tensor], weights: list[torch.Tensor]) -> float:
    """sum ||g||^2 / sum ||w||^2 over a block's tensors (missing gradients count as zero)."""
    gn = sum(float(g.pow(2).sum()) for g in grads if g is not None)
    wn = sum(float(w.pow(2).sum()) for w in weights)
    return gn / max(wn, 1e-30)


def d_speed(bypass: list[float], main: list[float]) -> float:
    """BDR_0 - BDR_1 from accumulated bypass/main speeds of two modalities."""
    bdr = [math.log10(max(b, 1e-30) / max(m, 1e-30)) for b, m in zip(bypass, main, strict=True)]
    return bdr[0] - bdr[1]


@dataclass
class GreedyParams:
    alpha: float = opt(0.1, "threshold on |d_speed| that starts a re-balancing window", ge=0.0)
    window: int = opt(5, "re-balancing steps per window", ge=1)


class Greedy(Method):
    name = "greedy"
    Params = GreedyParams
    max_modalities = 2

    def __init__(self, params: GreedyParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        self.bypass, self.main = [0.0, 0.0], [0.0, 0.0]
        self.curation, self.caring, self.curation_step, self.speed = False, 0, 0, 0.0
        self._steps, self._curated = 0, 0

    def _bypass_block(self, model: MultimodalNet, m: int) -> tuple[list, list]:
        if isinstance(model.fusion, LateFusion):
            w = model.fusion.proj[m].weight
            return [w.grad], [w.detach()]
        first = model.fusion.net[0].weight
        lo = sum(model.latent_dims[:m])
        sl = slice(lo, lo + model.latent_dims[m])
        g = first.grad[:, sl] if first.grad is not None else None
        return [g], [first.detach()[:, sl]]

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        self._steps, self._curated = 0, 0
        return {}

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        if self.curation:
            z = [zm if m == self.caring else zm.detach() for m, zm in enumerate(out.z)]
            loss = F.cross_entropy(model.fusion(z), y)
            self._curated += 1
        else:
            loss = F.cross_entropy(out.fused, y)
        self._steps += 1
        return StepResult(loss=loss, out=out, logs={"loss/fused": loss.item(), "coef/greedy/speed": self.speed})

    def after_backward(self, model, ctx: StepContext) -> dict[str, float]:
        if self.curation:
            self.curation_step += 1
            if self.curation_step >= self.params.window:
                self.curation = False
            return {}
        for m in range(2):
            g, w = self._bypass_block(model, m)
            self.bypass[m] += speed_ratio(g, w)
            enc = list(model.encoders[m].parameters())
            self.main[m] += speed_ratio([p.grad for p in enc], [p.detach() for p in enc])
        self.speed = d_speed(self.bypass, self.main)
        if abs(self.speed) > self.params.alpha:
            self.curation, self.curation_step = True, 0
            self.caring = 1 if self.speed < 0 else 0
        return {}

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        return {"coef/greedy/speed": self.speed, "coef/greedy/curated_frac": self._curated / max(self._steps, 1)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "bypass": list(self.bypass), "main": list(self.main),
                "curation": self.curation, "caring": self.caring, "curation_step": self.curation_step,
                "speed": self.speed}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.bypass, self.main = [float(v) for v in state["bypass"]], [float(v) for v in state["main"]]
        self.curation, self.caring = bool(state["curation"]), int(state["caring"])
        self.curation_step, self.speed = int(state["curation_step"]), float(state["speed"])

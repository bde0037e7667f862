"""Greedy: balanced multimodal learning against the greedy nature of multimodal DNNs (Wu, Jastrzebski, Cho &
Geras, ICML 2022, "Characterizing and overcoming the greedy nature of learning in multi-modal deep neural
networks"). Reference: github.com/nyukat/greedy_multimodal_learning @a190e03, src/callbacks.py
(Bias_Mitigation_Strong), src/balanced_mmtm.py (MMTM_mitigate), configs/training.gin.

Architecture. The reference's cross-modal connections are MMTM blocks: from the squeezed features of both
modalities, s = ReLU(W_sq [z_0, z_1]), each modality m gets an excitation e_m = sigmoid(W_m s) and continues
with z_m * e_m. This platform's encoders end in pooled latents, so the method adds one MMTM block on the
latents (``extra_modules``) before the fusion head: fused = g(z_0 * e_0, z_1 * e_1) (training and prediction).

Conditional learning speed. The bypass of modality m is the MMTM part that carries cross-modal information
into it (W_m, plus the shared W_sq, counted for both as in the reference); the main block is encoder m. With
mu(theta) = ||grad theta||^2 / ||theta||^2 summed over all normal steps since the start,
  BDR_m = log10(sum mu(bypass_m) / sum mu(main_m)),   d_speed = BDR_0 - BDR_1.
From epoch ``start_epoch`` on, when |d_speed| > alpha the next ``window`` steps re-balance: they care for
modality c = 0 if d_speed > 0 else 1 (the modality whose own branch learns slowest relative to its bypass) by
replacing its excitation e_c with its running average (a constant), so no cross-modal information reaches it
and its own encoder has to carry the prediction; the other modality's path is unchanged, every parameter
still learns from the fused CE. Defined for two modalities (max_modalities = 2).

Reference defaults: epsilon (alpha) 0.01, window 5, starting_epoch 2, MMTM ratio 4 (hidden = 2 (d_0 + d_1) /
ratio), SGD without momentum (``defaults``; its lr 0.1 is for its own data and batch 8, so not set). The
running average is of each modality's own excitation over the training batches (the reference averages
modality 0's excitation for both modalities, a typo by all appearances).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.models.net import ForwardOutput, MultimodalNet


def speed_ratio(grads: list[torch.Tensor | None], weights: list[torch.Tensor]) -> float:
    """sum ||g||^2 / sum ||w||^2 over a block's tensors (missing gradients count as zero)."""
    gn = sum(float(g.pow(2).sum()) for g in grads if g is not None)
    wn = sum(float(w.pow(2).sum()) for w in weights)
    return gn / max(wn, 1e-30)


def d_speed(bypass: list[float], main: list[float]) -> float:
    """BDR_0 - BDR_1 from accumulated bypass/main speeds of two modalities."""
    bdr = [math.log10(max(b, 1e-30) / max(m, 1e-30)) for b, m in zip(bypass, main, strict=True)]
    return bdr[0] - bdr[1]


class LatentMMTM(nn.Module):
    """One MMTM block on two latents: (B, d_0), (B, d_1) -> gated latents, same shapes.

    ``frozen[m]`` (d_m,) replaces modality m's excitation by a constant (the reference's curation mode).
    """

    def __init__(self, dims: list[int], ratio: float):
        super().__init__()
        hidden = max(1, int(2 * sum(dims) / ratio))
        self.squeeze = nn.Linear(sum(dims), hidden)
        self.excite = nn.ModuleList(nn.Linear(hidden, d) for d in dims)

    def excitations(self, z: list[torch.Tensor]) -> list[torch.Tensor]:
        s = F.relu(self.squeeze(torch.cat(z, dim=-1)))
        return [torch.sigmoid(e(s)) for e in self.excite]

    def forward(self, z: list[torch.Tensor], frozen: dict[int, torch.Tensor] | None = None) -> list[torch.Tensor]:
        exc = self.excitations(z)
        frozen = frozen or {}
        return [zm * (frozen[m].to(zm.dtype) if m in frozen else e) for m, (zm, e) in enumerate(zip(z, exc))]


@dataclass
class GreedyParams:
    alpha: float = opt(0.01, "threshold epsilon on |d_speed| that starts a re-balancing window (reference 0.01)",
                       ge=0.0)
    window: int = opt(5, "re-balancing steps per window (reference 5)", ge=1)
    start_epoch: int = opt(2, "first epoch (0-based) that may re-balance (reference starting_epoch 2)", ge=0)
    mmtm_ratio: float = opt(4.0, "MMTM reduction ratio: squeeze width = 2 (d_0 + d_1) / ratio", gt=0.0)


class Greedy(Method):
    name = "greedy"
    Params = GreedyParams
    max_modalities = 2
    defaults = {"train.optimizer": "sgd", "train.momentum": 0.0}  # configs/training.gin: momentum=0, wd=0

    def __init__(self, params: GreedyParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        self.mmtm = LatentMMTM(model.latent_dims, params.mmtm_ratio)
        self.avg = [torch.zeros(d, dtype=torch.float64) for d in model.latent_dims]
        self.avg_n = 0
        self.bypass, self.main = [0.0, 0.0], [0.0, 0.0]
        self.curation, self.caring, self.curation_step, self.speed = False, 0, 0, 0.0
        self.curating = False  # whether the last training step re-balanced
        self._steps, self._curated, self._cared = 0, 0, [0, 0]

    def extra_modules(self) -> nn.Module:
        return self.mmtm

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        self._steps, self._curated, self._cared = 0, 0, [0, 0]
        return {}

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        exc = self.mmtm.excitations(out.z)
        with torch.no_grad():  # running average of each modality's excitation (the curation constant)
            self.avg_n += 1
            for m, e in enumerate(exc):
                self.avg[m] += (e.detach().double().mean(0).cpu() - self.avg[m]) / self.avg_n
        self.curating = self.curation  # this step's mode (after_backward may change self.curation)
        if self.curation:
            c = self.caring
            gated = [zm * (self.avg[m].to(zm.device, zm.dtype) if m == c else e)
                     for m, (zm, e) in enumerate(zip(out.z, exc))]
            self._curated += 1
            self._cared[c] += 1
        else:
            gated = [zm * e for zm, e in zip(out.z, exc)]
        loss = F.cross_entropy(model.fusion(gated), y)
        self._steps += 1
        return StepResult(loss=loss, out=out, logs={"loss/fused": loss.item(), "coef/greedy/speed": self.speed,
                                                    "coef/greedy/curation": float(self.curating)})

    def _blocks(self, model: MultimodalNet, m: int) -> tuple[list, list]:
        """(bypass tensors, main tensors) of modality m."""
        bypass = [*self.mmtm.excite[m].parameters(), *self.mmtm.squeeze.parameters()]
        return bypass, list(model.encoders[m].parameters())

    def after_backward(self, model, ctx: StepContext) -> dict[str, float]:
        if self.curation:
            self.curation_step += 1
            if self.curation_step >= self.params.window:
                self.curation = False
            return {}
        for m in range(2):
            bypass, main = self._blocks(model, m)
            self.bypass[m] += speed_ratio([p.grad for p in bypass], [p.detach() for p in bypass])
            self.main[m] += speed_ratio([p.grad for p in main], [p.detach() for p in main])
        self.speed = d_speed(self.bypass, self.main)
        if ctx.epoch >= self.params.start_epoch and abs(self.speed) > self.params.alpha:
            self.curation, self.curation_step = True, 0
            self.caring = 0 if self.speed > 0 else 1
        return {}

    def predict(self, out: ForwardOutput) -> torch.Tensor:
        return self.model.fusion(self.mmtm(out.z))

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        n = max(self._curated, 1)
        return {"coef/greedy/speed": self.speed, "coef/greedy/curated_frac": self._curated / max(self._steps, 1),
                **{f"coef/greedy/cared/{m}": self._cared[m] / n for m in range(2)}}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "bypass": list(self.bypass), "main": list(self.main),
                "curation": self.curation, "caring": self.caring, "curation_step": self.curation_step,
                "speed": self.speed, "avg": [a.clone() for a in self.avg], "avg_n": self.avg_n}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.bypass, self.main = [float(v) for v in state["bypass"]], [float(v) for v in state["main"]]
        self.curation, self.caring = bool(state["curation"]), int(state["caring"])
        self.curation_step, self.speed = int(state["curation_step"]), float(state["speed"])
        self.avg, self.avg_n = [a.clone() for a in state["avg"]], int(state["avg_n"])

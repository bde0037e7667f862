"""Gradient-Blending (Wang, Tran & Feiszli, CVPR 2020, "What makes training multi-modal classification
networks hard?"). Reference: github.com/pliang279/MultiBench @49f9be2, training_structures/gradient_blend.py.

L = w_0 CE(g(z), y) + sum_m w_m CE(h_m(z_m), y), with the weights re-estimated every ``super_epochs`` epochs
from each head's generalisation G and overfitting O, as the reference (its default ``delta = False``):
  O_k = L^V_k - L^T_k (floored at 1e-4 when negative),  G_k = L^V_k,  w_k = |G_k / O_k^2| / Z,
or with ``delta = true`` (the paper's form) the changes between two estimates n and n + s:
  G_k = L^V_k(n + s) - L^V_k(n),  O_k = (L^V_k - L^T_k)(n + s) - (L^V_k - L^T_k)(n),  w_k = |G_k / O_k^2| / Z
(Z normalises sum_k w_k = 1). Every weight is positive, so no head - the fused one included - drops out.
|O_k| is floored at ``overfit_floor``: the reference sets O = 1e-4 where it is negative, after 20 epochs of
training copies, where the gaps are positive; estimated online on short budgets, a head that does not
overfit yet (O <= 0) then takes nearly all the weight and the weights flip between ~0 and ~1 from one
estimate to the next. The default floor 0.1 (nats) keeps them inside (0, 1); overfit_floor=1e-4 is the
reference's.
Before the first estimate all M + 1 weights are 1 / (M + 1).

Deviation, documented: the reference estimates the weights on copies of the model trained for the window on
92% of the training split and scored on the held-out 8%; the method hooks give a method no inputs of a
held-out split, so here L^T_k is the loss of the heads being trained on a fixed set of training rows (the
first ``probe_rows`` seen) and L^V_k their loss on the validation split, both measured after each window
(``on_validation``, evaluation mode): the estimate is online.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.models.net import MultimodalNet


def blend_weights(val_now: torch.Tensor, train_now: torch.Tensor, val_prev: torch.Tensor | None = None,
                  train_prev: torch.Tensor | None = None, floor: float = 1e-4) -> torch.Tensor:
    """Normalised w_k = |G_k / O_k^2| from per-head losses, all (K,) -> (K,) (see the module docstring).

    Without ``val_prev``/``train_prev``: the reference's non-delta form; with them: the delta form. |O_k| is
    floored at ``floor`` (the reference: 1e-4), so every weight is finite and positive."""
    if val_prev is None or train_prev is None:
        g = val_now
        o = (val_now - train_now).clamp_min(floor)
    else:
        g = val_now - val_prev
        o = ((val_now - train_now) - (val_prev - train_prev)).abs().clamp_min(floor)
    raw = (g / o.pow(2)).abs()
    total = raw.sum()
    if not torch.isfinite(total) or total <= 0:
        return torch.full_like(raw, 1.0 / raw.numel())
    return raw / total


@dataclass
class GradientBlendingParams:
    super_epochs: int = opt(1, "epochs between two weight estimates (the reference's gb_epoch)", ge=1)
    delta: bool = opt(False, "use the changes of G and O between estimates (the paper) instead of their "
                             "values (the reference's default)")
    overfit_floor: float = opt(0.1, "floor of |O_k| (the reference: 1e-4; see the module docstring)", gt=0.0)
    probe_rows: int = opt(512, "training rows (the first seen) on which L^T is measured with L^V", ge=1)


class GradientBlending(Method):
    name = "gradient_blending"
    Params = GradientBlendingParams

    def __init__(self, params: GradientBlendingParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        K = model.num_modalities + 1
        self.weights = torch.full((K,), 1.0 / K, dtype=torch.float64)
        self.prev: tuple[torch.Tensor, torch.Tensor] | None = None  # (val, train) losses at the last estimate
        self.val_loss: torch.Tensor | None = None
        self._train_sum, self._n = torch.zeros(K, dtype=torch.float64), 0
        self.probe: tuple[list[torch.Tensor], torch.Tensor] | None = None  # fixed training rows for L^T
        self.train_loss: torch.Tensor | None = None

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        self._train_sum.zero_()
        self._n, self.val_loss = 0, None
        return {}

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        losses = torch.stack([F.cross_entropy(out.fused, y), *[F.cross_entropy(h, y) for h in out.heads]])
        self._train_sum += losses.detach().double().cpu()
        self._n += 1
        if self.probe is None or len(self.probe[1]) < self.params.probe_rows:  # the first rows seen, kept
            xs_d, y_d = [x.detach() for x in xs], y.detach()
            if self.probe is not None:
                xs_d = [torch.cat([a, b]) for a, b in zip(self.probe[0], xs_d, strict=True)]
                y_d = torch.cat([self.probe[1], y_d])
            n = self.params.probe_rows
            self.probe = ([x[:n] for x in xs_d], y_d[:n])
        loss = (self.weights.to(losses.device, losses.dtype) * losses).sum()
        return StepResult(loss=loss, out=out, logs={"loss/fused": losses[0].item()})

    @staticmethod
    def _losses(model: MultimodalNet, z: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        heads = [h(zm) for h, zm in zip(model.heads, z, strict=True)]
        return torch.stack([F.cross_entropy(model.fusion(z).float(), y),
                            *[F.cross_entropy(h.float(), y) for h in heads]]).double().cpu()

    def on_validation(self, z: list[torch.Tensor], y: torch.Tensor) -> None:
        with torch.no_grad():
            self.val_loss = self._losses(self.model, z, y)
            self.train_loss = None
            if self.probe is not None:  # L^T at the same weights and mode as L^V
                was = self.model.training
                self.model.eval()
                self.train_loss = self._losses(self.model, self.model.encode(self.probe[0]), self.probe[1])
                self.model.train(was)

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        if self.val_loss is not None and self._n > 0 and (epoch + 1) % self.params.super_epochs == 0:
            train = self.train_loss if self.train_loss is not None else self._train_sum / self._n
            if not self.params.delta:
                self.weights = blend_weights(self.val_loss, train, floor=self.params.overfit_floor)
            elif self.prev is not None:
                self.weights = blend_weights(self.val_loss, train, self.prev[0], self.prev[1],
                                             floor=self.params.overfit_floor)
            self.prev = (self.val_loss.clone(), train)
        names = ["fused", *[str(m) for m in range(len(self.weights) - 1)]]
        return {f"coef/gblend/{n}": float(w) for n, w in zip(names, self.weights, strict=True)}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "weights": self.weights.clone(), "prev": self.prev, "probe": self.probe}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.weights, self.prev, self.probe = state["weights"].clone(), state["prev"], state["probe"]

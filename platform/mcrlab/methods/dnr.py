"""D&R: Diagnosing and Re-learning for balanced multimodal learning (Wei, Li & Hu, ECCV 2024). Reference:
github.com/GeWu-Lab/Diagnosing_Relearning_ECCV2024 @025085e, code/ours.py, code/script/ours.sh.

Diagnosis: the learning state of modality m is read from the separability of its uni-modal representation:
k-means (k = C) on min-max scaled latents, scored by cluster purity against the labels, on the training and
the validation split. The gap |purity_train - purity_val| grows as a modality is over-trained (memorising
rather than generalising). Re-learning: encoder m is softly re-initialised,
  theta_m <- w_m theta_m^init + (1 - w_m) theta_m,   w_m = tanh(lambda * |purity_train - purity_val|),
after every epoch e > 0 with e % reinit_every == 0, at most ``max_reinits`` times. Loss: fused CE only.

Reference defaults: lambda 3, re-initialisation every 20 epochs of 90, 3 times (``reinit_every = -1`` scales
that to the run: every round(2/9 of train.epochs) epochs), SGD momentum 0.9, weight decay 1e-4
(``defaults``; its StepLR(30, 0.1) is not set). Model selection (``select_after_relearn``, on): only epochs
after the first re-initialisation can be the best epoch. The reference selects over all epochs of a 90-epoch
run, where its best epoch falls after re-learning; on short budgets the best epoch otherwise comes before
the first re-initialisation and D&R reports joint training's numbers. Off = the reference's rule.

Choices: training latents are the ones produced by the epoch's own training batches (no extra pass), both
splits subsampled to at most `max_samples` rows; k-means uses scikit-learn with random_state=0, n_init=3. The
re-initialisation is applied at the start of the next epoch, so the epoch's validation metrics and the best-
epoch snapshot refer to the weights that were evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mcrlab.config import ConfigError, opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.models.net import MultimodalNet


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of samples whose label is their cluster's majority label: (N,), (N,) -> [0, 1]."""
    total = 0
    for c in np.unique(clusters):
        total += np.bincount(labels[clusters == c]).max()
    return float(total / len(labels))


def kmeans_purity(z: np.ndarray, y: np.ndarray, k: int, seed: int = 0) -> float:
    """Purity of k-means clusters of min-max scaled (to [-1, 1]) features: (N, d), (N,) -> [0, 1]."""
    from sklearn.cluster import KMeans

    lo, hi = z.min(0), z.max(0)
    scaled = 2 * (z - lo) / np.where(hi > lo, hi - lo, 1.0) - 1
    clusters = KMeans(n_clusters=k, random_state=seed, n_init=3).fit_predict(scaled)
    return purity(y, clusters)


def reinit_weight(gap: float, lam: float) -> float:
    """w = tanh(lambda * |gap|)."""
    return math.tanh(lam * abs(gap))


@dataclass
class DnRParams:
    move_lambda: float = opt(3.0, "lambda in w = tanh(lambda * |purity gap|) (reference 3)", ge=0.0)
    reinit_every: int = opt(-1, "diagnose and re-initialise every this many epochs (-1 = round(2/9 of "
                                "train.epochs), the reference's 20 of 90)", ge=-1)
    max_reinits: int = opt(3, "most re-initialisations per run (reference 3)", ge=0)
    max_samples: int = opt(2000, "latents per split used for k-means", ge=10)
    select_after_relearn: bool = opt(True, "only epochs after the first re-initialisation can be the best "
                                           "epoch (false = the reference: any epoch)")

    def __post_init__(self) -> None:
        if self.reinit_every == 0:
            raise ConfigError("reinit_every: must be -1 (scaled to the run) or >= 1")

    def every(self, epochs: int) -> int:
        return self.reinit_every if self.reinit_every > 0 else max(1, round(epochs * 20 / 90))


class DnR(Method):
    name = "dnr"
    Params = DnRParams
    defaults = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 1e-4}

    def __init__(self, params: DnRParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        self.init = [{k: v.detach().clone() for k, v in enc.state_dict().items()} for enc in model.encoders]
        self.pending: list[float] | None = None
        self.reinits = 0
        self.applied = 0  # re-initialisations applied so far
        self.epochs = 0
        self._train: list[list[torch.Tensor]] = [[] for _ in model.encoders]
        self._ytrain: list[torch.Tensor] = []
        self._rows = 0
        self._val: tuple[list[torch.Tensor], torch.Tensor] | None = None

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        if self.pending is not None:
            with torch.no_grad():
                for enc, init, w in zip(self.model.encoders, self.init, self.pending, strict=True):
                    for k, p in enc.named_parameters():
                        p.mul_(1 - w).add_(w * init[k].to(p.device, p.dtype))
            self.pending = None
            self.applied += 1
        self.epochs = ctx.epochs
        self._train = [[] for _ in self.model.encoders]
        self._ytrain, self._rows, self._val = [], 0, None
        return {}

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        loss = F.cross_entropy(out.fused, y)
        if self._rows < self.params.max_samples:
            for m, z in enumerate(out.z):
                self._train[m].append(z.detach().float().cpu())
            self._ytrain.append(y.cpu())
            self._rows += len(y)
        return StepResult(loss=loss, out=out, logs={"loss/fused": loss.item()})

    def on_validation(self, z: list[torch.Tensor], y: torch.Tensor) -> None:
        n = self.params.max_samples
        self._val = ([zm[:n].detach().float().cpu() for zm in z], y[:n].cpu())

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        p = self.params
        due = epoch > 0 and epoch % p.every(self.epochs) == 0 and self.reinits < p.max_reinits
        if not due or self._val is None or not self._ytrain:
            return {}
        n = p.max_samples
        ytr = torch.cat(self._ytrain)[:n].numpy()
        zval, yval = self._val
        logs, weights = {}, []
        for m in range(len(self._train)):
            ztr = torch.cat(self._train[m])[:n].numpy()
            pt = kmeans_purity(ztr, ytr, self.num_classes)
            pv = kmeans_purity(zval[m].numpy(), yval.numpy(), self.num_classes)
            weights.append(reinit_weight(pt - pv, p.move_lambda))
            logs.update({f"coef/dnr/purity_train/{m}": pt, f"coef/dnr/purity_val/{m}": pv,
                         f"coef/dnr/w/{m}": weights[-1]})
        self.pending = weights
        self.reinits += 1
        return logs

    def selectable(self, epoch: int) -> bool:
        p = self.params
        if not p.select_after_relearn or self.applied > 0:
            return True
        # no re-initialisation will take effect in this run: every epoch counts
        return p.max_reinits == 0 or p.every(self.epochs) >= self.epochs - 1

    def state_dict(self) -> dict:
        return {**super().state_dict(), "init": self.init, "pending": self.pending, "reinits": self.reinits,
                "applied": self.applied}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.init, self.pending, self.reinits = state["init"], state["pending"], int(state["reinits"])
        self.applied = int(state["applied"])

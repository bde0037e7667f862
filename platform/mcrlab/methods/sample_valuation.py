"""Sample-level modality valuation and re-sampling (Wei, Feng, Wang & Hu, CVPR 2024, "Enhancing multimodal
cooperation via sample-level modality valuation"). Reference: github.com/GeWu-Lab/Valuate-and-Enhance-
Multimodal-Cooperation @7ed12b0, code/sample_level.py (execute_modulation, train_epoch),
code/datasets/dataloader.py (AV_KS_Dataset_sample_level), code/models/models.py (exec_drop); cross-checked
with BalanceBenchmark @4c1482f, balancemm/trainer/Sample_trainer.py, balancemm/evaluation/modalitys.py
(Calculate_Shapley_Sample), balancemm/datasets/__init__.py (create_dataset_sample_level).

Valuation: each sample's Shapley value of every modality, with the coalition S's prediction made by the fused
head on the latents with the modalities outside S zeroed (the reference's exec_drop; eval mode, no gradient):
  phi_m = sum_{S not containing m} |S|! (M - |S| - 1)! / M! [v(S + m) - v(S)],  v(empty) = 0,
  v(S) = |S| * 1[argmax g(z_S) = y]   (``value=size``: the reference scores the full prediction 2, one
  modality 1; for two modalities phi_a = (v_a + v_av - v_v) / 2 as its contrib_a).
Re-sampling: a modality with a low contribution on a sample gets extra copies of that sample in which only it
is kept (the other latents zeroed): 1 copy for 0.4 < phi < 1, 2 for -0.1 < phi < 0.4, 3 for phi < -0.1, none
otherwise; the originals stay. The loss is the fused CE over the originals and the copies. The first
``warmup`` epochs train on the originals only (the reference: 5 of 60; ``warmup`` = -1 scales that to
round(epochs / 12)). Reference optimiser: Adam with weight decay 1e-4 (``defaults``).

``value=correct`` scores every correct coalition 1 (BalanceBenchmark's form; it also keeps the first batch's
coalition results for all later batches, a bug not reproduced). For M > 2 the copies keep one modality and
zero all others, as BalanceBenchmark.
Deviation, documented: the reference values every training sample once per epoch (an evaluation pass after
the epoch) and trains the next epoch on the enlarged data set; here each training batch is valued with the
current model (eval mode) and enlarged by its own copies, which share the batch's encoder pass (the hooks see
batches, not sample ids). An epoch thus sees each copy once, as the reference, in as many steps as before.
Data-parallel: each rank values and enlarges its own shard of the batch; the loss is the mean over its rows.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext, StepResult

Coalition = tuple[int, ...]


def coalitions(M: int) -> list[Coalition]:
    """Every non-empty subset of range(M), as sorted tuples."""
    return [c for r in range(1, M + 1) for c in itertools.combinations(range(M), r)]


def coalition_logits(fusion: nn.Module, z: list[torch.Tensor], keep: Coalition) -> torch.Tensor:
    """g(z_S): the fused head on the latents with the modalities outside ``keep`` zeroed, (B, C)."""
    return fusion([zm if m in keep else torch.zeros_like(zm) for m, zm in enumerate(z)])


def coalition_values(fusion: nn.Module, z: list[torch.Tensor], y: torch.Tensor, value: str = "size"
                     ) -> dict[Coalition, torch.Tensor]:
    """v(S) per sample for every non-empty S: |S| * correct (``size``) or correct (``correct``), (B,) float64."""
    out = {}
    for s in coalitions(len(z)):
        correct = (coalition_logits(fusion, z, s).argmax(1) == y).double()
        out[s] = correct * len(s) if value == "size" else correct
    return out


def shapley_values(values: dict[Coalition, torch.Tensor], M: int) -> torch.Tensor:
    """phi (M, B) from per-sample coalition values (v(empty) = 0), float64."""
    some = next(iter(values.values()))
    zero = torch.zeros_like(some, dtype=torch.float64)

    def v(s: Coalition) -> torch.Tensor:
        return values[s].double() if s else zero

    phi = []
    for m in range(M):
        others = [j for j in range(M) if j != m]
        acc = zero.clone()
        for r in range(M):
            w = math.factorial(r) * math.factorial(M - r - 1) / math.factorial(M)
            for s in itertools.combinations(others, r):
                acc += w * (v(tuple(sorted((*s, m)))) - v(s))
        phi.append(acc)
    return torch.stack(phi)


def resample_copies(phi: torch.Tensor) -> torch.Tensor:
    """The reference's number of extra copies per contribution: 1 for 0.4 < phi < 1, 2 for -0.1 < phi < 0.4,
    3 for phi < -0.1, else 0 (boundaries excluded, as its strict comparisons). (M, B) -> (M, B) long."""
    copies = torch.zeros_like(phi, dtype=torch.long)
    copies[(phi > 0.4) & (phi < 1)] = 1
    copies[(phi > -0.1) & (phi < 0.4)] = 2
    copies[phi < -0.1] = 3
    return copies


def enlarged_batch(fusion: nn.Module, z: list[torch.Tensor], y: torch.Tensor, copies: torch.Tensor
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Logits and labels of every copy: modality m's copies of sample b keep only z_m[b]. -> ([(n_m, C)], y)."""
    logits, labels = [], []
    for m in range(len(z)):
        idx = torch.repeat_interleave(torch.arange(len(y), device=y.device), copies[m].to(y.device))
        if idx.numel():
            logits.append(coalition_logits(fusion, [zj[idx] for zj in z], (m,)))
            labels.append(y[idx])
    return logits, (torch.cat(labels) if labels else y[:0])


@dataclass
class SampleValuationParams:
    warmup: int = opt(-1, "epochs trained on the original samples only (-1 = round(epochs / 12), the "
                          "reference's 5 of 60)", ge=-1)
    value: str = opt("size", "coalition value: size (|S| if its prediction is right, the reference) or correct "
                             "(1 if right, BalanceBenchmark)", choices=("size", "correct"))

    def warmup_epochs(self, epochs: int) -> int:
        return self.warmup if self.warmup >= 0 else round(epochs / 12)


class SampleValuation(Method):
    name = "sample_valuation"
    Params = SampleValuationParams
    defaults = {"train.weight_decay": 1e-4}  # code/sample_level.py: Adam, weight_decay 1e-4

    def __init__(self, params: SampleValuationParams, model, num_classes: int):
        super().__init__(params, model, num_classes)
        M = model.num_modalities
        self._phi_sum, self._copies_sum, self._rows = torch.zeros(M, dtype=torch.float64), torch.zeros(M), 0
        self.last_copies: torch.Tensor | None = None  # (M, B) of the last step, for tests and logs

    def on_epoch_start(self, epoch: int, ctx: StepContext) -> dict[str, float]:
        self._phi_sum.zero_()
        self._copies_sum.zero_()
        self._rows = 0
        return {}

    def value(self, xs: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """phi (M, B) with the current model in eval mode (the reference values in an evaluation pass)."""
        model = self.model
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                z = model.encode(xs)
                return shapley_values(coalition_values(model.fusion, z, y, self.params.value), len(z))
        finally:
            model.train(was)

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        phi = self.value(xs, y)
        out = model(xs)
        resample = ctx.epoch >= self.params.warmup_epochs(ctx.epochs)
        copies = resample_copies(phi) if resample else torch.zeros_like(phi, dtype=torch.long)
        self.last_copies = copies
        self._phi_sum += phi.sum(1).cpu()
        self._copies_sum += copies.sum(1).float().cpu()
        self._rows += len(y)
        extra, extra_y = enlarged_batch(model.fusion, out.z, y, copies)
        loss = F.cross_entropy(torch.cat([out.fused, *extra]), torch.cat([y, extra_y]))
        logs = {"loss/fused": F.cross_entropy(out.fused, y).item(), "coef/sample/rows": float(len(y) + len(extra_y))}
        return StepResult(loss=loss, out=out, logs=logs)

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        n = max(self._rows, 1)
        logs = {f"coef/sample/shapley/{m}": float(s) / n for m, s in enumerate(self._phi_sum)}
        logs.update({f"coef/sample/copies/{m}": float(c) / n for m, c in enumerate(self._copies_sum)})
        return logs

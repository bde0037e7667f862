"""LFM: "Facilitating multimodal classification via dynamically learning modality gap" (Yang Yang et al.,
NeurIPS 2024; BalanceBenchmark's "LFM"). Reference: github.com/njustkmg/NeurIPS24-LFM @ad44fa0,
Crema_epoch_learnable.py (the learnable weights), Crema_epoch.py (their fitted curve), data/crema.json;
cross-checked with BalanceBenchmark @4c1482f, balancemm/trainer/LFM_trainer.py.

The supervised loss is mixed with an unsupervised alignment of the modalities' predictions, with a weight that
moves over training. With late fusion, o_m = W_m z_m + b/M are the modalities' own logits and their mean is the fused
prediction (the reference's 0.5 o_a + 0.5 o_v, i.e. g(z) / M), so per step
  L = 2 (a_cls CE(g(z) / M, y) + a_align A),
  A = mean over pairs (m, n) of 0.5 [KL(r || p_m) + KL(r || p_n)] / B,  p = softmax(o), r = (p_m + p_n) / 2
(the reference's ``Alignment``: torch's kl_div(log p, r) is KL(r || p), so this is the reference's form of a
Jensen-Shannon term; one pair for two modalities, as the reference, the mean over pairs as BalanceBenchmark).

How a_align moves, ``strategy``:
- ``fitted`` (default: the run the reference's README gives, Crema_epoch.py): a_cls(t) is the authors'
  closed-form curve, a 5th-degree polynomial fitted to their learnt weights over CREMA-D's 200 epochs (0.20 at
  the start, ~0.54 half-way, ~0.9 at the end), evaluated at t = epoch * 200 / train.epochs; a_align = 1 - a_cls.
- ``learnable`` (Crema_epoch_learnable.py, and BalanceBenchmark's LFM): once per epoch, before its first step,
  on a fixed batch of ``val_rows`` rows (in train mode, as the reference), L_t = a_cls CE + a_align A and
    h = mean of the entries of (Hessian(L_t) grad(CE)) belonging to the model's first parameter,
    a_align <- clip(a_align - lr_alpha h, 0.05, 0.95),  a_cls = 1 - a_align,
  lr_alpha halved every 20 epochs; a_align starts at 0.95 (BalanceBenchmark: 0.05), lr_alpha 1e-4, 8 rows
  (half of its 16 held-out rows). On this platform's small models |h| is ~1e-6..1e-5, so a_align stays
  at its start value: the learnable rule is, in effect, a constant mix.
Both: SGD with momentum 0.9 and weight decay 1e-4 (``defaults``, data/crema.json).

Deviation, documented: the reference holds its 16 rows out of the training set; here the rows are the first
``val_rows`` of the first training batch, kept for the run (the hooks give a method no held-out inputs).
Data-parallel: h is averaged over the ranks, so every rank keeps the same weights.
Needs the per-modality logits of late fusion (``fusions``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.methods.modulation import modality_logits

# Crema_epoch.py, getAlpha_Learnable_Fitted: a_cls(t) = sum_i c_i t^i over t = 0..199 (a_align = 1 - a_cls)
FITTED_CLS = (2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11)
FITTED_EPOCHS = 200
ALIGN_BOUNDS = (0.05, 0.95)


def alignment(logits: list[torch.Tensor]) -> torch.Tensor:
    """The reference's alignment, mean over modality pairs of 0.5 [KL(r || p_m) + KL(r || p_n)] / B:
    M tensors (B, C) -> scalar."""
    terms = []
    for a, b in itertools.combinations(logits, 2):
        p, q = F.softmax(a, -1), F.softmax(b, -1)
        r = 0.5 * (p + q)
        terms.append(0.5 * (F.kl_div(p.log(), r, reduction="batchmean") + F.kl_div(q.log(), r, reduction="batchmean")))
    return torch.stack(terms).mean()


def lfm_losses(out, bias: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE of the mean of the modalities' logits, alignment A) for a late-fusion forward pass."""
    logits = modality_logits(out, bias)
    return F.cross_entropy(out.fused / len(logits), y), alignment(logits)


def hessian_probe(loss_total: torch.Tensor, loss_cls: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    """mean of (H g)[params[0]] with H the Hessian of ``loss_total`` and g = grad(loss_cls) over ``params``:
    the reference's hyper-gradient of a_align. Scalar (0 where the first parameter does not enter)."""
    g_total = torch.autograd.grad(loss_total, params, create_graph=True, allow_unused=True)
    g_cls = torch.autograd.grad(loss_cls, params, retain_graph=True, allow_unused=True)
    # d/d theta_0 of <grad L_total, g> with g held fixed is row block 0 of H g (H is symmetric)
    inner = sum((gt * gc.detach()).sum() for gt, gc in zip(g_total, g_cls, strict=True)
                if gt is not None and gc is not None)
    if not isinstance(inner, torch.Tensor) or not inner.requires_grad:
        return params[0].new_zeros(())
    (h0,) = torch.autograd.grad(inner, [params[0]], allow_unused=True)
    return params[0].new_zeros(()) if h0 is None else h0.mean()


def alpha_lr(lr0: float, epoch: int, halve_every: int = 20) -> float:
    """lr_alpha at ``epoch``: halved at every multiple of ``halve_every`` after 0 (the reference's schedule)."""
    return lr0 / 2 ** (epoch // halve_every)


def update_align_weight(a_align: float, h: float, lr: float) -> float:
    """a_align - lr h, clipped to [0.05, 0.95]."""
    return min(ALIGN_BOUNDS[1], max(ALIGN_BOUNDS[0], a_align - lr * h))


def fitted_cls_weight(epoch: int, epochs: int) -> float:
    """The reference's fitted a_cls at ``epoch`` of ``epochs`` (its 200-epoch curve, time rescaled)."""
    t = epoch * FITTED_EPOCHS / epochs
    return sum(c * t ** i for i, c in enumerate(FITTED_CLS))


@dataclass
class LFMParams:
    strategy: str = opt("fitted", "how the alignment weight moves: fitted (the reference's closed-form curve, "
                                  "its README's run) or learnable (its bi-level update, BalanceBenchmark's)",
                        choices=("fitted", "learnable"))
    align_init: float = opt(0.95, "initial alignment weight a_align of strategy=learnable (reference 0.95; BalanceBenchmark 0.05)",
                            ge=0.05, le=0.95)
    lr_alpha: float = opt(1e-4, "step size of the a_align update, halved every 20 epochs (reference 1e-4)",
                          ge=0.0)
    val_rows: int = opt(8, "rows (the first of the first training batch) the learnable a_align update is "
                           "measured on (reference: 8 of 16 held-out rows)", ge=1)


class LFM(Method):
    name = "lfm"
    Params = LFMParams
    defaults = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 1e-4}  # data/crema.json
    fusions = ("late",)
    fusion_reason = "it aligns the modalities' own logits W_m z_m + b/M, whose mean is the fused prediction"

    def __init__(self, params: LFMParams, model, num_classes: int):
        super().__init__(params, model, num_classes)
        self.a_align = float(params.align_init)
        self.probe: tuple[list[torch.Tensor], torch.Tensor] | None = None
        self.last_h = 0.0

    def _trainable(self) -> list[nn.Parameter]:
        """The parameters the loss reaches, in model order (encoders, then the fusion head)."""
        mods = [*self.model.encoders, self.model.fusion]
        return [p for mod in mods for p in mod.parameters() if p.requires_grad]

    def _update_weights(self, epoch: int, epochs: int) -> None:
        p = self.params
        if p.strategy == "fitted":
            self.a_align = 1.0 - fitted_cls_weight(epoch, epochs)
            return
        assert self.probe is not None
        xs, y = self.probe
        model = self.model  # the module itself: the update differentiates twice (not through torch.compile)
        # full precision: a second derivative in bf16 (train.amp on CUDA) would be mostly rounding
        with torch.enable_grad(), torch.autocast(device_type=y.device.type, enabled=False):
            out = model(xs)
            bias = model.fusion.bias
            assert isinstance(bias, torch.Tensor)  # late fusion (``fusions``)
            ce, align = lfm_losses(out, bias, y)
            h = hessian_probe((1 - self.a_align) * ce + self.a_align * align, ce, self._trainable()).detach()
        if dist.is_initialized():
            dist.all_reduce(h)
            h = h / dist.get_world_size()
        self.last_h = float(h)
        self.a_align = update_align_weight(self.a_align, self.last_h, alpha_lr(p.lr_alpha, epoch))

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        if ctx.step == 0:  # once per epoch, before its first step (the reference updates before each epoch)
            if self.probe is None and self.params.strategy == "learnable":
                n = self.params.val_rows
                self.probe = ([x[:n].detach().clone() for x in xs], y[:n].detach().clone())
            self._update_weights(ctx.epoch, ctx.epochs)
        out = model(xs)
        ce, align = lfm_losses(out, model.fusion.bias, y)
        loss = 2 * ((1 - self.a_align) * ce + self.a_align * align)
        logs = {"loss/fused": F.cross_entropy(out.fused, y).item(), "loss/lfm/align": align.item()}
        return StepResult(loss=loss, out=out, logs=logs)

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        return {"coef/lfm/align": self.a_align, "coef/lfm/cls": 1 - self.a_align, "coef/lfm/hypergrad": self.last_h}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "a_align": self.a_align, "probe": self.probe, "last_h": self.last_h}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.a_align, self.probe, self.last_h = float(state["a_align"]), state["probe"], float(state["last_h"])

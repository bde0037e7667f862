"""UMT: Uni-Modal Teachers (Du, Li, Teng, Wang, Zhao et al., "Improving multi-modal learning with uni-modal
teachers", 2021; "On uni-modal feature learning in supervised multi-modal learning", ICML 2023), as
implemented by BalanceBenchmark @4c1482f, balancemm/trainer/UMT_trainer.py (teachers: the checkpoints of
balancemm/trainer/unimodal_trainer.py; settings: configs/trainer_config.yaml, UMT; configs/global_config.yaml).
No code by the authors was found; BalanceBenchmark is the reference.

Each modality first gets a teacher: its encoder and a linear head trained alone with cross-entropy. The
multimodal student, trained from its own initialisation, then fits the fused prediction while each of its
encoders regresses the frozen teacher's features of the same input:

  L = CE(g(z), y) + scaling * sum_m MSE(f_m(x_m), t_m(x_m)),   MSE = mean over batch and features,

with no gradient into the teachers. The teachers here are the platform's unimodal pre-training
(``mcrlab.engine.pretrain``, the one behind ``model.init=unimodal``: encoder m + head m trained alone, with this
run's train.* settings and ``model.init_epochs`` (0 = train.epochs), cached and shared with model.init); the
student starts as ``model.init`` says (scratch by default, as the reference's).

Reference defaults: scaling 10, distillation in every epoch (its window 0..80 exceeds its 30 epochs), AdamW with
weight decay 0.01 (global_config.yaml, ``defaults``; its unimodal teachers are trained with the same settings).
The reference runs its teachers in training mode (BatchNorm normalises with batch statistics and updates its
running averages; dropout is on): ``teacher_eval`` (off) runs them in eval mode instead. Any fusion head.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mcrlab.config import opt
from mcrlab.methods.base import Method, StepContext, StepResult


def umt_loss(fused: torch.Tensor, y: torch.Tensor, z: list[torch.Tensor], teacher_z: list[torch.Tensor],
             scaling: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """CE(fused, y) + scaling * sum_m mean((z_m - t_m)^2): (B, C), (B,), M tensors (B, d_m) twice ->
    (scalar, the M per-modality MSEs)."""
    mse = [F.mse_loss(zm.float(), tm.float().detach()) for zm, tm in zip(z, teacher_z, strict=True)]
    return F.cross_entropy(fused, y) + scaling * torch.stack(mse).sum(), mse


@dataclass
class UMTParams:
    scaling: float = opt(10.0, "weight of the feature distillation from the unimodal teachers (reference 10)",
                         ge=0.0)
    teacher_eval: bool = opt(False, "run the teachers in eval mode (BatchNorm running statistics, no dropout); "
                                    "the reference runs them in training mode")


class UMT(Method):
    name = "umt"
    Params = UMTParams
    defaults = {"train.optimizer": "adamw", "train.weight_decay": 0.01}  # BalanceBenchmark global_config.yaml

    def __init__(self, params: UMTParams, model, num_classes: int):
        super().__init__(params, model, num_classes)
        self.teachers: torch.nn.ModuleList | None = None

    def prepare(self, cfg: Any, dataset: Any, device: torch.device,
                unimodal_state: Callable[[], dict] | None = None) -> None:
        """The teachers: a copy of the student's encoders holding the unimodal pre-training's weights."""
        if unimodal_state is None:
            raise RuntimeError("umt: no unimodal teachers; mcrlab.engine.fit.fit passes the pre-training "
                               "(Method.prepare's unimodal_state)")
        state = unimodal_state()
        teachers = copy.deepcopy(self.model.encoders)
        teachers.load_state_dict({k[len("encoders."):]: v for k, v in state.items() if k.startswith("encoders.")})
        for p in teachers.parameters():
            p.requires_grad_(False)
        self.teachers = teachers.to(device)

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        if self.teachers is None:
            raise RuntimeError("umt: no unimodal teachers; mcrlab.engine.fit.fit builds them (Method.prepare)")
        out = model(xs)
        self.teachers.train(not self.params.teacher_eval)
        with torch.no_grad():
            teacher_z = [t(x) for t, x in zip(self.teachers, xs, strict=True)]
        loss, mse = umt_loss(out.fused, y, out.z, teacher_z, self.params.scaling)
        logs = {"loss/fused": F.cross_entropy(out.fused, y).item(),
                **{f"coef/umt/mse/{m}": v.item() for m, v in enumerate(mse)}}
        return StepResult(loss=loss, out=out, logs=logs)

    def state_dict(self) -> dict:  # the teachers' BatchNorm statistics move in training mode
        state = super().state_dict()
        state["teachers"] = self.teachers.state_dict() if self.teachers is not None else None
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.teachers is not None and state.get("teachers") is not None:
            self.teachers.load_state_dict(state["teachers"])

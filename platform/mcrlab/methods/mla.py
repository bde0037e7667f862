"""MLA: Multimodal representation learning by Alternating unimodal Adaptation (Zhang, Yoon, Bansal & Yao,
CVPR 2024). Reference: github.com/Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation @ab6c184,
main.py (train_epoch with --gs_flag, valid with --dynamic), utils/utils.py (GSPlugin).

One head H (Linear d -> C) is shared by all modalities. Every batch updates every modality in turn, from one
forward pass of the encoders: for m = 0..M-1, L_m = CE(H(z_m), y), backward, modify H's weight gradient, one
optimiser step (so encoder m and H learn from modality m; the next modality sees the updated H). Gradient
modification (the reference's GSPlugin, OWM-style): one projector P (d, d), shared by all modalities and
updated before each modality step from that modality's mean batch feature r (d,):
  k = P r,  P <- P - k k^T / (alpha_t + r^T k),  P <- P / ||P||_F,  G_H <- G_H P^T,
with alpha_t = owm_alpha * 0.1 ** (step / steps_per_epoch + 1) (reference: owm_alpha = 1.0); the very first
modality step of training neither updates nor applies P (as the reference). Prediction (the reference's dynamic fusion): per evaluated batch, modality
m's entropy e_m = -sum_{i,c} q_m log q_m with q_m = softmax of H(z_m) over the batch axis (as the reference
computes it), weights w_m = softmax_m(-e_m), logits = sum_m w_m H(z_m).

Reference defaults: SGD momentum 0.9, weight decay 1e-4 (``defaults``). Options: ``fusion`` ``entropy``
(reference) / ``entropy_sample`` (per-sample entropy over classes, the paper's description) / ``mean``
(the reference without --dynamic). ``projection`` (default on, the paper's method): the released GSPlugin
only projects a parameter named "module.weight", a name the shared Linear head's weight does not have, so the
released code runs without projection; ``projection=false`` reproduces that. The model's own fusion and
unimodal heads are not trained by MLA (its head accuracy and D_m describe untrained heads; the linear probes
are the meaningful diagnostic). Data-parallel: the inner modality steps are all-reduced, gradient clipping
applies to the last one only. All encoders must share one latent width (model.latent does that).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mcrlab.config import ConfigError, opt
from mcrlab.methods.base import Method, StepContext, StepResult
from mcrlab.models.net import ForwardOutput, MultimodalNet


def owm_update(P: torch.Tensor, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """The reference's projector update with one mean feature r, then Frobenius normalisation: (d, d), (d,)."""
    k = P @ r
    P = P - torch.outer(k, k) / (alpha + r @ k)
    return P / torch.linalg.matrix_norm(P)


def owm_alpha(step: int, steps_per_epoch: int, scale: float = 1.0) -> float:
    """alpha_t = scale * 0.1 ** (step / steps_per_epoch + 1) (the reference's schedule, scale 1.0)."""
    return scale * 0.1 ** (step / steps_per_epoch + 1)


def batch_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The reference's entropy of one modality on a batch: softmax over the batch axis, summed: (B, C) -> ()."""
    return -(F.softmax(logits, 0) * F.log_softmax(logits, 0)).sum()


def entropy_weights(logits: list[torch.Tensor], per_sample: bool = False) -> torch.Tensor:
    """w = softmax over modalities of minus the entropy: M tensors (B, C) -> (M, 1) (batch level, reference)
    or (M, B) (per sample, over classes)."""
    if per_sample:
        ent = torch.stack([-(F.softmax(lg, 1) * F.log_softmax(lg, 1)).sum(1) for lg in logits])
    else:
        ent = torch.stack([batch_entropy(lg) for lg in logits])[:, None]
    return F.softmax(-ent, dim=0)


def _allreduce(params: list[nn.Parameter]) -> None:
    world = dist.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


@dataclass
class MLAParams:
    owm_alpha: float = opt(1.0, "scale of the projector regulariser alpha_t = owm_alpha * 0.1 ** (step / steps "
                                "+ 1) (reference 1.0)", gt=0.0)
    fusion: str = opt("entropy", "test-time fusion of the shared head's outputs: entropy (reference, batch "
                                 "level), entropy_sample, mean", choices=("entropy", "entropy_sample", "mean"))
    projection: bool = opt(True, "project the shared head's weight gradient (the paper; the released code's "
                                 "name check skips it)")


class MLA(Method):
    name = "mla"
    Params = MLAParams
    defaults = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 1e-4}

    def __init__(self, params: MLAParams, model: MultimodalNet, num_classes: int):
        super().__init__(params, model, num_classes)
        dims = set(model.latent_dims)
        if len(dims) != 1:
            raise ConfigError(f"model.latent: mla shares one head, so all latents need one width, got {dims}")
        d = dims.pop()
        self.head = nn.Linear(d, num_classes)
        self.P = torch.eye(d, dtype=torch.float64)
        self.updates = 0  # modality steps so far (the reference's exp_count)

    def extra_modules(self) -> nn.Module:
        return self.head

    def _modify(self, r: torch.Tensor, ctx: StepContext) -> None:
        """Update P with modality feature r, then project H's weight gradient (skipped on the first update)."""
        if self.updates > 0 and self.params.projection:
            self.P = owm_update(self.P, r, owm_alpha(ctx.step, ctx.steps_per_epoch, self.params.owm_alpha))
            g = self.head.weight.grad
            if g is not None:
                self.head.weight.grad = (g.double() @ self.P.T.to(g.device)).to(g.dtype)
        self.updates += 1

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        M, opt_ = model.num_modalities, ctx.optimizer
        if opt_ is None:
            raise RuntimeError("mla steps the optimiser once per modality: StepContext.optimizer is required")
        losses = []
        for m in range(M):
            loss = F.cross_entropy(self.head(out.z[m]), y)
            loss.backward()
            self._modify(out.z[m].detach().double().mean(0).cpu(), ctx)
            losses.append(loss.detach())
            if m < M - 1:  # the loop steps after the last modality
                if dist.is_initialized():
                    _allreduce([p for g in opt_.param_groups for p in g["params"]])
                opt_.step()
                opt_.zero_grad(set_to_none=True)
        logs = {f"loss/mla/{m}": float(v) for m, v in enumerate(losses)}
        return StepResult(loss=torch.stack(losses).mean(), out=out, logs=logs, backward_done=True)

    def predict(self, out: ForwardOutput) -> torch.Tensor:
        logits = [self.head(z) for z in out.z]
        if self.params.fusion == "mean":
            return torch.stack(logits).mean(0)
        w = entropy_weights(logits, per_sample=self.params.fusion == "entropy_sample")
        return (w[..., None] * torch.stack(logits)).sum(0)

    def on_epoch_end(self, epoch: int, diagnostics: dict[str, float]) -> dict[str, float]:
        # how far the (normalised) projector is from the identity direction: 1 - trace(P) / (sqrt(d) ||P||_F)
        d = self.P.shape[0]
        return {"coef/mla/projector": 1 - float(self.P.trace()) / (d ** 0.5 * float(torch.linalg.matrix_norm(self.P)))}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "P": self.P.clone(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.P, self.updates = state["P"].clone(), int(state["updates"])

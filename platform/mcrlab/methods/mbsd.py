"""MBSD: modality-balanced self-distillation, as implemented by BalanceBenchmark @4c1482f,
balancemm/trainer/MBSD_trainer.py (settings: configs/trainer_config.yaml, MBSD; configs/global_config.yaml).
No code by the authors was found; BalanceBenchmark is the reference.

With l_m the logits of modality m (late fusion: W_m z_m + b/M) and p_m = softmax(l_m), for a pair of
modalities (a, b) and each sample i, q_a = p_a[y_i], q_b = p_b[y_i]:

  w_i  = |q_a - q_b| if modality a or b predicts y_i (argmax), else 0   (the gap between the two; 0 where
                                                                          neither is right)
  kl_i = q_w (log q_w - q_s),   q_s = max(q_a, q_b), q_w = min(q_a, q_b)
  rs_i = (1/C) sum_c (l_a - l_b)_c^2   (two modalities: logits;  three or more: probabilities p_a - p_b)
  L    = CE(g(z), y) + sum_m CE(l_m, y) + (1/B) w . rs + (1/B) w . kl,

the last two averaged over the pairs of modalities when there are more than two. So on a sample one modality
gets right, the two modalities' predictions are pulled together with a weight as large as their gap: the
weaker one is distilled towards the stronger (and the stronger one towards it).

Written as the reference computes it, which has two quirks kept here: kl_i is ``F.kl_div(q_s, q_w)`` with a
probability where a log-probability is expected, i.e. q_w (log q_w - q_s), not KL; and every term, the weights
w and the "teacher" q_s included, carries gradients (the reference detaches nothing). The reference's
two-modality branch takes rs on logits, its three-modality branch on probabilities; both are kept (M > 3:
the three-modality form over all pairs). Its modulation window (0..80 of 30 epochs) covers every epoch.
Defaults: AdamW, weight decay 0.01 (global_config.yaml). With ``model.fusion=mlp`` the unimodal heads h_m(z_m)
stand in for l_m; they are trained by the method's own CE terms.
"""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F

from mcrlab.methods.base import Method, NoParams, StepContext, StepResult
from mcrlab.methods.modulation import modality_logits


def mbsd_pair_terms(la: torch.Tensor, lb: torch.Tensor, y: torch.Tensor, rs_on_probs: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample weight w, "kl" and rs of one pair: logits (B, C) twice, labels (B,) -> three (B,) tensors."""
    pa, pb = F.softmax(la, 1), F.softmax(lb, 1)
    qa, qb = pa.gather(1, y[:, None])[:, 0], pb.gather(1, y[:, None])[:, 0]
    right = (pa.argmax(1) == y) | (pb.argmax(1) == y)
    q_s, q_w = torch.maximum(qa, qb), torch.minimum(qa, qb)
    w = torch.where(right, q_s - q_w, torch.zeros_like(qa))
    kl = torch.special.xlogy(q_w, q_w) - q_w * q_s  # F.kl_div(q_s, q_w, reduction="none")
    diff = pa - pb if rs_on_probs else la - lb
    rs = (diff ** 2).sum(1) / la.shape[1]
    return w, kl, rs


def mbsd_regulariser(logits: list[torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w . kl / B, w . rs / B), averaged over the pairs of modalities: M tensors (B, C), (B,) -> two scalars."""
    M, B = len(logits), len(y)
    kls, rss = [], []
    for a, b in combinations(range(M), 2):
        w, kl, rs = mbsd_pair_terms(logits[a], logits[b], y, rs_on_probs=M > 2)
        kls.append((w * kl).sum() / B)
        rss.append((w * rs).sum() / B)
    return torch.stack(kls).mean(), torch.stack(rss).mean()


class MBSD(Method):
    name = "mbsd"
    Params = NoParams  # the reference's terms are unweighted
    defaults = {"train.optimizer": "adamw", "train.weight_decay": 0.01}  # BalanceBenchmark global_config.yaml

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        logits = modality_logits(out, getattr(model.fusion, "bias", None))
        ce = F.cross_entropy(out.fused, y)
        uni = sum(F.cross_entropy(lg, y) for lg in logits)
        kl, rs = mbsd_regulariser(logits, y)
        loss = ce + uni + rs + kl
        logs = {"loss/fused": ce.item(), "coef/mbsd/kl": kl.item(), "coef/mbsd/rs": rs.item()}
        return StepResult(loss=loss, out=out, logs=logs)

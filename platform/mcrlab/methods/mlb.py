"""MLB: Multi-Loss Balanced gradient modulation (Kontras, Chatzichristos, Blaschko & De Vos, BMVC 2024,
"Improving multimodal learning with multi-loss gradient modulation"). Reference: github.com/kkontras/MLB
@357b5ce, agents/general_agent/helpers/Bias_Infusion.py (Bias_Infusion_MLB), configs/CREMA_D/res/MLB.json.

Loss: multi-loss, CE(g(z), y) + w_uni * sum_m CE(h_m(z_m), y). The unimodal heads estimate each modality's
performance, s_m = mean_i softmax(h_m)_i[y_i], and
  r_m = mean_{j != m} s_j / s_m,   beta_m = beta_max if r_m > 1 else 2,
  k_m = 1 + (beta_m - 1) * tanh(alpha * (r_m - 1)),
so a lagging modality (r_m > 1) is accelerated up to beta_max and a leading one decelerated towards 0; as the
modalities equalise, r_m -> 1 and k_m -> 1 (modulation phases itself out). As the reference, k_m scales the
gradients of encoder m and of the modality's fusion weights W_m (late fusion; the fusion bias is shared and
not scaled; an mlp fusion head has no per-modality weights, so only the encoder is scaled there).

Reference defaults: alpha 0.8 (its CREMA-D and AVE configs), beta_max 2 (its default tanh_mode, where both
branches use beta = 2), Adam with weight decay 1e-4 (``defaults``: the weight decay; Adam is the platform's
default too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcrlab.config import opt
from mcrlab.methods.base import StepContext, StepResult
from mcrlab.methods.modulation import (
    CoefficientMethod,
    confidence_scores,
    encoder_params,
    ratio_to_others,
    scale_grads,
)
from mcrlab.methods.simple import heads_loss
from mcrlab.models.fusion import LateFusion


def mlb_coefficients(scores: torch.Tensor, alpha: float, beta_max: float) -> torch.Tensor:
    """k_m = 1 + (beta_m - 1) tanh(alpha (r_m - 1)) with r_m = mean_{j!=m} s_j / s_m: (M,) -> (M,)."""
    r = 1.0 / ratio_to_others(scores).clamp_min(1e-12)
    beta = torch.where(r > 1, torch.full_like(r, beta_max), torch.full_like(r, 2.0))
    return 1 + (beta - 1) * torch.tanh(alpha * (r - 1))


@dataclass
class MLBParams:
    alpha: float = opt(0.8, "steepness alpha of k = 1 + (beta - 1) tanh(alpha (r - 1)) (reference 0.8)", ge=0.0)
    beta_max: float = opt(2.0, "largest acceleration factor of a lagging modality (reference 2)", ge=1.0)
    w_uni: float = opt(1.0, "weight of the unimodal heads' CE losses", ge=0.0)


class MLB(CoefficientMethod):
    name = "mlb"
    tag = "mlb"
    Params = MLBParams
    defaults = {"train.weight_decay": 1e-4}

    def training_step(self, model, xs, y, ctx: StepContext) -> StepResult:
        out = model(xs)
        fused = F.cross_entropy(out.fused, y)
        uni, logs = heads_loss(out.heads, y)
        coef = mlb_coefficients(confidence_scores(out.heads, y), self.params.alpha, self.params.beta_max)
        logs.update({"loss/fused": fused.item(), **self.record(coef)})
        return StepResult(loss=fused + self.params.w_uni * uni, out=out, logs=logs)

    def after_backward(self, model, ctx: StepContext) -> dict[str, float]:
        late = isinstance(model.fusion, LateFusion)
        for m in range(model.num_modalities):
            fusion_w = list(model.fusion.proj[m].parameters()) if late else []
            scale_grads(encoder_params(model, m) + fusion_w, float(self.coef[m]))
        return {}

"""Per-sample divergences between the clean prediction p and a perturbed prediction q, from logits.

Inputs are logits of broadcastable shapes (..., C); outputs have the broadcast shape without C.
Natural-log units. Half-precision logits (bf16 autocast) are upcast to float32 first, because the
differences of log-probabilities these sums are made of vanish in bf16.

- ``jsd`` (default): Jensen-Shannon divergence, bounded by ln 2 and symmetric.
- ``kl``:  KL(p || q) = sum_c p_c (log p_c - log q_c).
- ``mse``: mean over classes of (logit_p - logit_q)^2, the regression form.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["DIVERGENCES", "divergence"]

DIVERGENCES = ("jsd", "kl", "mse")
_LN2 = math.log(2.0)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, kind: str = "jsd") -> torch.Tensor:
    """div(p, q) per sample: (..., C), (..., C) -> (...) (broadcasting, e.g. (B, C) with (S, B, C))."""
    p_logits, q_logits = _upcast(p_logits), _upcast(q_logits)
    if kind == "mse":
        return (p_logits - q_logits).pow(2).mean(-1)
    logp = F.log_softmax(p_logits, dim=-1)
    logq = F.log_softmax(q_logits, dim=-1)
    if kind == "kl":
        return (logp.exp() * (logp - logq)).sum(-1)
    if kind == "jsd":
        # JSD = 1/2 KL(p||m) + 1/2 KL(q||m), m = (p+q)/2. With delta = log q - log p:
        #   log p - log m = ln 2 - softplus(delta),   log q - log m = ln 2 - softplus(-delta)
        # which is stable for any logits and exactly 0 where q == p (softplus(0) == ln 2).
        delta = logq - logp
        kl_pm = logp.exp() * (_LN2 - F.softplus(delta))
        kl_qm = logq.exp() * (_LN2 - F.softplus(-delta))
        return 0.5 * (kl_pm + kl_qm).sum(-1)
    raise ValueError(f"unknown divergence {kind!r}; choose from {DIVERGENCES}")

"""Linear probe on a frozen encoder: the honest measure of how well a modality was trained."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_probe(z_train: torch.Tensor, y_train: torch.Tensor, z_test: torch.Tensor, y_test: torch.Tensor,
                 num_classes: int, steps: int = 100, weight_decay: float = 1e-4, seed: int = 0) -> float:
    """Fit multinomial logistic regression on frozen latents and return test accuracy.

    z_*: (N, d) latents (or (N, *shape), flattened to (N, prod(shape))), y_*: (N,) labels. Features are
    standardised with train statistics; the fit is full-batch L-BFGS (deterministic, no learning rate to
    tune) with a small L2 penalty.
    """
    z_train, z_test = z_train.flatten(1), z_test.flatten(1)
    mu, sd = z_train.mean(0), z_train.std(0).clamp_min(1e-6)
    a, b = (z_train - mu) / sd, (z_test - mu) / sd
    g = torch.Generator().manual_seed(seed)
    w = (0.01 * torch.randn(a.shape[1], num_classes, generator=g, dtype=a.dtype)).requires_grad_()
    bias = torch.zeros(num_classes, dtype=a.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + bias, y_train) + weight_decay * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return ((b @ w + bias).argmax(1) == y_test).float().mean().item()

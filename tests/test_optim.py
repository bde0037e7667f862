"""engine.optim: the run's optimizer uses torch's fused Adam/AdamW kernel where it can, with the same update."""

from __future__ import annotations

import pytest
import torch

from mcrlab.config import load_config
from mcrlab.engine.optim import build_optimizer, fused_options


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_adam_gives_the_loop_update(name, dtype):
    """Five steps of the run's optimizer (fused) and of torch's default loop, from the same gradients, on
    two param groups with different learning rates and a parameter that skips a step (no gradient): float64
    bit for bit, float32 to round-off."""
    cfg = load_config(None, [f"train.optimizer={name}", "train.lr=0.01", "train.weight_decay=0.1"])
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (3,), (2, 2)]
    a = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    start = [p.detach().clone() for p in a]
    fused = build_optimizer(cfg, [{"params": a[:2], "lr": 0.02}, {"params": a[2:]}])
    assert all(group["fused"] for group in fused.param_groups)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    plain = cls([{"params": b[:2], "lr": 0.02}, {"params": b[2:]}], lr=0.01, weight_decay=0.1)
    assert not any(group["fused"] for group in plain.param_groups)
    for step in range(5):
        for i, (p, q) in enumerate(zip(a, b, strict=True)):
            grad = None if (i == 2 and step == 1) else torch.randn(p.shape, generator=g, dtype=dtype)
            p.grad, q.grad = grad, None if grad is None else grad.clone()
        fused.step()
        plain.step()
    for p, q, p0 in zip(a, b, start, strict=True):
        assert not torch.equal(p, p0)  # the steps moved it
        if dtype == torch.float64:
            assert torch.equal(p, q)
        else:  # the kernel orders float32 operations its own way: equal to round-off
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_sgd_and_unfusable_parameters_keep_the_default_loop():
    cfg = load_config(None, ["train.optimizer=sgd", "train.momentum=0.9"])
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.randn(3))])
    assert not opt.param_groups[0].get("fused")
    assert fused_options([torch.nn.Parameter(torch.randn(2)), torch.zeros(2, dtype=torch.long)]) == {}
    assert fused_options([]) == {}
    assert fused_options([torch.nn.Parameter(torch.randn(2, dtype=torch.float64))]) == {"fused": True}

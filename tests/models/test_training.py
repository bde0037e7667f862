"""A cnn + conv1d MultimodalNet trains through method plug-ins from the registry (no data layer)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mcrlab.config import RunConfig
from mcrlab.methods import REGISTRY, StepContext
from mcrlab.models import build_model

SHAPES = [(1, 6, 6), (8, 3)]  # a 1-channel image and a (T, F) spectrogram


def _data(n: int = 32, seed: int = 0):
    """Labels written into both modalities (a bright quadrant / a loud time band) under noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    img = torch.randn(n, *SHAPES[0], generator=g) * 0.5
    seq = torch.randn(n, *SHAPES[1], generator=g) * 0.5
    for i, c in enumerate(y.tolist()):
        img[i, 0, 2 * c: 2 * c + 2, :] += 1.5
        seq[i, 2 * c: 2 * c + 3, :] += 1.0
    return [img, seq], y


def _train(method_name: str, steps: int, seed: int = 0):
    cfg = RunConfig.from_dict({"model": {"encoders": ["cnn", "conv1d"], "hidden": 4, "latent": 6},
                               "method": {"name": method_name}})
    torch.manual_seed(seed)
    model = build_model(SHAPES, 3, cfg.model)
    method = REGISTRY[method_name](cfg.method.params, model, 3)
    extra = method.extra_modules()
    params = list(model.parameters()) + (list(extra.parameters()) if extra is not None else [])
    opt = torch.optim.Adam(params, lr=1e-2)
    xs, y = _data()
    gen = torch.Generator().manual_seed(seed)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    with torch.no_grad():
        loss0 = F.cross_entropy(model(xs).fused, y).item()
    model.train()
    logs = {}
    for step in range(steps):
        ctx = StepContext(epoch=0, step=step, global_step=step, epochs=1, steps_per_epoch=steps, generator=gen,
                          device=torch.device("cpu"), optimizer=opt)
        opt.zero_grad()
        res = method.training_step(model, xs, y, ctx)
        assert torch.isfinite(res.loss)
        if not res.backward_done:
            res.loss.backward()
        method.after_backward(model, ctx)
        opt.step()
        logs = res.logs
    model.eval()
    with torch.no_grad():
        loss1 = F.cross_entropy(model(xs).fused, y).item()
    return model, init, loss0, loss1, logs


@pytest.mark.parametrize("name", ["joint", "mcr"])
def test_cnn_and_conv1d_train_with_a_method(name):
    model, init, loss0, loss1, logs = _train(name, steps=25)
    assert loss1 < 0.7 * loss0, (loss0, loss1)  # eval-mode loss (BatchNorm running stats) goes down
    state = model.state_dict()
    for m in range(2):  # both encoders' weights and BatchNorm statistics moved
        enc = [k for k in state if k.startswith(f"encoders.{m}.")]
        assert any(not torch.equal(state[k], init[k]) for k in enc if k.endswith("weight"))
        assert any(not torch.equal(state[k], init[k]) for k in enc if k.endswith("running_mean"))
    if name == "mcr":
        assert {"mcr/D/0", "mcr/D/1", "loss/game"} <= set(logs)


def test_training_is_deterministic_under_a_seed():
    a, *_ = _train("mcr", steps=3, seed=1)
    b, *_ = _train("mcr", steps=3, seed=1)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

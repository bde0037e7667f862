"""With a known strong modality (modality 0 of the tiny data), each modulation method damps the strong one and
helps the weak one in most steps (the sign each reference intends), under the reference optimiser (SGD)."""

from __future__ import annotations

import pytest
import torch
from tests.methods.loop_helpers import drive

from mcrlab.config import ModelConfig, RunConfig
from mcrlab.methods import REGISTRY
from mcrlab.models import build_model


def _coef(method) -> tuple[float, float]:
    if hasattr(method, "coef"):  # OGM-GE, AGM, MLB: the gradient coefficients of the last step
        return float(method.coef[0]), float(method.coef[1])
    return tuple(float(g) for g in method._last)  # PMR: the prototype-loss weights of the last step


@pytest.mark.parametrize("name", ["ogm_ge", "agm", "mlb", "pmr"])
def test_strong_modality_damped_weak_helped_in_most_steps(name, tiny2):
    torch.manual_seed(0)
    cfg = RunConfig.from_dict({"method": {"name": name}})
    net = build_model(tiny2.dims, 3, ModelConfig(hidden=16, latent=8))
    method = REGISTRY[name](cfg.method.params, net, 3)
    if name == "pmr":  # record the per-step weights
        orig = method.training_step

        def step(model, xs, y, ctx):
            res = orig(model, xs, y, ctx)
            method._last = (res.logs.get("coef/pmr/0", 0.0), res.logs.get("coef/pmr/1", 0.0))
            return res

        method.training_step = step
    t = cfg.train
    assert t.optimizer == "sgd" or name == "mlb"
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=t.weight_decay)
    good = []

    def on_step(epoch, step):
        if epoch == 0 and step == 0:
            return  # the first step has no history (AGM's running mean, PMR's prototypes)
        k0, k1 = _coef(method)
        good.append(k0 < k1 if name != "pmr" else (k1 > 0 and k0 == 0))

    drive(method, net, tiny2, opt, epochs=8, batch_size=16, on_step=on_step)
    assert sum(good) > 0.6 * len(good), (sum(good), len(good))

"""The MCR plug-in: one training step through the hooks; the schedule of lambda_M."""

from __future__ import annotations

import math

import pytest
import torch

from mcrlab.config import ModelConfig, RunConfig
from mcrlab.methods import REGISTRY, StepContext
from mcrlab.methods.mcr import MCRParams, regulariser_schedule
from mcrlab.models.net import MultimodalNet


def _setup(fusion: str = "late", **params):
    torch.manual_seed(0)
    model = MultimodalNet([5, 3], 3, ModelConfig(hidden=8, depth=1, latent=6, fusion=fusion, fusion_hidden=8))
    method = REGISTRY["mcr"](MCRParams(**params), model, 3)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)]
    y = torch.randint(0, 3, (16,), generator=g)
    return model, method, xs, y


def _ctx(epoch=0, step=0, epochs=10, steps=4, seed=0):
    return StepContext(epoch=epoch, step=step, global_step=epoch * steps + step, epochs=epochs,
                       steps_per_epoch=steps, generator=torch.Generator().manual_seed(seed),
                       device=torch.device("cpu"))


@pytest.mark.parametrize("fusion", ["late", "mlp"])
@pytest.mark.parametrize("extra", [{}, {"lambda_b": 0.1}, {"lambda_b": 0.1, "irrelevant_bound": "club"},
                                   {"strategy": "collaborative", "perturbation": "noise", "divergence": "kl",
                                    "shared_bound": "infonce", "reference_grad": "full"}])
def test_one_training_step_through_the_hooks(fusion, extra):
    model, method, xs, y = _setup(fusion, num_perms=4, **extra)
    extra_mods = method.extra_modules()
    params = list(model.parameters()) + (list(extra_mods.parameters()) if extra_mods is not None else [])
    opt = torch.optim.Adam(params, lr=1e-2)
    ctx = _ctx()
    res = method.training_step(model, xs, y, ctx)
    assert torch.isfinite(res.loss) and not res.backward_done
    res.loss.backward()
    method.after_backward(model, ctx)
    opt.step()
    logs = res.logs
    for key in ["loss/fused", "loss/head/0", "loss/head/1", "loss/game", "loss/shared", "mcr/D/0", "mcr/D/1",
                "mcr/lambda_m", "mcr/active"]:
        assert key in logs and math.isfinite(logs[key]), key
    if "lambda_b" in extra:
        assert math.isfinite(logs["loss/irrelevant"])
        assert ("loss/club_nll" in logs) == (extra.get("irrelevant_bound") == "club")
        assert extra_mods is not None and all(p.grad is not None for p in extra_mods.parameters())
    assert all(p.grad is not None for p in model.encoders.parameters())
    # the loss is the sum of its logged terms
    p = method.params
    total = logs["loss/fused"] + p.w_uni * (logs["loss/head/0"] + logs["loss/head/1"]) + logs["loss/game"] \
        + p.lambda_c * logs["loss/shared"] + p.lambda_b * logs.get("loss/irrelevant", 0.0) \
        + logs.get("loss/club_nll", 0.0)
    assert res.loss.item() == pytest.approx(total, rel=1e-5, abs=1e-6)


def test_step_is_deterministic_given_the_generator():
    model, method, xs, y = _setup()
    a = method.training_step(model, xs, y, _ctx(seed=3)).logs
    b = method.training_step(model, xs, y, _ctx(seed=3)).logs
    c = method.training_step(model, xs, y, _ctx(seed=4)).logs
    assert a == b and a["mcr/D/0"] != c["mcr/D/0"]


def test_game_term_scales_with_the_schedule():
    params = dict(start_epoch=2, end_epoch=5, warmup_epochs=2, strategy="independent", lambda_c=0.0)
    model, method, xs, y = _setup(**params)
    games = {}
    for epoch, step in [(0, 0), (1, 3), (2, 0), (2, 3), (3, 1), (4, 0), (5, 3), (6, 0)]:
        logs = method.training_step(model, xs, y, _ctx(epoch, step, seed=7)).logs
        games[(epoch, step)] = logs
    for key in [(0, 0), (1, 3), (6, 0)]:  # outside the window: no regulariser at all
        assert games[key]["mcr/active"] == 0.0 and "loss/game" not in games[key]
    scale = {key: regulariser_schedule(method.params, *key, 4)[1] for key in games}
    assert scale[(2, 0)] == pytest.approx(1 / 8) and scale[(2, 3)] == pytest.approx(0.5)
    assert scale[(3, 1)] == pytest.approx(0.75) and scale[(4, 0)] == 1.0 and scale[(5, 3)] == 1.0
    # with k = 0 the game's value is -lambda_M * sum D: it must follow the schedule exactly
    for key in [(2, 0), (2, 3), (3, 1), (4, 0), (5, 3)]:
        logs = games[key]
        want = -0.01 * scale[key] * (logs["mcr/D/0"] + logs["mcr/D/1"])
        assert logs["loss/game"] == pytest.approx(want, rel=1e-5)
        assert logs["mcr/lambda_m"] == pytest.approx(0.01 * scale[key])


def test_schedule_defaults_and_lambda_zero_still_logs_d():
    p = MCRParams()
    assert regulariser_schedule(p, 0, 0, 10) == (True, 1.0)
    assert regulariser_schedule(p, 99, 0, 10) == (True, 1.0)
    model, method, xs, y = _setup(lambda_m=0.0)
    logs = method.training_step(model, xs, y, _ctx()).logs
    assert logs["loss/game"] == 0.0 and logs["mcr/D/0"] > 0


def test_config_keys_reach_the_method():
    cfg = RunConfig.from_dict({"method": {"name": "mcr", "lambda_m": 0.05, "strategy": "collaborative",
                                          "num_perms": 8, "decoder_hidden": 16}})
    assert cfg.method.params.lambda_m == 0.05 and cfg.method.params.decoder_hidden == 16

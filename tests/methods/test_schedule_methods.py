"""MSLR, MLA, Greedy, D&R: learning rates, projections, speeds, diagnosis and re-initialisation."""

import math

import numpy as np
import pytest
import torch

from mcrlab.config import ConfigError, ModelConfig
from mcrlab.methods.dnr import DnR, DnRParams, kmeans_purity, purity, reinit_weight
from mcrlab.methods.greedy import Greedy, GreedyParams, d_speed, speed_ratio
from mcrlab.methods.mla import entropy_weights, owm_update
from mcrlab.methods.mslr import MSLR, MSLRParams, mslr_multipliers
from mcrlab.models import build_model


def test_mslr_strategies():
    assert mslr_multipliers("keep", [2.0, 0.5], 3, 10) == [2.0, 0.5]
    sm = mslr_multipliers("smooth", [4.0, 1.0], 5, 11)
    assert math.isclose(sm[0], 2.0) and sm[1] == 1.0  # half way: 4 ** 0.5


def test_mslr_dynamic_rule_is_the_reference():
    # reference: after 5 remembered epochs, ratio_m = acc_m(now) / mean(acc_m of the 5 epochs before)
    hist = [[0.5, 0.2], [0.6, 0.3], [0.7, 0.3], [0.8, 0.4], [0.8, 0.4]]
    assert mslr_multipliers("dynamic", [0.9, 1.1], 5, 30, hist, memory=5) == [0.9, 1.1]  # memory not full
    hist.append([0.8, 0.6])
    r = mslr_multipliers("dynamic", [0.9, 1.1], 6, 30, hist, memory=5)
    assert r == pytest.approx([0.9 * 0.8 / 0.68, 1.1 * 0.6 / 0.32])


def test_mslr_sets_the_players_learning_rates():
    from mcrlab.methods.base import StepContext

    net = build_model([3, 3], 2, ModelConfig(hidden=4, latent=4))
    meth = MSLR(MSLRParams(strategy="keep", mult=[2.0, 0.5]), net, 2)
    opt = torch.optim.SGD([{"params": net.encoders[m].parameters(), "lr": 0.1, "player": m} for m in range(2)]
                          + [{"params": net.fusion.parameters(), "lr": 0.1, "player": -1}])
    ctx = StepContext(0, 0, 0, 5, 1, torch.Generator(), torch.device("cpu"), optimizer=opt)
    meth.on_epoch_start(0, ctx)
    meth.on_epoch_start(1, ctx)  # idempotent: relative to the loop's base rate, not compounding
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.05, 0.1])
    with pytest.raises(ConfigError, match="method.mult"):
        MSLR(MSLRParams(mult=[1.0]), net, 2)


def test_owm_projector_blocks_the_stored_direction():
    x = torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64)
    P = owm_update(torch.eye(3, dtype=torch.float64), x, alpha=1e-6)
    assert float((P @ x).norm()) < 1e-5  # a gradient G P no longer moves H along x
    e3 = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(P @ e3, float(P[2, 2]) * e3) and float(P[2, 2]) > 0  # other directions kept
    assert math.isclose(float(torch.linalg.matrix_norm(P)), 1.0, rel_tol=1e-12)  # Frobenius-normalised
    w = entropy_weights([torch.tensor([[9.0, 0.0]]), torch.tensor([[0.0, 0.0]])], per_sample=True)
    assert float(w[0, 0]) > float(w[1, 0]) and torch.allclose(w.sum(0), torch.ones(1))


def test_greedy_speeds_and_two_modality_limit():
    g, w = [torch.tensor([1.0, 1.0])], [torch.tensor([2.0, 0.0])]
    assert speed_ratio(g, w) == 0.5
    assert math.isclose(d_speed([1.0, 10.0], [10.0, 1.0]), -2.0)
    with pytest.raises(ConfigError, match="at most 2 modalities"):
        Greedy(GreedyParams(), build_model([2, 2, 2], 2, ModelConfig(hidden=4, latent=4)), 2)


def test_dnr_purity_and_soft_reinit():
    assert purity(np.array([0, 0, 1, 1, 1]), np.array([0, 0, 0, 1, 1])) == 0.8
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    separated = rng.normal(size=(90, 2)) * 0.1 + np.eye(3, 2)[y] * 5
    assert kmeans_purity(separated.astype(np.float32), y, 3) == 1.0
    assert math.isclose(reinit_weight(-0.2, 3.0), math.tanh(0.6))

    from mcrlab.methods.base import StepContext

    net = build_model([3, 3], 2, ModelConfig(hidden=4, latent=4))
    meth = DnR(DnRParams(), net, 2)
    init = [p.detach().clone() for p in net.encoders[0].parameters()]
    with torch.no_grad():
        for p in net.encoders[0].parameters():
            p.add_(1.0)
    meth.pending = [0.25, 0.0]
    meth.on_epoch_start(1, StepContext(1, 0, 0, 2, 1, torch.Generator(), torch.device("cpu")))
    for p, p0 in zip(net.encoders[0].parameters(), init, strict=True):
        assert torch.allclose(p, p0 + 0.75)  # 0.25 * init + 0.75 * (init + 1)


def test_dnr_reports_an_epoch_after_relearning(tiny2):
    from mcrlab.config import RunConfig
    from mcrlab.engine.fit import fit

    def run(select_after: bool) -> tuple[float, list[dict]]:
        # lambda huge: the re-initialisation after epoch 5 (0-based) resets the encoders almost to init,
        # so the one epoch of re-learning (epoch 6) scores below the epochs before it
        cfg = RunConfig.from_dict({
            "method": {"name": "dnr", "reinit_every": 5, "move_lambda": 1e6, "max_samples": 96,
                       "select_after_relearn": select_after},
            "model": {"hidden": 16, "latent": 8},
            "train": {"epochs": 7, "batch_size": 16, "device": "cpu", "probe_epochs": 0, "eval_perms": 1,
                      "lr": 0.2, "seed": 0}})
        reports: list[dict] = []
        out = fit(cfg, lambda m, c: reports.append(dict(m)), dataset=tiny2)
        return out["val/best_acc"], reports

    best, reports = run(True)
    assert any(k.startswith("coef/dnr/w/") for k in reports[5])  # the diagnosis ran after epoch 5
    assert best == reports[6]["val/acc"]  # only the epoch after re-learning could be selected
    best_ref, reports_ref = run(False)  # the reference's rule picks an earlier, pre-re-learning epoch here
    assert best_ref == max(r["val/acc"] for r in reports_ref) > reports_ref[6]["val/acc"]

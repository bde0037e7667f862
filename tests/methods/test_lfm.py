"""LFM against the reference (njustkmg/NeurIPS24-LFM @ad44fa0, Crema_epoch.py / Crema_epoch_learnable.py): the
alignment term written out by hand, the hyper-gradient against finite differences, the weight schedules, and
the alignment teaching the weak modality the labels once the strong one leads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tests.methods.loop_helpers import drive, imbalanced

from mcrlab.config import ConfigError, ModelConfig, RunConfig
from mcrlab.methods.base import NoParams, StepContext
from mcrlab.methods.lfm import (
    LFM,
    LFMParams,
    alignment,
    alpha_lr,
    fitted_cls_weight,
    hessian_probe,
    lfm_losses,
    update_align_weight,
)
from mcrlab.methods.modulation import modality_logits
from mcrlab.methods.simple import Joint
from mcrlab.models import build_model


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_alignment_is_the_reference_formula_by_hand():
    a = [[1.0, 0.0, -1.0], [0.2, 0.3, 2.0]]
    b = [[0.0, 2.0, 0.5], [0.2, 0.3, 2.0]]  # the second sample agrees exactly: it adds nothing
    total = 0.0
    for ra, rb in zip(a, b):
        p, q = _softmax(ra), _softmax(rb)
        r = [(x + y) / 2 for x, y in zip(p, q)]
        kl_rp = sum(ri * math.log(ri / pi) for ri, pi in zip(r, p))  # torch's kl_div(log p, r) = KL(r || p)
        kl_rq = sum(ri * math.log(ri / qi) for ri, qi in zip(r, q))
        total += 0.5 * (kl_rp + kl_rq)
    got = alignment([torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)])
    assert math.isclose(float(got), total / 2, rel_tol=1e-12)
    # three modalities: the mean over the three pairs
    c = torch.tensor([[0.5, -0.5, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    pairs = [alignment([ta, tb]), alignment([ta, c]), alignment([tb, c])]
    assert math.isclose(float(alignment([ta, tb, c])), float(sum(pairs)) / 3, rel_tol=1e-12)


def _tiny_net(seed: int = 0):
    torch.manual_seed(seed)
    net = build_model([3, 4], 3, ModelConfig(hidden=5, latent=4, depth=1)).double()
    xs = [torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)]
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    return net, xs, y


def test_losses_use_the_mean_of_the_modalities_logits():
    net, xs, y = _tiny_net()
    out = net(xs)
    ce, align = lfm_losses(out, net.fusion.bias, y)
    o = modality_logits(out, net.fusion.bias)  # W_m z_m + b/2: the reference's o_a, o_v
    assert torch.allclose(ce, F.cross_entropy(0.5 * o[0] + 0.5 * o[1], y), atol=1e-12)
    assert torch.allclose(align, alignment(o), atol=1e-12)


def test_hessian_probe_matches_finite_differences():
    """mean over the first parameter of H(L_t) g_cls, with H g from central differences of grad L_t."""
    net, xs, y = _tiny_net(1)
    params = [p for mod in (*net.encoders, net.fusion) for p in mod.parameters()]
    a_align = 0.7

    def losses():
        ce, align = lfm_losses(net(xs), net.fusion.bias, y)
        return (1 - a_align) * ce + a_align * align, ce

    total, ce = losses()
    got = float(hessian_probe(total, ce, params))
    g = [t.detach() for t in torch.autograd.grad(losses()[1], params)]
    eps = 1e-6

    def grad0_at(sign: float) -> torch.Tensor:
        with torch.no_grad():
            for p, d in zip(params, g):
                p.add_(sign * eps * d)
        t, _ = losses()
        out = torch.autograd.grad(t, params[0])[0].detach()
        with torch.no_grad():
            for p, d in zip(params, g):
                p.sub_(sign * eps * d)
        return out

    fd = ((grad0_at(1.0) - grad0_at(-1.0)) / (2 * eps)).mean()
    assert abs(got) > 1e-8  # a real signal, not a zero that would match anything small
    assert math.isclose(got, float(fd), rel_tol=1e-5, abs_tol=1e-10)


def test_learnable_update_rule_and_schedule():
    # the reference's loop: lr halves at epochs 20, 40, ... before that epoch's update
    lr, seen = 1e-4, []
    for epoch in range(61):
        if epoch % 20 == 0 and epoch != 0:
            lr /= 2
        seen.append(lr)
    assert all(math.isclose(alpha_lr(1e-4, e), seen[e]) for e in range(61))
    assert math.isclose(update_align_weight(0.5, 2.0, 0.1), 0.3)
    assert update_align_weight(0.5, 100.0, 0.1) == 0.05 and update_align_weight(0.5, -100.0, 0.1) == 0.95


def test_fitted_curve_is_the_reference_polynomial():
    coef = [2.04623704e-01, 3.35472727e-03, 1.22989557e-04, -2.92947416e-06, 2.23835486e-08, -5.39717505e-11]
    for t in (0, 37, 100, 150):
        assert math.isclose(fitted_cls_weight(t, 200), sum(c * t ** i for i, c in enumerate(coef)), rel_tol=1e-12)
    assert math.isclose(fitted_cls_weight(0, 30), 0.204623704)
    assert math.isclose(fitted_cls_weight(15, 30), fitted_cls_weight(100, 200))  # time rescaled to 200 epochs


def test_learnable_step_moves_the_weight_by_the_hypergradient():
    net, xs, y = _tiny_net(2)
    lfm = LFM(LFMParams(strategy="learnable", lr_alpha=0.5, val_rows=4), net, 3)
    ctx = StepContext(epoch=0, step=0, global_step=0, epochs=3, steps_per_epoch=1,
                      generator=torch.Generator().manual_seed(0), device=torch.device("cpu"))
    res = lfm.training_step(net, xs, y, ctx)
    ce, align = lfm_losses(net([x[:4] for x in xs]), net.fusion.bias, y[:4])
    params = [p for mod in (*net.encoders, net.fusion) for p in mod.parameters()]
    h = float(hessian_probe(0.05 * ce + 0.95 * align, ce, params))
    assert math.isclose(lfm.a_align, min(0.95, max(0.05, 0.95 - 0.5 * h)), rel_tol=1e-9)
    assert lfm.probe is not None and len(lfm.probe[1]) == 4
    out = net(xs)
    ce_b, al_b = lfm_losses(out, net.fusion.bias, y)
    assert torch.allclose(res.loss, 2 * ((1 - lfm.a_align) * ce_b + lfm.a_align * al_b), atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alignment_teaches_the_weak_modality_the_labels(seed):
    """synthetic:imbalanced, the strong modality ahead after joint training: in most LFM steps a descent step
    on the alignment term alone raises the weak modality's log-likelihood of the true labels (first order)."""
    data = imbalanced(n_train=256, seed=seed)
    torch.manual_seed(seed)
    net = build_model(data.dims, data.num_classes, ModelConfig(hidden=16, latent=8))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    drive(Joint(NoParams(), net, data.num_classes), net, data, opt, epochs=8, seed=seed)
    lfm = LFM(LFMParams(), net, data.num_classes)
    effects: list[float] = []
    step = lfm.training_step

    def watched(model, xs, y, ctx):
        res = step(model, xs, y, ctx)
        logits = [lg.detach().requires_grad_(True) for lg in modality_logits(res.out, model.fusion.bias)]
        g_align = torch.autograd.grad(alignment(logits), logits)[1]  # on the weak modality's logits
        weak = logits[1].detach().requires_grad_(True)
        g_ll = torch.autograd.grad(F.log_softmax(weak, 1).gather(1, y[:, None]).sum(), weak)[0]
        effects.append(float(-(g_ll * g_align).sum()))  # d loglik along -grad A
        return res

    lfm.training_step = watched  # type: ignore[method-assign]
    drive(lfm, net, data, opt, epochs=5, seed=seed)
    assert sum(e > 0 for e in effects) > 0.7 * len(effects), effects


def test_reference_defaults_and_fusion():
    cfg = RunConfig.from_dict({"method": {"name": "lfm"}})
    assert (cfg.train.optimizer, cfg.train.momentum, cfg.train.weight_decay) == ("sgd", 0.9, 1e-4)
    assert cfg.method.params.strategy == "fitted"
    with pytest.raises(ConfigError, match="model.fusion: method 'lfm' needs model.fusion=late"):
        RunConfig.from_dict({"method": {"name": "lfm"}, "model": {"fusion": "mlp"}})

"""AGM against the reference's formulas (lihong2303/AGM @5a65542, run/CREMAD_main.py, model/CREMAD_net.py):
coefficient direction and cap, the modality outputs, what the scaling reaches, and its effect with a known
strong modality."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mcrlab.config import ModelConfig
from mcrlab.methods.agm import AGM, AGMParams, agm_coefficients, modality_outputs
from mcrlab.methods.base import StepContext
from mcrlab.methods.simple import Joint
from mcrlab.models import build_model


def _reference_coefficients(s_a: float, s_v: float, t_a: float, t_v: float, alpha: float) -> tuple[float, float]:
    """The reference's two-modality rule, written out (scores are CE losses, t the running means)."""
    ratio_a, ratio_v = math.exp(s_v - s_a), math.exp(s_a - s_v)
    opt_a, opt_v = math.exp(t_v - t_a), math.exp(t_a - t_v)
    return math.exp(alpha * min(opt_a - ratio_a, 10)), math.exp(alpha * min(opt_v - ratio_v, 10))


def test_coefficients_equal_the_reference_rule():
    for s_a, s_v, t_a, t_v, alpha in [(0.4, 1.1, 0.9, 1.0, 1.0), (1.3, 0.2, 0.7, 0.8, 0.5),
                                      (0.1, 3.0, 2.0, 0.5, 1.0)]:
        k = agm_coefficients(torch.tensor([s_a, s_v], dtype=torch.float64),
                             torch.tensor([t_a, t_v], dtype=torch.float64), alpha)
        ref = _reference_coefficients(s_a, s_v, t_a, t_v, alpha)
        assert math.isclose(float(k[0]), ref[0], rel_tol=1e-12)
        assert math.isclose(float(k[1]), ref[1], rel_tol=1e-12)


def test_currently_stronger_modality_is_damped_and_cap_is_ten():
    # modality 0 has a lower loss now than on its running trajectory -> damped; modality 1 boosted
    k = agm_coefficients(torch.tensor([0.2, 1.0], dtype=torch.float64),
                         torch.tensor([0.6, 0.6], dtype=torch.float64), alpha=1.0)
    assert k[0] < 1 < k[1]
    # r* - r = e^{5} - e^{-5} > 10: the exponent is capped at 10 (not 7)
    k = agm_coefficients(torch.tensor([5.0, 0.0], dtype=torch.float64),
                         torch.tensor([0.0, 5.0], dtype=torch.float64), alpha=1.0)
    assert math.isclose(float(k[0]), math.exp(10.0), rel_tol=1e-12)


def test_modality_outputs_are_the_reference_responses():
    torch.manual_seed(0)
    net = build_model([4, 3], 3, ModelConfig(hidden=8, latent=6, fusion="mlp")).double()
    out = net([torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)])
    a, v = out.z
    total, pad_a, pad_v = net.fusion([a, v]), net.fusion([0 * a, v]), net.fusion([a, 0 * v])
    o = modality_outputs(net.fusion, out.z)
    assert torch.allclose(o[0], 0.5 * (total - pad_a + pad_v), atol=1e-12)  # out_a of the reference
    assert torch.allclose(o[1], 0.5 * (total - pad_v + pad_a), atol=1e-12)
    assert torch.allclose(o[0] + o[1], out.fused, atol=1e-12)


def _grads(net) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def test_scaling_reaches_encoder_weights_biases_and_fusion_weights():
    torch.manual_seed(1)
    net = build_model([4, 3], 3, ModelConfig(hidden=8, latent=6)).double()
    xs, y = [torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)], torch.arange(16) % 3
    ctx = StepContext(epoch=0, step=0, global_step=0, epochs=1, steps_per_epoch=1,
                      generator=torch.Generator(), device=torch.device("cpu"))
    agm = AGM(AGMParams(clip_fusion_grad=False), net, 3)
    agm.running = torch.tensor([2.0, 0.1], dtype=torch.float64)  # a trajectory that makes k clearly != 1
    agm.training_step(net, xs, y, ctx).loss.backward()
    k = agm.coef.double()
    assert abs(float(k[0]) - 1) > 1e-3 and abs(float(k[1]) - 1) > 1e-3
    g_agm = _grads(net)
    net.zero_grad()
    Joint(None, net, 3).training_step(net, xs, y, ctx).loss.backward()
    g_joint = _grads(net)
    for name, g in g_joint.items():
        if name.startswith(("encoders.0.", "fusion.proj.0.")):
            assert torch.allclose(g_agm[name], k[0] * g, atol=1e-10), name
        elif name.startswith(("encoders.1.", "fusion.proj.1.")):
            assert torch.allclose(g_agm[name], k[1] * g, atol=1e-10), name
        elif name == "fusion.bias":  # each modality's output carries bias / M
            assert torch.allclose(g_agm[name], (k[0] + k[1]) / 2 * g, atol=1e-10)
    assert any(n.startswith("encoders.0.") and n.endswith("bias") for n in g_joint)  # biases were checked


def test_with_a_strong_modality_agm_damps_it_and_boosts_the_weak_one(tiny2):
    torch.manual_seed(0)
    xs = [torch.as_tensor(x) for x in tiny2.splits["train"].x]
    y = torch.as_tensor(tiny2.splits["train"].y)
    net = build_model([x.shape[1] for x in xs], 3, ModelConfig(hidden=16, latent=8))
    agm = AGM(AGMParams(), net, 3)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    damp_strong = boost_weak = steps = 0
    for epoch in range(8):
        perm = torch.randperm(len(y), generator=gen)
        for step in range(len(y) // 16):
            idx = perm[step * 16:(step + 1) * 16]
            ctx = StepContext(epoch=epoch, step=step, global_step=steps, epochs=8, steps_per_epoch=6,
                              generator=gen, device=torch.device("cpu"))
            opt.zero_grad()
            agm.training_step(net, [x[idx] for x in xs], y[idx], ctx).loss.backward()
            agm.after_backward(net, ctx)
            opt.step()
            if steps > 0:  # the first step has no trajectory yet (running mean 0: k = exp(r* - r) by chance)
                damp_strong += float(agm.coef[0]) < 1
                boost_weak += float(agm.coef[1]) > 1
            steps += 1
    assert damp_strong > 0.6 * (steps - 1) and boost_weak > 0.6 * (steps - 1), (damp_strong, boost_weak, steps)
    with torch.no_grad():  # and the strong modality is indeed the stronger one here
        out = net(xs)
        o = modality_outputs(net.fusion, out.z)
        assert F.cross_entropy(o[0], y) < F.cross_entropy(o[1], y)

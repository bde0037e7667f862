"""MMCosine, PMR, ReconBoost, Gradient-Blending, ensemble: their distinctive maths."""

import math

import torch
import torch.nn.functional as F

from mcrlab.methods.ensemble import ensemble_logits
from mcrlab.methods.gradient_blending import blend_weights
from mcrlab.methods.mmcosine import cosine_logits
from mcrlab.methods.pmr import pmr_gammas, prototype_logits
from mcrlab.methods.reconboost import boosting_loss, reconboost_stage


def test_cosine_logits_are_bounded_and_scale_free():
    gen = torch.Generator().manual_seed(0)
    z, w = torch.randn(5, 4, generator=gen), torch.randn(3, 4, generator=gen)
    (a,) = cosine_logits([z], [w], scale=10.0)
    (b,) = cosine_logits([7 * z], [0.1 * w], scale=10.0)
    assert torch.allclose(a, b, atol=1e-5) and float(a.abs().max()) <= 10.0 + 1e-5


def test_pmr_gammas_match_the_two_modality_coefficients():
    # rho = s0 / s1 = 1.5 >= 1: beta (modality 0) = 0, lambda (modality 1) = clip(rho - 1) = 0.5
    assert torch.allclose(pmr_gammas(torch.tensor([3.0, 2.0])), torch.tensor([0.0, 0.5]))
    assert torch.allclose(pmr_gammas(torch.tensor([1.0, 4.0])), torch.tensor([1.0, 0.0]))  # clipped at 1
    z, c = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    assert torch.allclose(prototype_logits(z, c), torch.tensor([[-5.0, -1.0]]))


def test_reconboost_schedule_and_reconcilement_weight():
    assert [reconboost_stage(e, 1, 2) for e in range(5)] == [0, -1, 1, -1, 0]
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 0])
    certain = torch.tensor([[50.0, 0.0], [50.0, 0.0]])  # the others already fit every sample
    assert float(boosting_loss(logits, certain, y, 1.0, 1.0)) < 1e-12
    unsure = torch.zeros(2, 2)  # p_-m(y) = 1/2: half weight
    assert math.isclose(float(boosting_loss(logits, unsure, y, 1.0, 1.0)),
                        0.5 * float(F.cross_entropy(logits, y)), rel_tol=1e-6)


def test_blend_weights_hand_computed():
    vp, tp = torch.tensor([1.0, 1.0]), torch.tensor([0.9, 0.9])
    vn, tn = torch.tensor([0.8, 0.9]), torch.tensor([0.6, 0.5])
    # dG = (0.2, 0.1); dO = (0.2 - 0.1, 0.4 - 0.1) = (0.1, 0.3); raw = (20, 1.111..)
    w = blend_weights(vp, tp, vn, tn)
    raw = torch.tensor([0.2 / 0.01, 0.1 / 0.09])
    assert torch.allclose(w, raw / raw.sum(), atol=1e-6)
    assert blend_weights(vn, tn, vp, tp) is None  # no head generalised better: keep old weights


def test_ensemble_sum_and_standardisation():
    h0, h1 = torch.tensor([[10.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.equal(ensemble_logits([h0, h1], None), torch.tensor([[10.0, 1.0]]))
    st = ensemble_logits([h0, h1], [5.0, 0.5])  # scales equalise the two modalities' magnitudes
    assert torch.allclose(st, torch.tensor([[1.0 - 1.0, -1.0 + 1.0]]))

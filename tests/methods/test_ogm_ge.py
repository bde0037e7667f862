import math

import torch

from mcrlab.methods.modulation import confidence_scores, ratio_to_others
from mcrlab.methods.ogm_ge import ge_modulate, ogm_coefficients


def test_coefficient_on_hand_made_ratio():
    rho = ratio_to_others(torch.tensor([3.0, 1.0], dtype=torch.float64))
    assert torch.allclose(rho, torch.tensor([3.0, 1 / 3], dtype=torch.float64))
    k = ogm_coefficients(rho, alpha=0.5)
    assert math.isclose(float(k[0]), 1 - math.tanh(1.5), rel_tol=1e-12)  # dominant: slowed
    assert float(k[1]) == 1.0  # lagging: untouched


def test_ratio_to_mean_of_others_for_three():
    rho = ratio_to_others(torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64))
    assert torch.allclose(rho, torch.tensor([1.0, 0.4, 2.0], dtype=torch.float64))


def test_confidence_score_is_sum_of_true_class_probability():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    s = confidence_scores([logits], torch.tensor([0, 1]))
    assert math.isclose(float(s[0]), 0.5 + 1 / (1 + math.e ** 2), rel_tol=1e-9)


def test_ge_noise_has_the_gradient_std():
    g = torch.randn(200, 200, generator=torch.Generator().manual_seed(0)) * 3.0
    plain = ge_modulate(g, 0.5, None, noise=False)
    assert torch.equal(plain, g * 0.5)
    noisy = ge_modulate(g, 0.0, torch.Generator().manual_seed(1), noise=True)
    assert abs(float(noisy.std()) / float(g.std()) - 1) < 0.02

import torch

from mcrlab.methods.mmpareto import min_norm_weights, pareto_direction


def test_combined_direction_never_opposes_a_task():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        g1 = torch.randn(50, generator=gen, dtype=torch.float64)
        g2 = torch.randn(50, generator=gen, dtype=torch.float64) * float(torch.rand(1, generator=gen) * 5)
        d, _ = pareto_direction(g1, g2, gamma=1.5)
        assert float(d @ g1) >= -1e-9 and float(d @ g2) >= -1e-9


def test_agreeing_gradients_get_equal_weights_and_the_sum_norm():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    d, w = pareto_direction(g1, g2, gamma=1.0)
    assert w == 0.5 and torch.allclose(d, g1 + g2)


def test_min_norm_point_of_conflicting_pair():
    g1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    g2 = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    w1, w2 = min_norm_weights(g1, g2)
    # argmin ||w g1 + (1-w) g2||^2 = (2w-1)^2 + (1-w)^2 -> w = 3/5
    assert abs(w1 - 0.6) < 1e-12 and abs(w2 - 0.4) < 1e-12
    d, _ = pareto_direction(g1, g2, gamma=1.0)
    # rescaled to ||g1 + g2|| = 1 and orthogonal-ish: both inner products equal (min-norm property)
    assert abs(float(d.norm()) - 1.0) < 1e-12
    assert abs(float(d @ g1) - float(d @ g2)) < 1e-12

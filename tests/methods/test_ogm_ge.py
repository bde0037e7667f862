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


def test_only_encoder_weights_are_modulated_in_the_reference_window():
    from mcrlab.config import ModelConfig
    from mcrlab.methods.base import StepContext
    from mcrlab.methods.ogm_ge import OGMGE, OGMGEParams
    from mcrlab.models import build_model

    torch.manual_seed(0)
    net = build_model([4, 3], 3, ModelConfig(hidden=8, latent=4))
    xs, y = [torch.randn(16, 4) * 3, torch.randn(16, 3)], torch.arange(16) % 3
    meth = OGMGE(OGMGEParams(ge=False), net, 3)

    def grads(epoch: int, epochs: int = 100) -> dict[str, torch.Tensor]:
        net.zero_grad()
        ctx = StepContext(epoch, 0, 0, epochs, 1, torch.Generator(), torch.device("cpu"))
        meth.training_step(net, xs, y, ctx).loss.backward()
        plain = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
        meth.after_backward(net, ctx)
        return plain, {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    plain, mod = grads(epoch=50)  # the reference modulates epochs 0..50 of 100
    k = meth.coef
    assert float(k.min()) < 1  # one modality is slowed
    for n, g in plain.items():
        if n.startswith("encoders.") and n.endswith("weight"):
            assert torch.allclose(mod[n], float(k[int(n.split(".")[1])]) * g), n
        else:  # biases, heads and the fusion head: untouched
            assert torch.equal(mod[n], g), n
    plain, mod = grads(epoch=51)
    assert all(torch.equal(mod[n], g) for n, g in plain.items())  # past the window


def test_mlp_fusion_is_refused_with_one_message():
    import pytest

    from mcrlab.config import ConfigError, RunConfig

    for name in ("ogm_ge", "mslr", "opm", "mmcosine", "cml"):
        with pytest.raises(ConfigError, match="model.fusion: method '.*' needs model.fusion=late"):
            RunConfig.from_dict({"method": {"name": name}, "model": {"fusion": "mlp"}})
        with pytest.raises(ConfigError, match="needs model.fusion=late"):  # also when switched to later
            RunConfig.from_dict({"model": {"fusion": "mlp"}}).replace([f"method.name={name}"])


def test_cli_refuses_mlp_fusion_with_exit_2(capsys):
    from mcrlab.cli import main

    assert main(["train", "method.name=mslr", "model.fusion=mlp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.fusion: method 'mslr' needs model.fusion=late" in err[0]

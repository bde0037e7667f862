"""Greedy against the reference (nyukat/greedy_multimodal_learning @a190e03): the bypass is the cross-modal
(MMTM) path into a modality, re-balancing cuts that path for the modality whose own branch lags - on data with a
known weak modality, that is the weak one - and the cut is exactly that."""

from __future__ import annotations

import pytest
import torch
from tests.methods.loop_helpers import drive, imbalanced

from mcrlab.config import ModelConfig
from mcrlab.methods.greedy import Greedy, GreedyParams, LatentMMTM
from mcrlab.models import build_model


def test_frozen_excitation_cuts_the_cross_modal_path():
    torch.manual_seed(0)
    mmtm = LatentMMTM([4, 6], ratio=4).double()
    z = [torch.randn(5, 4, dtype=torch.float64, requires_grad=True),
         torch.randn(5, 6, dtype=torch.float64, requires_grad=True)]
    free = mmtm(z)
    g = torch.autograd.grad(free[0].sum(), z[1], retain_graph=True)[0]
    assert g.abs().sum() > 0  # normally modality 1 reaches modality 0 through the excitation
    cut = mmtm(z, frozen={0: torch.full((4,), 0.5, dtype=torch.float64)})
    assert torch.allclose(cut[0], 0.5 * z[0])
    g = torch.autograd.grad(cut[0].sum(), z[1], retain_graph=True, allow_unused=True)[0]
    assert g is None or g.abs().sum() == 0  # ... and not while modality 0 is cared for
    assert torch.allclose(cut[1], free[1])  # the other modality's path is unchanged


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rebalancing_cares_for_the_weak_modality(seed):
    data = imbalanced(n_train=1000)
    torch.manual_seed(seed)
    net = build_model(data.dims, data.num_classes, ModelConfig(hidden=32, latent=16))
    method = Greedy(GreedyParams(start_epoch=1), net, data.num_classes)
    opt = torch.optim.SGD([*net.parameters(), *method.extra_modules().parameters()], lr=0.1, momentum=0.0)
    cared = [0, 0]

    def on_step(epoch, step):
        if method.curating:
            cared[method.caring] += 1

    drive(method, net, data, opt, epochs=6, batch_size=16, seed=seed, on_step=on_step)
    # re-balancing happens, and most of it cares for modality 1, the weak one of synthetic:imbalanced
    assert sum(cared) > 0
    assert cared[1] > 0.6 * sum(cared), cared

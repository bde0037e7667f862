"""Data Remixing against the reference (MatthewMaxy/Remix_ICML2025 @80898aa, train.py): the KL-to-uniform
assignment, per-modality sub-batches with the other latents zeroed, and every assigned modality stepping."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from mcrlab.config import ModelConfig, RunConfig
from mcrlab.methods.base import StepContext
from mcrlab.methods.remix import Remix, RemixParams, assign_modalities, kl_to_uniform
from mcrlab.models import build_model


def test_kl_and_assignment_are_the_reference_rule():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 0.0]])
    for row in logits:
        p = np.clip(torch.softmax(row, 0).numpy(), 1e-9, 1.0)
        ref = float(np.sum(p * np.log2(p / np.full(3, 1 / 3))))
        assert math.isclose(float(kl_to_uniform(row[None])[0]), ref, rel_tol=1e-4, abs_tol=1e-6)
    a = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # modality 0
    v = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [4.0, 0.0, 0.0]])  # modality 1
    # reference: audio if KL_audio < KL_video else video (ties go to video)
    assert assign_modalities([a, v]).tolist() == [1, 1, 0]


def test_each_modality_trains_on_its_own_samples_with_the_others_zeroed(tiny2):
    torch.manual_seed(0)
    net = build_model(tiny2.dims, 3, ModelConfig(hidden=8, latent=4))
    rmx = Remix(RemixParams(warmup=0), net, 3)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    xs = [torch.as_tensor(x[:32]) for x in tiny2.splits["train"].x]
    y = torch.as_tensor(tiny2.splits["train"].y[:32])
    warm = StepContext(0, 0, 0, 1, 1, torch.Generator(), torch.device("cpu"), optimizer=opt)
    for _ in range(60):  # warm-up steps (multi-loss) until the heads are confident enough to differ
        opt.zero_grad()
        Remix(RemixParams(warmup=1), net, 3).training_step(net, xs, y, warm).loss.backward()
        opt.step()
    with torch.no_grad():
        out0 = net(xs)
        who = assign_modalities(out0.heads)
    assert set(who.tolist()) == {0, 1}  # both modalities get samples here
    # the weak modality 1 is the less confident one for most samples, so it gets most of them
    assert int((who == 1).sum()) > int((who == 0).sum())
    before = [[p.detach().clone() for p in e.parameters()] for e in net.encoders]
    ctx = StepContext(0, 0, 0, 1, 1, torch.Generator(), torch.device("cpu"), optimizer=opt)
    opt.zero_grad()
    res = rmx.training_step(net, xs, y, ctx)
    assert res.backward_done
    # the last modality's gradient (modality 0, stepped by the loop) equals the reference's sub-batch loss
    rows = who == 0
    with torch.no_grad():  # modality 1 was stepped inside training_step; modality 0's encoder is untouched
        assert all(torch.equal(a, b) for a, b in zip(before[0], net.encoders[0].parameters(), strict=True))
        assert not all(torch.equal(a, b) for a, b in zip(before[1], net.encoders[1].parameters(), strict=True))
    z0 = net.encoders[0](xs[0][rows])
    ref = F.cross_entropy(net.fusion([z0, torch.zeros(int(rows.sum()), 4)]), y[rows]) + F.cross_entropy(
        net.heads[0](z0), y[rows])
    g_ref = torch.autograd.grad(ref, list(net.encoders[0].parameters()))
    for p, g in zip(net.encoders[0].parameters(), g_ref, strict=True):
        assert torch.allclose(p.grad, g, atol=1e-6)


def test_reference_defaults():
    cfg = RunConfig.from_dict({"method": {"name": "remix"}})
    assert (cfg.train.optimizer, cfg.train.weight_decay) == ("adam", 1e-4)
    assert cfg.method.params.warmup_epochs(60) == 10

"""OPM against the reference (GeWu-Lab/BML_TPAMI2024 @4b3aa4f, code/models/Classifier.py): drop probabilities
from calcu_q, the masking and rescaling of Modality_drop, and the leading modality being the one dropped."""

from __future__ import annotations

import math

import pytest
import torch
from tests.methods.loop_helpers import drive

from mcrlab.config import ConfigError, ModelConfig, RunConfig
from mcrlab.methods.opm import OPM, OPMParams, drop_latents, opm_drop_probabilities
from mcrlab.models import build_model


def _calcu_q(p1: float, p2: float, q_base: float, lam: float) -> tuple[float, float]:
    """The reference's calcu_q, written out."""
    r1, r2 = math.tanh(max(p1 / p2 - 1, 0)), math.tanh(max(p2 / p1 - 1, 0))
    q1 = q_base * (1 + lam * r1) if r1 > 0 else 0.0
    q2 = q_base * (1 + lam * r2) if r2 > 0 else 0.0
    return min(max(q1, 0.0), 1.0), min(max(q2, 0.0), 1.0)


def test_drop_probabilities_are_the_reference_rule():
    for p1, p2, qb, lam in [(30.0, 20.0, 0.5, 0.5), (5.0, 12.0, 0.5, 0.5), (9.0, 9.0, 0.5, 0.5), (50.0, 1.0, 0.9, 2.0)]:
        q = opm_drop_probabilities(torch.tensor([p1, p2], dtype=torch.float64), qb, lam)
        ref = _calcu_q(p1, p2, qb, lam)
        assert math.isclose(float(q[0]), ref[0], abs_tol=1e-12) and math.isclose(float(q[1]), ref[1], abs_tol=1e-12)


def test_drop_masks_rescale_and_leave_out_empty_samples():
    z = [torch.ones(2000, 3), 2 * torch.ones(2000, 5)]
    q = torch.tensor([0.6, 0.0])
    kept, keep = drop_latents(z, q, torch.Generator().manual_seed(0))
    theta = (3 * 0.6) / 8
    assert bool(keep.all())  # modality 1 is never dropped, so no sample is empty
    assert torch.allclose(kept[1], torch.full_like(kept[1], 2 / (1 - theta + 1e-5)))
    frac = float((kept[0][:, 0] == 0).float().mean())
    assert abs(frac - 0.6) < 0.05
    kept, keep = drop_latents(z, torch.tensor([1.0, 1.0]), torch.Generator().manual_seed(0))
    assert not bool(keep.any()) and kept[0].shape[0] == 0


def test_the_strong_modality_is_the_one_dropped(tiny2):
    torch.manual_seed(0)
    net = build_model(tiny2.dims, 3, ModelConfig(hidden=16, latent=8))
    opm = OPM(OPMParams(start_epoch=0), net, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.01)
    seen = []
    drive(opm, net, tiny2, opt, epochs=6, batch_size=16,
          on_step=lambda e, s: seen.append((float(opm.coef[0]), float(opm.coef[1]))))
    assert sum(q0 > 0 and q1 == 0 for q0, q1 in seen) > 0.6 * len(seen)


def test_reference_defaults_and_fusion():
    cfg = RunConfig.from_dict({"method": {"name": "opm"}})
    assert (cfg.train.optimizer, cfg.train.weight_decay) == ("adamw", 0.01)
    assert cfg.method.params.first_epoch(100) == 6
    with pytest.raises(ConfigError, match="needs model.fusion=late"):
        RunConfig.from_dict({"method": {"name": "opm"}, "model": {"fusion": "mlp"}})

"""search_spaces/encoders.yaml: every point it samples builds a model on image + spectrogram shapes."""

from __future__ import annotations

from pathlib import Path

import optuna
import torch

from mcrlab.models import build_model
from mcrlab.tune.space import load_space, make_sampler, sample_point, trial_config

ROOT = Path(__file__).resolve().parents[2]


def test_encoder_space_samples_buildable_models():
    space = load_space(ROOT / "search_spaces" / "encoders.yaml")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=make_sampler(space))
    seen = set()
    for _ in range(10):
        _trial, point = sample_point(study, space)
        cfg = trial_config(space, space.datasets[0], point, seed=0)
        model = build_model([(1, 16, 16), (12, 8)], 3, cfg.model)
        names = tuple(cfg.model.encoders)
        assert names == (point["model.encoders.0"], point["model.encoders.1"])
        if names[1] == "transformer":
            assert model.encoders[1].encoder.layers[0].self_attn.num_heads == 2
        seen.add(names)
        out = model([torch.randn(2, 1, 16, 16), torch.randn(2, 12, 8)])
        assert out.fused.shape == (2, 3)
    assert len(seen) >= 3  # the encoder choice itself is searched

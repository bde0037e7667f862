"""The plug-in contract, checked over the WHOLE registry from one settings table.

Every method trains a few steps on tiny data on CPU: loss finite (fit raises on non-finite), parameters change,
diagnostics and the method's own per-epoch coefficients are reported, two runs with one seed agree exactly, and
a run interrupted after epoch 2 and resumed from its checkpoint ends exactly as the uninterrupted run.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mcrlab.config import ConfigError, RunConfig
from mcrlab.engine.fit import fit, load_checkpoint
from mcrlab.methods import REGISTRY
from mcrlab.models import build_model

# method -> (method.* overrides, prefix of a per-epoch coefficient it must report, or None)
SETTINGS: dict[str, tuple[dict, str | None]] = {
    "unimodal": ({"modality": 0}, None),
    "ensemble": ({"standardize": True}, None),
    "joint": ({}, None),
    "multiloss": ({}, None),
    "ogm_ge": ({"alpha": 0.8}, "coef/ogm/"),
    "opm": ({"start_epoch": 0, "p_exe": 1.0}, "coef/opm/"),
    "agm": ({}, "coef/agm/"),
    "mlb": ({}, "coef/mlb/"),
    "greedy": ({"alpha": 0.01, "window": 2}, "coef/greedy/"),
    "mmpareto": ({}, "train/coef/mmpareto/"),
    "mmcosine": ({}, "train/coef/mmcosine/"),
    "pmr": ({}, "coef/pmr/"),
    "gradient_blending": ({}, "coef/gblend/"),
    "remix": ({"warmup": 1}, "coef/remix/"),
    "cml": ({}, "coef/cml/"),
    "mslr": ({"strategy": "dynamic"}, "coef/mslr/"),
    "reconboost": ({"stage_epochs": 1}, "coef/reconboost/"),
    "mla": ({}, "coef/mla/"),
    "dnr": ({"reinit_every": 1, "max_samples": 64}, "coef/dnr/"),
    "mcr": ({}, None),
}
EPOCHS = 3


def test_settings_cover_the_registry():
    assert set(SETTINGS) == set(REGISTRY)
    for name, cls in REGISTRY.items():
        assert cls.name == name
        for f in dataclasses.fields(cls.Params):  # every hyperparameter is documented (searchable)
            assert f.metadata.get("help"), f"{name}.{f.name} has no help"


def _cfg(name: str, epochs: int = EPOCHS) -> RunConfig:
    return RunConfig.from_dict({
        "method": {"name": name, **SETTINGS[name][0]},
        "model": {"hidden": 16, "latent": 8},
        "train": {"epochs": epochs, "batch_size": 32, "device": "cpu", "probe_epochs": 5, "eval_perms": 2,
                  "seed": 3}})


class _Crash(RuntimeError):
    pass


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_method_contract(name, tiny2, tmp_path):
    cfg = _cfg(name)
    reports: list[dict] = []
    a = fit(cfg, lambda m, c: reports.append(dict(m)), checkpoint_dir=str(tmp_path / "a"), dataset=tiny2)
    assert len(reports) == EPOCHS
    for key in ["test/acc", "test/f1", "val/acc", "train/loss"] + [
            f"{s}/{mod}" for mod in tiny2.modalities for s in ("test/head", "test/probe", "test/D", "val/D")]:
        assert key in a and a[key] == a[key], key  # present and not NaN
    prefix = SETTINGS[name][1]
    if prefix is not None:  # the method's own coefficients, every epoch
        for r in reports[1:]:
            assert any(k.startswith(prefix) for k in r), (prefix, sorted(r))

    torch.manual_seed(cfg.train.seed)  # fit's initial weights: seeded, then built first
    init = build_model(tiny2.dims, tiny2.num_classes, cfg.model).state_dict()
    final = load_checkpoint(tmp_path / "a")["model"]
    changed = [k for k in init if not torch.equal(init[k], final[k])]
    assert any(k.startswith("encoders.") for k in changed), "no encoder parameter moved"

    b = fit(cfg, dataset=tiny2)  # determinism under a seed
    assert b == a

    def crash_after_two(metrics, ckpt):
        if metrics["epoch"] == 2:
            raise _Crash
    with pytest.raises(_Crash):
        fit(cfg, crash_after_two, checkpoint_dir=str(tmp_path / "c"), dataset=tiny2)
    c = fit(cfg, checkpoint_dir=str(tmp_path / "c"), resume_from=str(tmp_path / "c"), dataset=tiny2)
    assert c == a


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_three_modalities_or_clear_error(name, tiny3):
    cfg = _cfg(name, epochs=1)
    if REGISTRY[name].max_modalities is not None and REGISTRY[name].max_modalities < 3:
        with pytest.raises(ConfigError, match="at most 2 modalities"):
            fit(cfg, dataset=tiny3)
    else:
        out = fit(cfg, dataset=tiny3)
        assert all(f"test/probe/{m}" in out for m in tiny3.modalities)

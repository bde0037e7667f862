"""The plug-in contract, checked over the WHOLE registry from one settings table.

Every method trains a few steps on tiny data on CPU: loss finite (fit raises on non-finite), parameters change,
diagnostics and the method's own per-epoch coefficients are reported, two runs with one seed agree exactly, and
a run interrupted after epoch 2 and resumed from its checkpoint ends exactly as the uninterrupted run.

The same contract with conv encoders (a cnn on (1, 8, 8) images, a conv1d on (6, 4) sequences): every method
trains and moves every encoder it trains, with late fusion and with the mlp fusion head (or refuses that head
with a ConfigError when it is defined for late fusion only), and resumes exactly.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from mcrlab.config import ConfigError, RunConfig
from mcrlab.data import MultimodalDataset, Split
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
    "amco": ({}, "coef/amco/"),
    "mmpareto": ({}, "train/coef/mmpareto/"),
    "mmcosine": ({}, "train/coef/mmcosine/"),
    "pmr": ({}, "coef/pmr/"),
    "gradient_blending": ({}, "coef/gblend/"),
    "remix": ({"warmup": 1}, "coef/remix/"),
    "cml": ({}, "coef/cml/"),
    "lfm": ({"strategy": "learnable"}, "coef/lfm/"),
    "sample_valuation": ({"warmup": 1}, "coef/sample/"),
    "umt": ({}, "train/coef/umt/"),
    "mbsd": ({}, "train/coef/mbsd/"),
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

    c = _crash_then_resume(cfg, tiny2, tmp_path / "c", epoch=2)
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


# ---- every method with conv encoders (issue 13 item 6) ------------------------------------------------
# A (1, 8, 8) image through `cnn` and a (6, 4) sequence through `conv1d`, tiny widths: each method trains
# through the public config and fit, and every encoder it trains moves (weights and BatchNorm statistics).
CONV_SHAPES = [(1, 8, 8), (6, 4)]
CONV_MODEL = {"encoders": ["cnn", "conv1d"], "hidden": 4, "latent": 6, "depth": 1}
CONV_EPOCHS = 2


def conv_dataset(n_train: int = 64, seed: int = 0, C: int = 3) -> MultimodalDataset:
    """The label written into both modalities (a bright band of rows / a loud band of time steps)."""
    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        y = rng.integers(0, C, n)
        img = rng.normal(size=(n, *CONV_SHAPES[0])).astype(np.float32) * 0.5
        seq = rng.normal(size=(n, *CONV_SHAPES[1])).astype(np.float32) * 0.5
        for i, c in enumerate(y):
            img[i, 0, 2 * c: 2 * c + 2, :] += 1.5
            seq[i, 2 * c: 2 * c + 2, :] += 1.0
        return Split([img, seq], y.astype(np.int64))

    return MultimodalDataset("tiny_conv", ["image", "seq"], C,
                             {"train": split(n_train), "val": split(24), "test": split(24)})


@pytest.fixture(scope="module")
def tiny_conv() -> MultimodalDataset:
    return conv_dataset()


def _conv_cfg(name: str, epochs: int = CONV_EPOCHS, **model) -> RunConfig:
    return RunConfig.from_dict({
        "method": {"name": name, **SETTINGS[name][0]},
        "model": {**CONV_MODEL, **model},
        "train": {"epochs": epochs, "batch_size": 32, "device": "cpu", "probe_epochs": 3, "eval_perms": 2,
                  "seed": 5}})


def _trained_encoders(name: str) -> list[int]:
    """The encoders a method trains: all of them, but the unimodal baseline's one modality."""
    return [SETTINGS[name][0]["modality"]] if name == "unimodal" else [0, 1]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_method_contract_with_conv_encoders(name, tiny_conv, tmp_path):
    cfg = _conv_cfg(name)
    reports: list[dict] = []
    out = fit(cfg, lambda m, c: reports.append(dict(m)), checkpoint_dir=str(tmp_path / "a"), dataset=tiny_conv)
    assert len(reports) == CONV_EPOCHS
    assert all(math.isfinite(r["train/loss"]) for r in reports)
    for key in ["test/acc", "test/f1", "val/acc", "train/loss"] + [
            f"{s}/{mod}" for mod in tiny_conv.modalities for s in ("test/head", "test/probe", "test/D")]:
        assert key in out and math.isfinite(out[key]), key
    prefix = SETTINGS[name][1]
    if prefix is not None:
        assert any(k.startswith(prefix) for k in reports[-1]), (prefix, sorted(reports[-1]))

    torch.manual_seed(cfg.train.seed)  # fit's initial weights: seeded, then built first
    model = build_model(tiny_conv.shapes, tiny_conv.num_classes, cfg.model)
    assert [type(e).__name__ for e in model.encoders] != ["MLPEncoder", "MLPEncoder"]
    init = model.state_dict()
    final = load_checkpoint(tmp_path / "a")["model"]
    for m in _trained_encoders(name):
        keys = [k for k in init if k.startswith(f"encoders.{m}.")]
        assert any(not torch.equal(init[k], final[k]) for k in keys if k.endswith("weight")), \
            f"no weight of encoder {m} moved"
        assert any(not torch.equal(init[k], final[k]) for k in keys if k.endswith("running_mean")), \
            f"encoder {m}'s BatchNorm statistics did not move"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_conv_encoders_with_mlp_fusion_train_or_are_refused(name, tiny_conv):
    fusions = REGISTRY[name].fusions
    if fusions is not None and "mlp" not in fusions:
        with pytest.raises(ConfigError, match=f"model.fusion: method '{name}' needs model.fusion=late"):
            _conv_cfg(name, epochs=1, fusion="mlp", fusion_hidden=8)
        return
    out = fit(_conv_cfg(name, epochs=1, fusion="mlp", fusion_hidden=8), dataset=tiny_conv)
    assert math.isfinite(out["train/loss"]) and math.isfinite(out["test/acc"])


def _crash_then_resume(cfg, dataset, folder, epoch: int) -> dict:
    """fit interrupted right after ``epoch`` (its checkpoint in ``folder``), then resumed from it: the metrics."""
    def crash(metrics, ckpt):
        if metrics["epoch"] == epoch:
            raise _Crash
    with pytest.raises(_Crash):
        fit(cfg, crash, checkpoint_dir=str(folder), dataset=dataset)
    return fit(cfg, checkpoint_dir=str(folder), resume_from=str(folder), dataset=dataset)


@pytest.mark.parametrize("name", ["joint", "mcr", "ogm_ge", "reconboost"])
def test_conv_encoders_resume_exactly(name, tiny_conv, tmp_path):
    """Interrupted after epoch 1 of 2 and resumed: the same final metrics and weights (BatchNorm buffers
    included) as one uninterrupted run."""
    cfg = _conv_cfg(name)
    a = fit(cfg, checkpoint_dir=str(tmp_path / "a"), dataset=tiny_conv)

    c = _crash_then_resume(cfg, tiny_conv, tmp_path / "c", epoch=1)
    assert c == a
    sa, sc = load_checkpoint(tmp_path / "a")["model"], load_checkpoint(tmp_path / "c")["model"]
    assert all(torch.equal(sa[k], sc[k]) for k in sa)

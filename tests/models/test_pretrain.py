"""Unimodal pre-training (model.init): the loop, the cache (keys, atomic files, torn files), loading,
freezing, and the global RNG left as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcrlab.config import RunConfig
from mcrlab.data import MultimodalDataset, Split
from mcrlab.engine.pretrain import apply_init, load_or_pretrain, pretrain_key, pretrain_unimodal
from mcrlab.methods import REGISTRY, StepContext
from mcrlab.models import build_model


def _dataset(seed: int = 0) -> MultimodalDataset:
    rng = np.random.default_rng(seed)

    def split(n: int) -> Split:
        y = rng.integers(0, 3, n)
        xs = [(rng.normal(size=(n, 5)) + s * np.eye(3, 5)[y]).astype(np.float32) for s in (2.0, 1.0)]
        return Split(xs, y.astype(np.int64))

    return MultimodalDataset("tiny", ["a", "b"], 3, {"train": split(64), "val": split(16), "test": split(16)})


def _cfg(init: str = "unimodal", **train) -> RunConfig:
    return RunConfig.from_dict({"model": {"hidden": 8, "depth": 1, "latent": 4, "init": init, "init_epochs": 15},
                                "train": {"batch_size": 16, "lr": 1e-2, "device": "cpu", **train}})


def _head_loss(model, ds, m: int) -> float:
    split = ds.splits["train"]
    x, y = torch.as_tensor(split.x[m]), torch.as_tensor(split.y)
    model.eval()
    with torch.no_grad():
        return F.cross_entropy(model.heads[m](model.encoders[m](x)), y).item()


def test_pretraining_trains_each_encoder_and_head_alone():
    ds, cfg = _dataset(), _cfg()
    torch.manual_seed(0)
    scratch = build_model(ds.dims, 3, cfg.model)
    state = pretrain_unimodal(cfg, ds)
    assert set(state) == {k for k in scratch.state_dict() if k.startswith(("encoders.", "heads."))}
    model = build_model(ds.dims, 3, cfg.model)
    fusion_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fusion.")}
    model.load_state_dict(state, strict=False)
    for m in range(2):
        assert _head_loss(model, ds, m) < 0.8 * _head_loss(scratch, ds, m)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in fusion_before.items())
    # a straightforward reference: the same seed gives the same pre-training
    again = pretrain_unimodal(cfg, ds)
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_cache_is_shared_and_written_atomically(tmp_path):
    ds, cfg = _dataset(), _cfg()
    model = build_model(ds.dims, 3, cfg.model)
    state, info = load_or_pretrain(model, cfg, ds, cache_dir=tmp_path)
    assert info["init/cached"] == "false" and info["init/key"] == pretrain_key(ds.fingerprint(), cfg)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"unimodal-{info['init/key']}.pt"]  # no temporary file left behind
    # another trial of the sweep: other method, other fusion head, frozen variant -> the same file
    other = cfg.replace(["method.name=joint", "model.fusion=mlp", "model.init=unimodal_frozen"])
    state2, info2 = load_or_pretrain(build_model(ds.dims, 3, other.model), other, ds, cache_dir=tmp_path)
    assert info2["init/cached"] == "true" and info2["init/path"] == info["init/path"]
    assert all(torch.equal(state[k], state2[k]) for k in state)


def test_key_follows_what_shapes_the_pretraining():
    ds, cfg = _dataset(), _cfg()
    key = pretrain_key(ds.fingerprint(), cfg)
    assert pretrain_key(ds.fingerprint(), cfg.replace(["model.fusion=mlp", "method.name=joint"])) == key
    for change in (["train.lr=0.02"], ["train.seed=1"], ["model.hidden=16"], ["model.init_epochs=16"],
                   ["model.encoder_args={}", "model.encoders=[mlp, mlp]"]):
        assert pretrain_key(ds.fingerprint(), cfg.replace(change)) != key, change
    assert pretrain_key(_dataset(seed=1).fingerprint(), cfg) != key


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 half a zip", None])
def test_a_torn_or_foreign_cache_file_is_rebuilt(tmp_path, content):
    ds, cfg = _dataset(), _cfg()
    model = build_model(ds.dims, 3, cfg.model)
    path = tmp_path / f"unimodal-{pretrain_key(ds.fingerprint(), cfg)}.pt"
    if content is None:  # a valid torch file of the right name whose tensors do not fit the model
        torch.save({"format": 1, "key": pretrain_key(ds.fingerprint(), cfg), "state": {"x": torch.zeros(1)}}, path)
    else:
        path.write_bytes(content)
    state, info = load_or_pretrain(model, cfg, ds, cache_dir=tmp_path)
    assert info["init/cached"] == "false"
    blob = torch.load(path, weights_only=True)
    assert set(blob["state"]) == set(state)
    _, info = load_or_pretrain(model, cfg, ds, cache_dir=tmp_path)
    assert info["init/cached"] == "true"


def test_apply_init_leaves_the_global_rng_and_a_cache_hit_equals_a_miss(tmp_path):
    ds = _dataset()
    results = []
    for _ in range(2):  # miss, then hit
        cfg = _cfg()
        torch.manual_seed(5)
        model = build_model(ds.dims, 3, cfg.model)
        info = apply_init(model, cfg, ds, cache_dir=tmp_path)
        results.append((info["init/cached"], model.state_dict(), torch.rand(3)))
    (c0, s0, r0), (c1, s1, r1) = results
    assert (c0, c1) == ("false", "true")
    assert all(torch.equal(s0[k], s1[k]) for k in s0) and torch.equal(r0, r1)
    torch.manual_seed(5)
    build_model(ds.dims, 3, _cfg().model)
    assert torch.equal(torch.rand(3), r0)  # as if no pre-training had run
    torch.manual_seed(5)
    scratch = build_model(ds.dims, 3, _cfg("scratch").model)
    assert apply_init(scratch, _cfg("scratch"), ds, cache_dir=tmp_path) == {}


def test_frozen_encoders_do_not_move_but_the_rest_trains(tmp_path):
    ds, cfg = _dataset(), _cfg("unimodal_frozen")
    torch.manual_seed(0)
    model = build_model(ds.dims, 3, cfg.model)
    apply_init(model, cfg, ds, cache_dir=tmp_path)
    assert model.frozen == [0, 1] and not any(p.requires_grad for p in model.encoders.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = REGISTRY["joint"](REGISTRY["joint"].Params(), model, 3)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    split = ds.splits["train"]
    xs, y = [torch.as_tensor(x) for x in split.x], torch.as_tensor(split.y)
    model.train()
    for step in range(3):
        ctx = StepContext(0, step, step, 1, 3, torch.Generator().manual_seed(0), torch.device("cpu"), optimizer=opt)
        opt.zero_grad()
        method.training_step(model, xs, y, ctx).loss.backward()
        opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoders."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("fusion."))


def test_frozen_batchnorm_stays_in_eval_mode_under_train():
    cfg = RunConfig.from_dict({"model": {"encoders": ["cnn", "mlp"], "hidden": 4, "latent": 4}})
    model = build_model([(1, 6, 6), (3,)], 3, cfg.model)
    model.freeze_encoder(0)
    model.train()
    assert not model.encoders[0].training and model.encoders[1].training and model.heads[0].training
    bn = model.encoders[0].features[1]
    stats = bn.running_mean.clone()
    model([torch.randn(4, 1, 6, 6) + 2, torch.randn(4, 3)])
    assert torch.equal(bn.running_mean, stats)

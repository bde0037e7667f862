"""Tensor modalities end to end, and the streamed loader: same runs as memory, bounded windows, each rank
its own row groups, a corrupt shard named, and the memory/stream/auto choice."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mcrlab.cli import main
from mcrlab.config import DataConfig, load_config
from mcrlab.data import MultimodalDataset, Split, load_dataset
from mcrlab.data.importers import import_features
from mcrlab.data.shards import MANIFEST, load_shards, write_shards
from mcrlab.data.stream import ShardReadError, ShardSplit, StreamBatches, epoch_windows, open_shards
from mcrlab.engine.fit import fit

N = 120


def _arrays(n: int = N, seed: int = 0) -> dict[str, np.ndarray]:
    """An image (1, 4, 4), a sequence (5, 3) and a vector (6,) modality; the vector's first feature is
    the row id (so tests can see which rows a reader yields); labels from the image's mean."""
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 2
    img = rng.normal(size=(n, 1, 4, 4)) + 1.0 * label[:, None, None, None]
    seq = rng.normal(size=(n, 5, 3)) + 0.3 * label[:, None, None]
    vec = rng.normal(size=(n, 6))
    vec[:, 0] = np.arange(n)
    return {"img": img, "seq": seq, "vec": vec, "label": label}


def _split(n: int = N) -> np.ndarray:
    return np.array(["train"] * (n * 3 // 5) + ["val"] * (n // 5) + ["test"] * (n - n * 3 // 5 - n // 5))


@pytest.fixture(scope="module")
def tensor_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensor")
    a = _arrays()
    np.savez(root / "src.npz", **a, split=_split())
    import_features(root / "src.npz", root / "sh", rows_per_shard=25)  # 5 files; train spans 3
    return root / "sh", a


def test_npz_of_any_rank_round_trips_with_shapes_and_tensor_type(tensor_shards, capsys):
    path, a = tensor_shards
    ds = load_shards(str(path))
    assert ds.shapes == [(1, 4, 4), (5, 3), (6,)] and ds.dims == [16, 15, 6]
    idx = np.flatnonzero(_split() == "val")
    assert np.array_equal(ds.splits["val"].x[0], a["img"][idx].astype(np.float32))
    assert np.array_equal(ds.splits["val"].x[1], a["seq"][idx].astype(np.float32))
    schema = pq.read_schema(path / "part-00000.parquet")
    assert schema.field("img").type == pa.fixed_shape_tensor(pa.float32(), (1, 4, 4))
    assert schema.field("vec").type == pa.list_(pa.float32(), 6)  # vectors stay plain fixed-size lists
    assert main(["data", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "img (1x4x4)" in out and "seq (5x3)" in out and "vec (6)" in out and "fixed_shape_tensor" in out


def test_fingerprint_covers_shape_and_is_the_same_streamed(tensor_shards):
    path, _ = tensor_shards
    mem = load_shards(str(path))
    streamed = open_shards(str(path))
    assert isinstance(streamed.splits["train"], ShardSplit) and streamed.shapes == mem.shapes
    assert streamed.fingerprint() == mem.fingerprint()
    # the same bytes in another shape are another dataset
    reshaped = MultimodalDataset(mem.name, mem.modalities, mem.num_classes, {
        s: Split([sp.x[0].reshape(len(sp), 4, 4), *sp.x[1:]], sp.y) for s, sp in mem.splits.items()})
    assert reshaped.fingerprint() != mem.fingerprint()
    changed = MultimodalDataset(mem.name, mem.modalities, mem.num_classes, {
        s: Split([sp.x[0] + (s == "test"), *sp.x[1:]], sp.y) for s, sp in mem.splits.items()})
    assert changed.fingerprint() != mem.fingerprint()


def test_loader_choice_memory_stream_auto(tensor_shards):
    path, _ = tensor_shards
    assert isinstance(load_dataset(DataConfig(name=str(path))).splits["train"], Split)  # auto: small
    assert isinstance(load_dataset(DataConfig(name=str(path), loader="memory")).splits["train"], Split)
    assert isinstance(load_dataset(DataConfig(name=str(path), loader="stream")).splits["train"], ShardSplit)
    # other datasets are in memory whatever the loader
    assert isinstance(load_dataset(DataConfig(name="digits", loader="stream")).splits["train"], Split)


FIT = ["method.name=mcr", "method.num_perms=2", "train.epochs=3", "train.batch_size=16", "train.probe_epochs=10",
       "model.hidden=8", "model.latent=4", "train.device=cpu"]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_equals_memory_exactly_when_the_split_fits_one_window(tensor_shards, workers):
    """Same seed, the split within data.shuffle_mib: identical order, so identical runs (every metric)."""
    path, _ = tensor_shards
    mem_hist, str_hist = [], []
    mem = fit(load_config(None, [*FIT, f"data.name={path}", "data.loader=memory"]), lambda m, c: mem_hist.append(m))
    streamed = fit(load_config(None, [*FIT, f"data.name={path}", "data.loader=stream", f"data.workers={workers}"]),
                   lambda m, c: str_hist.append(m))
    assert streamed == mem and str_hist == mem_hist
    assert {"test/probe/img", "test/D/seq", "val/head/vec"} <= set(mem)
    other = fit(load_config(None, [*FIT, f"data.name={path}", "data.loader=stream", "train.seed=1"]))
    assert other["train/loss"] != mem["train/loss"]


def _ids(batches) -> list[list[int]]:
    return [x[2][:, 0].long().tolist() for x, _y in batches]


def test_windows_bound_the_shuffle_and_every_row_comes_once(tmp_path):
    a = _arrays(200)
    write_shards(tmp_path / "s", {k: a[k] for k in ("img", "seq", "vec")}, a["label"],
                 np.array(["train"] * 160 + ["val"] * 20 + ["test"] * 20), rows_per_shard=20)
    ds = open_shards(str(tmp_path / "s"))
    split = ds.splits["train"]
    assert [b.rows for b in split.blocks] == [20] * 8 and not any(b.mixed for b in split.blocks)
    row_mib = split.row_bytes / 2**20
    sb = StreamBatches(split, batch_size=16, device=torch.device("cpu"), workers=0, shuffle_mib=45 * row_mib)
    assert sb.budget_rows == 45 and sb.steps == 10
    gen = torch.Generator().manual_seed(0)
    e0, e1 = _ids(sb.epoch(gen)), _ids(sb.epoch(gen))
    for ids in (e0, e1):
        flat = [i for b in ids for i in b]
        assert len(flat) == 160 and sorted(flat) == list(range(160))  # each train row exactly once
        assert flat != sorted(flat)
        assert all(len(b) == 16 for b in ids)
    assert e0 != e1  # a new order every epoch
    # windows: 2 blocks (40 rows <= 45) each, so rows only mix within their window of row groups
    windows = epoch_windows([20] * 8, 45, torch.Generator().manual_seed(0))
    assert [len(w.blocks) for w in windows] == [2, 2, 2, 2] and all(w.seed is not None for w in windows)
    assert sorted(b for w in windows for b in w.blocks) == list(range(8))
    first_window_rows = {r for b in windows[0].blocks for r in range(20 * b, 20 * b + 20)}
    assert set(e0[0]) | set(e0[1]) <= first_window_rows  # the first 32 rows come from the first window
    # batches larger than a window: assembled across several windows, still each row at most once
    wide = StreamBatches(split, batch_size=50, device=torch.device("cpu"), workers=0, shuffle_mib=20 * row_mib)
    ids = _ids(wide.epoch(torch.Generator().manual_seed(1)))
    assert wide.steps == 3 and [len(b) for b in ids] == [50, 50, 50]
    assert len({i for b in ids for i in b}) == 150
    # the same seed gives the same order; the number of reader processes does not change it
    again = StreamBatches(split, batch_size=16, device=torch.device("cpu"), workers=2, shuffle_mib=45 * row_mib)
    assert _ids(again.epoch(torch.Generator().manual_seed(0))) == e0


def test_data_parallel_ranks_read_their_own_row_groups(tmp_path):
    a = _arrays(200)
    write_shards(tmp_path / "s", {k: a[k] for k in ("img", "seq", "vec")}, a["label"],
                 np.array(["train"] * 150 + ["val"] * 25 + ["test"] * 25), rows_per_shard=20)
    split = open_shards(str(tmp_path / "s")).splits["train"]  # blocks of 20 x 7 + 10
    per = [StreamBatches(split, batch_size=15, device=torch.device("cpu"), rank=r, world=2, workers=0)
           for r in range(2)]
    assert [p.local_batch for p in per] == [8, 7]
    assert per[0].steps == per[1].steps == min(80 // 8, 70 // 7)
    rows = [{i for b in _ids(p.epoch(torch.Generator().manual_seed(3))) for i in b} for p in per]
    assert rows[0].isdisjoint(rows[1])  # each rank only its own row groups
    files = [{b.file for b in p.blocks} for p in per]
    own = [{r for b in p.blocks for r in range(int(pq.read_table(b.file).column("vec").to_pylist()[0][0]),
                                               int(pq.read_table(b.file).column("vec").to_pylist()[0][0]) + b.rows)}
            for p in per]
    assert files[0].isdisjoint(files[1]) and rows[0] <= own[0] and rows[1] <= own[1]
    with pytest.raises(Exception, match="fewer than 9 data-parallel workers"):
        StreamBatches(split, batch_size=16, device=torch.device("cpu"), rank=0, world=9)


def test_a_shard_corrupted_mid_run_fails_naming_the_file(tmp_path):
    a = _arrays()
    write_shards(tmp_path / "s", {k: a[k] for k in ("img", "seq", "vec")}, a["label"], _split(),
                 rows_per_shard=25)
    for workers in (0, 1):
        ds = open_shards(str(tmp_path / "s"))  # footers read: the run has started
        bad = tmp_path / "s" / "part-00001.parquet"
        saved = bad.read_bytes()
        bad.write_bytes(b"PAR1" + b"\0" * 100 + b"PAR1")  # torn by another process
        seen = []
        cfg = load_config(None, [*FIT, "data.loader=stream", f"data.workers={workers}", "train.epochs=1"])
        with pytest.raises(ShardReadError) as err:
            fit(cfg, lambda m, c, seen=seen: seen.append(m), dataset=ds)
        msg = str(err.value)
        assert "part-00001.parquet" in msg and "row group" in msg and "\n" not in msg, msg
        assert seen == []
        bad.write_bytes(saved)


def test_nested_copy_of_a_shard_folder_is_not_read_twice(tensor_shards, tmp_path):
    path, _ = tensor_shards
    folder = tmp_path / "sh"
    shutil.copytree(path, folder)
    shutil.copytree(path, folder / "backup")  # a copy inside the dataset folder
    (folder / "backup" / MANIFEST).unlink()
    ref = load_shards(str(path))
    for loader in ("memory", "stream"):
        ds = load_dataset(DataConfig(name=str(folder), loader=loader))
        assert {s: len(ds.splits[s]) for s in ds.splits} == {s: len(ref.splits[s]) for s in ref.splits}


def test_show_describes_a_streamed_dataset(tensor_shards):
    from mcrlab.cli.data import describe

    path, _ = tensor_shards
    mem, streamed = load_shards(str(path)), open_shards(str(path))
    lines = describe(streamed)
    assert "loader       stream (rows read lazily)" in lines and f"fingerprint  {mem.fingerprint()}" in lines
    assert [ln for ln in lines if ln.startswith(("train", "val", "test"))] == \
        [ln for ln in describe(mem) if ln.startswith(("train", "val", "test"))]


def _stream_rank(rank: int, world: int, rdv: str, path: str, out: str) -> None:
    import json

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
    seen = []
    joint = [o for o in FIT if not o.startswith("method.")] + ["method.name=joint", "train.lr=0.01"]
    cfg = load_config(None, [*joint, f"data.name={path}", "data.loader=stream", "data.workers=0"])
    final = fit(cfg, lambda m, c: seen.append(m))
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump({"final": final, "epochs": len(seen)}, fh)
    dist.destroy_process_group()


def test_two_gloo_ranks_stream_their_own_row_groups_in_lockstep(tmp_path):
    """Two real processes, each streaming only its own row groups: the same number of steps (no hang),
    the same weights after the gradient all-reduce, hence the same validation and test metrics."""
    import json

    import torch.multiprocessing as mp

    a = _arrays(200)
    write_shards(tmp_path / "s", {k: a[k] for k in ("img", "seq", "vec")}, a["label"],
                 np.array(["train"] * 150 + ["val"] * 25 + ["test"] * 25), rows_per_shard=20)
    mp.spawn(_stream_rank, args=(2, str(tmp_path / "rdv"), str(tmp_path / "s"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["epochs"] == r1["epochs"] == 3
    same = {k: v for k, v in r0["final"].items() if not k.startswith("train/")}  # train/* are per-rank means
    assert same == {k: v for k, v in r1["final"].items() if not k.startswith("train/")}
    assert r0["final"]["test/acc"] > 0.6


def test_cli_import_and_train_on_image_and_spectrogram_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 90
    y = np.arange(n) % 3
    np.savez(tmp_path / "av.npz", video=rng.normal(size=(n, 1, 8, 8)) + y[:, None, None, None],
             audio=rng.normal(size=(n, 16, 8)), label=y)
    assert main(["data", "import", str(tmp_path / "av.npz"), str(tmp_path / "av")]) == 0
    assert "video (1x8x8), audio (16x8)" in capsys.readouterr().out
    for loader in ("memory", "stream"):
        assert main(["train", f"data.name={tmp_path / 'av'}", f"data.loader={loader}", "method.name=mcr",
                     "method.num_perms=2", "train.epochs=2", "train.batch_size=16", "train.probe_epochs=5",
                     "model.hidden=8", "model.latent=4", "--quiet"]) == 0
        out = capsys.readouterr().out
        assert "test/probe/video" in out and "test/acc" in out

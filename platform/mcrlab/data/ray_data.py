"""The Ray Data path over Parquet shards: each data-parallel worker streams only its own files.

Inside a Ray Train worker (or any Ray task), call::

    for batch in shard_iterator(path, "train", rank=ctx.get_world_rank(),
                                world_size=ctx.get_world_size(), batch_size=64, seed=0, epoch=e):
        batch.x  # list of (B, *shape_m) float32, one per modality
        batch.y  # (B,) int64

How files are shared out: the split's row counts per file are read from the shards' metadata (no
data read), and whole files are dealt to ranks greedily, largest first, to the least-loaded rank.
Ranks therefore read disjoint files whose union is the whole split; each rank reads them with
``ray.data.read_parquet`` and filters the split, so no process ever holds more than its own shard.
``equalize=True`` (the default for training) truncates every rank to the smallest rank's row count,
so all ranks run the same number of steps (gradient all-reduce would hang otherwise);
``equalize=False`` yields every row (evaluation, or checking coverage).

Ray Data runs its read tasks on the cluster's free CPUs: leave at least one CPU unclaimed by the
training workers (e.g. ``resources_per_worker={"CPU": 1}`` on a node with more CPUs than workers), or
pass ``engine="pyarrow"`` to read the same files inside the worker process without extra tasks.

For the plain Ray Train pattern, ``split_dataset(path, "train")`` returns a ``ray.data.Dataset`` to pass
as ``TorchTrainer(datasets={"train": ...})``; workers then use ``ray.train.get_dataset_shard``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mcrlab.config import ConfigError
from mcrlab.data.base import SPLITS, Split
from mcrlab.data.shards import (
    check_same_schema,
    read_meta,
    shard_files,
    split_counts,
    table_features,
    table_labels,
    table_splits,
)

__all__ = ["ShardBatch", "assign_files", "shard_iterator", "load_rank_split", "split_dataset"]


@dataclass
class ShardBatch:
    """One batch: ``x[m]`` (B, *shape_m) float32, ``y`` (B,) int64, ``sample_id`` (B,) or None."""

    x: list[np.ndarray]
    y: np.ndarray
    sample_id: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


def assign_files(path: str | Path, split: str, world_size: int) -> tuple[list[list[Path]], list[int]]:
    """Deal the files holding ``split`` rows to ``world_size`` ranks -> (files per rank, rows per rank).

    Deterministic: largest file first (ties by name) to the rank with the fewest rows (ties by rank).
    """
    if split not in SPLITS:
        raise ConfigError(f"split: unknown split {split!r} (allowed: {', '.join(SPLITS)})")
    if world_size < 1:
        raise ConfigError(f"world_size: must be >= 1, got {world_size}")
    counts = split_counts(shard_files(path))
    holding = sorted(((c[split], f) for f, c in counts.items() if c[split] > 0), key=lambda t: (-t[0], t[1]))
    if len(holding) < world_size:
        raise ConfigError(f"{path}: split '{split}' is in {len(holding)} shard file(s), fewer than "
                          f"world_size={world_size}; re-import with a smaller --rows-per-shard")
    files: list[list[Path]] = [[] for _ in range(world_size)]
    rows = [0] * world_size
    for n, f in holding:
        r = min(range(world_size), key=lambda i: (rows[i], i))
        files[r].append(f)
        rows[r] += n
    return [sorted(fs) for fs in files], rows


def _checked_meta(files: list[Path]):
    """Validate the schema of ``files`` (footers only) and that they agree; return the first's meta."""
    ref_schema, ref_meta = read_meta(files[0])
    for f in files[1:]:
        schema, meta = read_meta(f)
        check_same_schema(f, schema, meta, files[0], ref_schema, ref_meta)
    return ref_meta


def _read(files: list[Path], split: str, columns: list[str]):
    import ray.data

    ds = ray.data.read_parquet([str(f) for f in files], columns=columns)
    ds = ds.filter(expr=f"split == '{split}'")
    # Keep block order, so that a seed fixes the sample order (Ray Data reorders blocks by default).
    ds.context.execution_options.preserve_order = True
    return ds


def split_dataset(path: str | Path, split: str = "train"):
    """All rows of ``split`` as a lazy ``ray.data.Dataset`` (columns as stored), for ``TorchTrainer``."""
    files = shard_files(path)
    meta = _checked_meta(files)
    return _read(files, split, [*meta.modalities, "label", "split"])


def _pyarrow_batches(files: list[Path], split: str, columns: list[str], batch_size: int,
                     rng: np.random.Generator | None) -> Iterator[pa.Table]:
    """The same rows as the Ray Data engine, read in this process: file by file, rows of ``split``
    (permuted within each file when ``rng`` is given), re-cut into batches of ``batch_size``."""
    carry: pa.Table | None = None
    for f in files:
        t = pq.read_table(f, columns=columns)
        t = t.filter(pc.equal(t.column("split"), split))
        if rng is not None:
            t = t.take(pa.array(rng.permutation(t.num_rows)))
        carry = t if carry is None else pa.concat_tables([carry, t])
        while carry.num_rows >= batch_size:
            yield carry.slice(0, batch_size)
            carry = carry.slice(batch_size)
    if carry is not None and carry.num_rows:
        yield carry


def shard_iterator(path: str | Path, split: str = "train", rank: int = 0, world_size: int = 1,
                   batch_size: int = 64, seed: int = 0, epoch: int = 0, *, equalize: bool = True,
                   shuffle: bool = True, engine: str = "ray") -> Iterator[ShardBatch]:
    """Stream rank ``rank``'s share of ``split`` in batches of ``batch_size`` (last one may be shorter).

    ``engine="ray"`` reads with ``ray.data.read_parquet`` (needs a running Ray and a free CPU for its
    read tasks); ``engine="pyarrow"`` reads the same files in this process (no extra tasks; the choice
    for small shards or a CPU-starved worker). Both yield the same rows; the shuffled order differs.
    Shuffling (file order, then a local buffer or a per-file permutation) is seeded by ``seed``,
    ``epoch`` and ``rank``. With ``equalize`` every rank yields exactly ``min(rows per rank)`` rows,
    hence the same number of batches. Bad data raises the local reader's ConfigErrors, naming ``path``.
    """
    if world_size < 1:
        raise ConfigError(f"world_size: must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank: must be in [0, world_size={world_size}), got {rank}")
    if batch_size < 1:
        raise ConfigError(f"batch_size: must be >= 1, got {batch_size}")
    if engine not in ("ray", "pyarrow"):
        raise ConfigError(f"engine: must be 'ray' or 'pyarrow', got {engine!r}")
    per_rank, rows = assign_files(path, split, world_size)
    files = per_rank[rank]
    meta = _checked_meta(files)
    where = f"{path} (rank {rank})"
    rng = np.random.default_rng([seed, epoch, rank])
    if shuffle:
        files = [files[i] for i in rng.permutation(len(files))]
    limit = min(rows) if equalize else rows[rank]
    has_id = all("sample_id" in read_meta(f)[0].names for f in files)
    columns = [*meta.modalities, "label", "split", *(["sample_id"] if has_id else [])]
    if engine == "ray":
        shuffle_args = ({"local_shuffle_buffer_size": max(4 * batch_size, 256),
                         "local_shuffle_seed": int(rng.integers(2**31))} if shuffle else {})
        tables = _read(files, split, columns).iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                                            **shuffle_args)
    else:
        tables = _pyarrow_batches(files, split, columns, batch_size, rng if shuffle else None)
    seen = 0
    for table in tables:
        if seen >= limit:
            break
        table = table.slice(0, limit - seen)
        table_splits(table, where)
        x = [table_features(table, m, sh, where) for m, sh in zip(meta.modalities, meta.shapes, strict=True)]
        y = table_labels(table, meta.num_classes, where)
        sid = table.column("sample_id").to_numpy(zero_copy_only=False) if has_id else None
        seen += table.num_rows
        yield ShardBatch(x, y, sid)


def load_rank_split(path: str | Path, split: str = "train", rank: int = 0, world_size: int = 1,
                    seed: int = 0, engine: str = "ray") -> Split:
    """Materialise rank ``rank``'s full share of ``split`` (unshuffled, every row) as a ``Split``."""
    batches = list(shard_iterator(path, split, rank, world_size, batch_size=4096, seed=seed,
                                  equalize=False, shuffle=False, engine=engine))
    if not batches:
        raise ConfigError(f"{path}: split '{split}' has no rows for rank {rank}")
    m = len(batches[0].x)
    return Split([np.concatenate([b.x[i] for b in batches]) for i in range(m)],
                 np.concatenate([b.y for b in batches]))

"""Streamed shard datasets (``data.loader=stream``): rows are read lazily, row group by row group.

``open_shards(path)`` reads only the shards' footers and returns a ``MultimodalDataset`` whose splits
are ``ShardSplit`` objects (length, shapes, row groups; no features in memory). Training reads them
through ``StreamBatches``: a torch ``DataLoader`` over an ``IterableDataset`` of *shuffle windows*
(consecutive row groups, at most ``data.shuffle_mib`` of features), with ``data.workers`` reader
processes and pinned memory on CUDA; the training process cuts the windows into batches and copies
them to the device with ``non_blocking=True``. Peak memory per process is bounded by the window size,
the batch size and the prefetch depth, not by the dataset size (``jobs/bench_stream.py`` measures it).

The order of an epoch (``epoch_windows``), drawn from fit's batch-order generator:

- the split fits in one window (its features <= ``data.shuffle_mib``): every row group in file order,
  rows permuted by ``torch.randperm(N, generator)`` - exactly fit's in-memory order, so ``stream``
  and ``memory`` give identical runs for the same seed (tests/data/test_stream.py);
- else the row groups are permuted, grouped greedily into windows, and each window's rows are permuted
  with a seed drawn from the generator (a local shuffle: rows meet only within a window).

Data-parallel (``world > 1``): row groups are dealt to ranks once (largest first, to the rank with the
fewest rows), each rank reads only its own and takes ``len(range(rank, B, world))`` rows per step, as
many steps as the smallest rank allows; each rank's windows are drawn from a seed that every rank draws
alike from the shared generator, plus its rank. Evaluation streams ``ShardSplit.chunks``: file order,
fixed-size chunks, so it sees exactly the rows (and chunks) of the in-memory evaluation.

A row group that cannot be read or holds bad values (a shard corrupted after the run started) stops the
run with ``ShardReadError`` naming the file and the row group.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from mcrlab.config import ConfigError
from mcrlab.data.base import SPLITS, MultimodalDataset, Split
from mcrlab.data.shards import (
    ShardMeta,
    check_same_schema,
    read_meta,
    shard_files,
    table_features,
    table_labels,
    table_splits,
)

__all__ = ["Block", "ShardSplit", "ShardReadError", "open_shards", "split_bytes", "epoch_windows",
           "StreamBatches", "deal_blocks"]


class ShardReadError(ConfigError):
    """A shard could not be read (or held bad values) while streaming; names the file."""


@dataclass(frozen=True)
class Block:
    """The rows of one split inside one row group: the unit of streaming reads."""

    file: str
    row_group: int
    rows: int
    mixed: bool  # the row group also holds other splits' rows (filter on read)


class ShardSplit:
    """One split of a shard dataset, read lazily. ``shapes`` per modality; ``len`` rows."""

    info_type = None  # per-sample information types exist for synthetic data only

    def __init__(self, path: str, split: str, blocks: list[Block], meta: ShardMeta):
        self.path, self.split, self.blocks = path, split, blocks
        self.modalities, self.num_classes = meta.modalities, meta.num_classes
        self._shapes = meta.shapes

    def __len__(self) -> int:
        return sum(b.rows for b in self.blocks)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return list(self._shapes)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row's features as float32 (labels not counted)."""
        return 4 * sum(math.prod(s) for s in self._shapes)

    def read_block(self, block: Block) -> tuple[list[np.ndarray], np.ndarray]:
        """-> (x per modality (n, *shape) float32, y (n,) int64), validated; errors name the file."""
        where = f"{block.file} (row group {block.row_group})"
        try:
            table = pq.ParquetFile(block.file).read_row_group(
                block.row_group, columns=[*self.modalities, "label", "split"])
        except (pa.ArrowException, OSError) as err:
            raise ShardReadError(f"{where}: unreadable while streaming ({str(err).splitlines()[0]})") from None
        if block.mixed:
            table = table.filter(pc.equal(table.column("split"), self.split))
        try:
            splits = table_splits(table, where)
            if table.num_rows != block.rows or np.any(splits != self.split):
                raise ShardReadError(f"{where}: column 'split': {table.num_rows} '{self.split}' rows, the "
                                     f"footer said {block.rows} (file changed while streaming?)")
            xs = [table_features(table, m, s, where) for m, s in zip(self.modalities, self._shapes, strict=True)]
            y = table_labels(table, self.num_classes, where)
        except ShardReadError:
            raise
        except ConfigError as err:
            raise ShardReadError(str(err)) from None
        return xs, y

    def labels(self) -> np.ndarray:
        """(N,) int64 labels in file order, reading only the ``label`` and ``split`` columns."""
        parts = []
        for block in self.blocks:
            where = f"{block.file} (row group {block.row_group})"
            try:
                t = pq.ParquetFile(block.file).read_row_group(block.row_group, columns=["label", "split"])
            except (pa.ArrowException, OSError) as err:
                raise ShardReadError(f"{where}: unreadable ({str(err).splitlines()[0]})") from None
            if block.mixed:
                t = t.filter(pc.equal(t.column("split"), self.split))
            parts.append(table_labels(t, self.num_classes, where))
        return np.concatenate(parts)

    def chunks(self, rows: int = 4096) -> Iterator[tuple[list[np.ndarray], np.ndarray]]:
        """Every row in file order, re-cut into chunks of exactly ``rows`` (the last may be shorter)."""
        carry: tuple[list[np.ndarray], np.ndarray] | None = None
        for block in self.blocks:
            xs, y = self.read_block(block)
            if carry is not None:
                xs = [np.concatenate([a, b]) for a, b in zip(carry[0], xs, strict=True)]
                y = np.concatenate([carry[1], y])
            start = 0
            while len(y) - start >= rows:
                yield [x[start:start + rows] for x in xs], y[start:start + rows]
                start += rows
            carry = ([x[start:] for x in xs], y[start:]) if start < len(y) else None
        if carry is not None:
            yield carry

    def materialize(self) -> Split:
        parts = list(self.chunks(65536))
        return Split([np.concatenate([p[0][m] for p in parts]) for m in range(len(self.modalities))],
                     np.concatenate([p[1] for p in parts]))


def _blocks(file: Path, where_split: dict[str, list[Block]]) -> None:
    """Append ``file``'s row groups to the per-split block lists (statistics, else the split column)."""
    try:
        pf = pq.ParquetFile(file)
        col = pf.schema_arrow.get_field_index("split")
        for g in range(pf.metadata.num_row_groups):
            rg = pf.metadata.row_group(g)
            stats = rg.column(col).statistics
            if stats is not None and stats.has_min_max and stats.min == stats.max and not stats.null_count:
                counts = {stats.min: rg.num_rows}
            else:  # mixed row group (or no statistics): count its split column
                s = table_splits(pf.read_row_group(g, columns=["split"]), f"{file} (row group {g})")
                counts = {name: int(np.sum(s == name)) for name in SPLITS}
            for name, n in counts.items():
                if name not in where_split:
                    raise ConfigError(f"{file}: column 'split': unknown split value {name!r} "
                                      f"(allowed: {', '.join(SPLITS)})")
                if n:
                    where_split[name].append(Block(str(file), g, int(n), len(counts) > 1))
    except (pa.ArrowException, OSError) as err:
        raise ConfigError(f"{file}: not a readable Parquet file ({str(err).splitlines()[0]})") from None


def open_shards(path: str) -> MultimodalDataset:
    """A shard dataset with lazy ``ShardSplit``s: footers and split statistics only, no features."""
    files = shard_files(path)
    ref_schema, ref_meta = read_meta(files[0])
    blocks: dict[str, list[Block]] = {s: [] for s in SPLITS}
    for f in files:
        schema, meta = read_meta(f)
        check_same_schema(f, schema, meta, files[0], ref_schema, ref_meta)
        _blocks(f, blocks)
    for name in SPLITS:
        if not blocks[name]:
            raise ConfigError(f"{path}: column 'split': split '{name}' has no rows (every dataset needs "
                              f"train, val and test rows)")
    splits = {s: ShardSplit(str(path), s, blocks[s], ref_meta) for s in SPLITS}
    return MultimodalDataset(name=str(ref_meta.get("name") or path), modalities=ref_meta.modalities,
                             num_classes=ref_meta.num_classes, splits=splits,
                             meta={"path": str(path), "files": len(files),
                                   "created_by": ref_meta.get("created_by", "")})


def split_bytes(ds: MultimodalDataset, split: str = "train") -> int:
    """Bytes of a split's features as float32 (what the memory loader would put on the device)."""
    sp = ds.splits[split]
    return len(sp) * 4 * sum(math.prod(s) for s in sp.shapes)


# --------------------------------------------------------------------------------------------------
# the epoch order


@dataclass
class Window:
    """Consecutive blocks read and shuffled together: ``perm`` given (one window) or drawn from ``seed``."""

    blocks: list[int]
    perm: torch.Tensor | None = None
    seed: int | None = None


def epoch_windows(block_rows: list[int], budget_rows: int, generator: torch.Generator,
                  shuffle: bool = True) -> list[Window]:
    """The windows of one epoch over blocks of ``block_rows`` rows (see the module docstring).

    One window when everything fits in ``budget_rows``: blocks in order, ``perm = randperm(N)`` drawn
    from ``generator`` (fit's in-memory order). Else blocks permuted, grouped greedily into windows of
    <= ``budget_rows`` rows (>= 1 block each), one seed per window drawn after the block permutation.
    """
    n = sum(block_rows)
    if not shuffle:
        return [Window(list(range(len(block_rows))))]
    if n <= budget_rows:
        return [Window(list(range(len(block_rows))), perm=torch.randperm(n, generator=generator))]
    order = torch.randperm(len(block_rows), generator=generator).tolist()
    windows: list[Window] = []
    rows = 0
    for b in order:
        if windows and rows + block_rows[b] <= budget_rows:
            windows[-1].blocks.append(b)
            rows += block_rows[b]
        else:
            windows.append(Window([b]))
            rows = block_rows[b]
    for w in windows:
        w.seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return windows


def deal_blocks(blocks: list[Block], world: int) -> list[list[int]]:
    """Block indices per rank: largest first (ties by index) to the rank with the fewest rows (ties by
    rank); each rank's list is in file order. Deterministic, so every rank computes the same dealing."""
    if len(blocks) < world:
        raise ConfigError(f"data.loader: stream: the train split has {len(blocks)} row group(s), fewer than "
                          f"{world} data-parallel workers; re-import with a smaller --rows-per-shard")
    per: list[list[int]] = [[] for _ in range(world)]
    rows = [0] * world
    for i in sorted(range(len(blocks)), key=lambda i: (-blocks[i].rows, i)):
        r = min(range(world), key=lambda k: (rows[k], k))
        per[r].append(i)
        rows[r] += blocks[i].rows
    return [sorted(p) for p in per]


class _WindowReader(torch.utils.data.IterableDataset):
    """Yields one item per window: (x per modality, y) as tensors, rows in the window's order.

    DataLoader worker k of K reads windows k, k+K, ...; the loader returns items round-robin from its
    workers, which is window order again, so the number of workers never changes the sample order.
    Read errors travel as a message (a worker's traceback would make a many-line error).
    """

    def __init__(self, split: ShardSplit, blocks: list[Block], windows: list[Window]):
        self.split, self.blocks, self.windows = split, blocks, windows

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, K = (0, 1) if info is None else (info.id, info.num_workers)
        for i, w in enumerate(self.windows):
            if i % K != k:
                continue
            try:
                parts = [self.split.read_block(self.blocks[b]) for b in w.blocks]
            except ShardReadError as err:
                yield {"error": str(err)}
                return
            xs = [np.concatenate([p[0][m] for p in parts]) for m in range(len(self.split.modalities))]
            y = np.concatenate([p[1] for p in parts])
            perm = w.perm
            if perm is None and w.seed is not None:
                perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(w.seed))
            xt = [torch.from_numpy(x) for x in xs]
            yt = torch.from_numpy(y)
            if perm is not None:
                xt, yt = [x[perm] for x in xt], yt[perm]
            yield {"x": xt, "y": yt}


class StreamBatches:
    """fit's training batches from a ``ShardSplit``: ``steps`` and ``epoch(generator)``.

    ``batch_size`` is the global batch; this rank gets ``len(range(rank, batch_size, world))`` rows per
    step, from its own row groups. ``shuffle_mib`` bounds a window; ``workers`` reader processes.
    """

    def __init__(self, split: ShardSplit, *, batch_size: int, device: torch.device, rank: int = 0,
                 world: int = 1, workers: int = 1, shuffle_mib: float = 64.0, shuffle: bool = True):
        self.split, self.device, self.rank, self.world = split, device, rank, world
        self.workers, self.shuffle = workers, shuffle
        per_rank = deal_blocks(split.blocks, world) if world > 1 else [list(range(len(split.blocks)))]
        self.blocks = [split.blocks[i] for i in per_rank[rank]]
        self.budget_rows = max(1, int(shuffle_mib * 2**20) // max(1, split.row_bytes))
        if world == 1:
            n = len(split)
            self.local_batch = batch_size
            self.steps = max(1, n // batch_size) if n >= batch_size else 1
        else:
            locals_ = [len(range(r, batch_size, world)) for r in range(world)]
            rows = [sum(split.blocks[i].rows for i in p) for p in per_rank]
            self.local_batch = locals_[rank]
            self.steps = max(1, min(n // b for n, b in zip(rows, locals_, strict=True)))

    def _to_device(self, xs: list[torch.Tensor], y: torch.Tensor, pin: bool = False
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Copy a batch to the device; on CUDA from pinned memory, without waiting (``non_blocking``)."""
        if self.device.type != "cuda":
            return xs, y
        if pin:  # a batch assembled across windows is a fresh (pageable) tensor
            xs, y = [x.pin_memory() for x in xs], y.pin_memory()
        return [x.to(self.device, non_blocking=True) for x in xs], y.to(self.device, non_blocking=True)

    def epoch(self, generator: torch.Generator) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        """This rank's ``steps`` batches of one epoch, on the device."""
        if self.world > 1:  # every rank draws the same seed, then shuffles its own blocks with it + rank
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            generator = torch.Generator().manual_seed(seed + self.rank)
        windows = epoch_windows([b.rows for b in self.blocks], self.budget_rows, generator, self.shuffle)
        loader = torch.utils.data.DataLoader(
            _WindowReader(self.split, self.blocks, windows), batch_size=None, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=2 if self.workers > 0 else None)
        b, done = self.local_batch, 0
        carry: tuple[list[torch.Tensor], torch.Tensor] | None = None  # < b rows left from earlier windows
        for item in loader:
            if "error" in item:
                raise ShardReadError(item["error"])
            xs, y = item["x"], item["y"]
            start = 0
            if carry is not None:  # complete the carried rows with the head of this window (a small copy)
                need = b - len(carry[1])
                head = ([torch.cat([c, x[:need]]) for c, x in zip(carry[0], xs, strict=True)],
                        torch.cat([carry[1], y[:need]]))
                carry, start = None, min(need, len(y))
                if len(head[1]) < b:
                    carry = head
                    continue
                yield self._to_device(*head, pin=True)
                done += 1
            # whole batches are slices (views) of the window: still in pinned memory on CUDA
            while len(y) - start >= b and done < self.steps:
                yield self._to_device([x[start:start + b] for x in xs], y[start:start + b])
                start, done = start + b, done + 1
            if done >= self.steps:
                return
            if start < len(y):
                carry = ([x[start:] for x in xs], y[start:])
        if carry is not None and done < self.steps:  # fewer rows than one batch in the whole epoch
            yield self._to_device(*carry, pin=True)
            done += 1
        if done < self.steps:  # a rank that yields fewer steps would hang the gradient all-reduce
            raise ShardReadError(f"{self.split.path}: rank {self.rank} read {done} of {self.steps} batches "
                                 f"(files changed while streaming?)")

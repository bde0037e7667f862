"""The in-memory form every dataset loader returns.

A dataset is M modalities of float features plus integer labels, split into train/val/test. A
modality is an array ``(N, *shape)`` of any fixed shape: vectors ``(N, d)``, images ``(N, C, H, W)``,
spectrograms or sequences ``(N, T, F)``. Loaders (synthetic, mfeat, digits, Parquet shards, plug-ins)
all produce a ``MultimodalDataset``; the training loop only ever sees this type. A streamed shard
dataset (``data.loader=stream``) holds ``data.stream.ShardSplit`` objects instead of ``Split`` (same
``len``, ``shapes`` and ``info_type``, rows read lazily).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Split", "MultimodalDataset", "SPLITS", "DEFAULT_ROWS_PER_SHARD", "RESPLIT_MODES", "flat_width", "resplit"]

SPLITS = ("train", "val", "test")
RESPLIT_MODES = {"none": (), "train+val": ("train", "val"), "all": SPLITS}  # data.resplit -> splits pooled
DEFAULT_ROWS_PER_SHARD = 50_000  # rows per Parquet file written by import (here: the CLI reads it without pyarrow)


def flat_width(shape: tuple[int, ...]) -> int:
    """Number of features of one sample of ``shape`` (its product; what a linear layer sees)."""
    return int(math.prod(shape))


@dataclass
class Split:
    """One split. ``x[m]`` is (N, *shape_m) float32, ``y`` is (N,) int64 in [0, C).

    ``info_type`` (N,) int64 indexes ``MultimodalDataset.info_types`` (synthetic data only, else None).
    """

    x: list[np.ndarray]
    y: np.ndarray
    info_type: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.y)
        for m, xm in enumerate(self.x):
            if xm.ndim < 2 or xm.shape[0] != n or min(xm.shape[1:]) < 1:
                raise ValueError(f"modality {m}: expected shape (N={n}, *shape) with every size >= 1, "
                                 f"got {xm.shape}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(int(s) for s in xm.shape[1:]) for xm in self.x]

    def subset(self, idx: np.ndarray) -> Split:
        it = None if self.info_type is None else self.info_type[idx]
        return Split([xm[idx] for xm in self.x], self.y[idx], it)


def split_hashers(num_modalities: int) -> list[Any]:
    """One sha256 per modality plus one for the labels: fed chunk by chunk, so a split hashes the same
    whether it is in memory or streamed in batches."""
    return [hashlib.sha256() for _ in range(num_modalities + 1)]


def update_hashers(hashers: list[Any], xs: list[np.ndarray], y: np.ndarray) -> None:
    """Feed a chunk of rows: features as float32 (C order, sample-major), labels as int64."""
    for h, xm in zip(hashers, xs, strict=False):
        h.update(np.ascontiguousarray(xm, dtype=np.float32).tobytes())
    hashers[-1].update(np.ascontiguousarray(y, dtype=np.int64).tobytes())


@dataclass
class MultimodalDataset:
    name: str
    modalities: list[str]
    num_classes: int
    splits: dict[str, Any]  # split name -> Split (in memory) or data.stream.ShardSplit (streamed)
    info_types: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # e.g. analytic ceilings of a synthetic preset
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Per-modality sample shape without N, e.g. ``[(6,), (1, 16, 16)]``."""
        return list(self.splits["train"].shapes)

    @property
    def dims(self) -> list[int]:
        """Per-modality flat width (product of the shape): what a vector model would see."""
        return [flat_width(s) for s in self.shapes]

    @property
    def streamed(self) -> bool:
        return any(not isinstance(sp, Split) for sp in self.splits.values())

    def fingerprint(self) -> str:
        """Content hash of all splits (the dataset's identity in MLflow lineage).

        Covers every modality's shape and the stored dtype (features float32, labels int64) and every
        value, split by split. A streamed dataset gives the same digest as the same data in memory.
        """
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()
        h.update(("shapes=" + repr(self.shapes) + ";dtype=float32;labels=int64").encode())
        for s in SPLITS:
            if s not in self.splits:
                continue
            sp = self.splits[s]
            h.update(s.encode())
            hashers = split_hashers(len(self.modalities))
            if isinstance(sp, Split):
                update_hashers(hashers, sp.x, sp.y)
            else:  # one streamed pass over the split's rows
                for xs, y in sp.chunks():
                    update_hashers(hashers, xs, y)
            for part in hashers:
                h.update(part.digest())
        digest = h.hexdigest()[:16]
        if self.streamed:  # a streamed pass costs a read of the whole dataset: do it once
            self._fingerprint = digest
        return digest


def resplit(ds: MultimodalDataset, pooled: tuple[str, ...], seed: int) -> MultimodalDataset:
    """Re-draw which rows of the ``pooled`` splits go to which of them, from ``seed``.

    Every pooled split keeps its size and its count of each class (a stratified re-draw): class c's rows
    of all pooled splits are shuffled together and dealt back in the stored per-split counts. Splits not
    pooled (e.g. a test split of unseen speakers under ``train+val``) are kept as stored. Row order within
    a split is the pooled shuffle's order, so two seeds give different splits and the same seed the same.
    """
    if len(pooled) < 2:
        return ds
    parts = [ds.splits[s] for s in pooled]
    x = [np.concatenate([p.x[m] for p in parts]) for m in range(len(ds.modalities))]
    y = np.concatenate([p.y for p in parts])
    it = None if any(p.info_type is None for p in parts) else np.concatenate([p.info_type for p in parts])
    owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])  # (N,) stored split index
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E517]))
    dealt: list[list[np.ndarray]] = [[] for _ in parts]
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        counts = np.bincount(owner[y == c], minlength=len(parts))
        for i, chunk in enumerate(np.split(rows, np.cumsum(counts)[:-1])):
            dealt[i].append(chunk)
    pool = Split(x, y, it)
    splits = dict(ds.splits)
    for i, name in enumerate(pooled):
        idx = np.concatenate(dealt[i])
        splits[name] = pool.subset(idx[rng.permutation(len(idx))])
    return MultimodalDataset(name=ds.name, modalities=ds.modalities, num_classes=ds.num_classes, splits=splits,
                             info_types=ds.info_types, meta={**ds.meta, "resplit": {"splits": list(pooled),
                                                                                     "seed": seed}})

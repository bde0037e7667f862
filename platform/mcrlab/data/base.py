"""The in-memory form every dataset loader returns.

A dataset is M modalities of pre-extracted float features plus integer labels, split into
train/val/test. Loaders (synthetic, mfeat, digits, Parquet shards) all produce a ``MultimodalDataset``;
the training loop only ever sees this type.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Split", "MultimodalDataset", "SPLITS"]

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split. ``x[m]`` is (N, d_m) float32, ``y`` is (N,) int64 in [0, C).

    ``info_type`` (N,) int64 indexes ``MultimodalDataset.info_types`` (synthetic data only, else None).
    """

    x: list[np.ndarray]
    y: np.ndarray
    info_type: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.y)
        for m, xm in enumerate(self.x):
            if xm.ndim != 2 or xm.shape[0] != n:
                raise ValueError(f"modality {m}: expected shape (N={n}, d), got {xm.shape}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> Split:
        it = None if self.info_type is None else self.info_type[idx]
        return Split([xm[idx] for xm in self.x], self.y[idx], it)


@dataclass
class MultimodalDataset:
    name: str
    modalities: list[str]
    num_classes: int
    splits: dict[str, Split]
    info_types: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # e.g. analytic ceilings of a synthetic preset

    @property
    def dims(self) -> list[int]:
        return [xm.shape[1] for xm in self.splits["train"].x]

    def fingerprint(self) -> str:
        """Content hash of all splits (the dataset's identity in MLflow lineage)."""
        h = hashlib.sha256()
        for s in SPLITS:
            if s not in self.splits:
                continue
            sp = self.splits[s]
            h.update(s.encode())
            for xm in sp.x:
                h.update(np.ascontiguousarray(xm, dtype=np.float32).tobytes())
            h.update(np.ascontiguousarray(sp.y, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

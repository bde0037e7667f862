"""Turn users' feature files into Parquet shards (``mcrlab data import SRC DEST``).

Two sources:

- ``.npz`` (``np.savez``): one 2-D float array (N, d_m) per modality, keyed by the modality name,
  plus ``label`` (N,) int and optionally ``split`` (N,) str, ``sample_id`` (N,) and ``group`` (N,).
- a folder of CSV files: ``labels.csv`` with a header row and a ``label`` column (optionally
  ``split``, ``sample_id``, ``group`` columns), and one ``<modality>.csv`` per modality holding N rows
  of d_m numbers (comma-separated; an optional header row of non-numbers is skipped). Row i of every
  file is sample i.

Without a ``split``, seeded stratified 60/20/20 splits are made (``--seed``).
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from mcrlab.config import ConfigError
from mcrlab.data.base import SPLITS
from mcrlab.data.real import stratified_split
from mcrlab.data.shards import DEFAULT_ROWS_PER_SHARD, RESERVED, write_shards

__all__ = ["import_features", "read_npz", "read_csv_folder"]

Arrays = tuple[dict[str, np.ndarray], np.ndarray, np.ndarray | None, dict[str, np.ndarray]]


def read_npz(src: Path) -> Arrays:
    """-> (features by modality, labels, split or None, extras {sample_id, group})."""
    if not zipfile.is_zipfile(src):  # else numpy's message suggests allow_pickle, i.e. unsafe loading
        raise ConfigError(f"{src}: not a .npz archive (np.savez writes a zip file of arrays)")
    try:
        with np.load(src, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise ConfigError(f"{src}: not a readable .npz file ({err})") from None
    if "label" not in arrays:
        raise ConfigError(f"{src}: key 'label' missing (keys: {', '.join(arrays) or 'none'})")
    features = {k: v for k, v in arrays.items() if k not in RESERVED}
    extras = {k: arrays[k] for k in ("sample_id", "group") if k in arrays}
    return features, arrays["label"], arrays.get("split"), extras


def _read_numeric_csv(path: Path) -> np.ndarray:
    """A CSV of numbers -> (N, d) float64; a non-numeric first row is a header; ragged rows raise."""
    rows: list[list[float]] = []
    with path.open(newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            try:
                values = [float(c) for c in row]
            except ValueError:
                if lineno == 1:
                    continue  # header
                raise ConfigError(f"{path}: line {lineno}: non-numeric value in {row[:4]}") from None
            if rows and len(values) != len(rows[0]):
                raise ConfigError(f"{path}: line {lineno}: ragged feature lengths, {len(values)} values, "
                                  f"expected {len(rows[0])}")
            rows.append(values)
    if not rows:
        raise ConfigError(f"{path}: no rows of numbers")
    return np.asarray(rows, dtype=np.float64)


def read_csv_folder(src: Path) -> Arrays:
    labels_file = src / "labels.csv"
    if not labels_file.is_file():
        raise ConfigError(f"{labels_file}: missing (a CSV folder needs labels.csv with a 'label' column)")
    with labels_file.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    if not table or "label" not in table[0]:
        raise ConfigError(f"{labels_file}: column 'label' missing from the header row")
    try:
        label = np.asarray([int(r["label"]) for r in table], dtype=np.int64)
    except (TypeError, ValueError):
        raise ConfigError(f"{labels_file}: column 'label': every value must be an integer") from None
    split = np.asarray([r["split"].strip() for r in table], dtype=object) if "split" in table[0] else None
    extras = {k: np.asarray([r[k] for r in table]) for k in ("sample_id", "group") if k in table[0]}
    features = {}
    for f in sorted(src.glob("*.csv")):
        if f.name == "labels.csv":
            continue
        x = _read_numeric_csv(f)
        if len(x) != len(label):
            raise ConfigError(f"{f}: {len(x)} rows, but labels.csv has {len(label)}")
        features[f.stem] = x
    return features, label, split, extras


MAX_CLASSES = 10_000  # a label above this is a mistake (a raw id, a float column), not a class


def validate_arrays(features: dict[str, np.ndarray], label: np.ndarray, source: str) -> None:
    """Refuse what would import silently wrong: 0 rows, a width-0 or complex or non-numeric feature,
    labels that are not small non-negative integers or that hold fewer than two classes."""
    label = np.asarray(label)
    if label.ndim != 1 or label.dtype == bool or not np.issubdtype(label.dtype, np.integer):
        raise ConfigError(f"{source}: key 'label': expected a 1-D array of integers, got {label.dtype} "
                          f"with shape {label.shape}")
    if len(label) == 0:
        raise ConfigError(f"{source}: key 'label': no rows (an empty dataset)")
    lo, hi = int(label.min()), int(label.max())
    if hi >= MAX_CLASSES:  # negative labels are reported by write_shards, with their row
        raise ConfigError(f"{source}: key 'label': label {hi} is not a class index (labels are 0..C-1, "
                          f"C at most {MAX_CLASSES})")
    if len(np.unique(label)) < 2:
        raise ConfigError(f"{source}: key 'label': only one class ({lo}); need at least 2 classes")
    for m, x in features.items():
        x = np.asarray(x)
        if np.iscomplexobj(x) or x.dtype == bool or not np.issubdtype(x.dtype, np.number):
            raise ConfigError(f"{source}: key '{m}': expected real numbers, got {x.dtype}")
        if x.ndim != 2 or x.shape[1] == 0:
            raise ConfigError(f"{source}: key '{m}': expected a 2-D float array (rows, width >= 1), "
                              f"got shape {x.shape}")


def import_features(src: str | Path, dest: str | Path, *, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                    seed: int = 0, num_classes: int | None = None, overwrite: bool = False) -> list[Path]:
    """Convert ``src`` (.npz file or CSV folder) into shards under ``dest``; returns the files written."""
    p = Path(src)
    if p.is_file() and p.suffix == ".npz":
        features, label, split, extras = read_npz(p)
    elif p.is_dir():
        features, label, split, extras = read_csv_folder(p)
    elif not p.exists():
        raise ConfigError(f"{p}: no such file or folder")
    else:
        raise ConfigError(f"{p}: unsupported source (expected a .npz file or a folder of CSV files)")
    label = np.asarray(label)
    validate_arrays(features, label, str(p))
    if split is None:
        if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
            raise ConfigError(f"{p}: key 'label': expected a 1-D array of integers, got {label.dtype} "
                              f"with shape {label.shape}")
        idx = stratified_split(label, seed)
        split = np.empty(len(label), dtype=object)
        for s in SPLITS:
            split[idx[s]] = s
    return write_shards(dest, features, label, split, sample_id=extras.get("sample_id"),
                        group=extras.get("group"), num_classes=num_classes, name=Path(dest).name,
                        rows_per_shard=rows_per_shard, overwrite=overwrite, source=str(p))

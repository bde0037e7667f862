"""What a dataset must satisfy, checked once for every way data comes in (import, shards, plug-ins).

Pure numpy (no pyarrow): the shard writer and reader (``shards``) and the importers (``importers``) both
call these checks, so there is one definition of valid input and one wording of each message.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcrlab.config import ConfigError
from mcrlab.data.base import SPLITS

__all__ = ["RESERVED", "MAX_CLASSES", "ValidArrays", "validate_arrays", "check_features", "check_labels",
           "check_splits"]

RESERVED = ("label", "split", "sample_id", "group")  # column names that are not modalities
MAX_CLASSES = 10_000  # labels are class indices 0..C-1; beyond this they are ids, not classes


@dataclass
class ValidArrays:
    """Arrays that passed ``validate_arrays``: features (N, *shape) float32, label (N,) int64, split (N,)
    object of train/val/test, the number of classes, and the optional per-row extras."""

    features: dict[str, np.ndarray]
    label: np.ndarray
    split: np.ndarray | None
    num_classes: int
    sample_id: np.ndarray | None = None
    group: np.ndarray | None = None


def validate_arrays(features: dict[str, np.ndarray], label: np.ndarray, split: np.ndarray | None, *,
                    sample_id: np.ndarray | None = None, group: np.ndarray | None = None,
                    num_classes: int | None = None, source: str = "<arrays>") -> ValidArrays:
    """Check everything a dataset must satisfy; raise one ConfigError line naming ``source`` and the key.

    Refused: fewer than two modalities or reserved names; 0 rows; a modality that is not a real-valued
    array of rank >= 2 (complex, strings, objects), has a size-0 axis, another row count than ``label``,
    or NaN/inf values (also after the float32 cast); labels that are not integers in [0, C) with
    2 <= C <= min(N, MAX_CLASSES) (C = ``num_classes`` or the largest label + 1) or that hold one class
    only; a split other than train/val/test or one without rows; extras of another length.
    ``split=None`` skips the split checks (the importer makes the split after checking the labels).
    """
    mods = list(features)
    if len(mods) < 2:
        raise ConfigError(f"{source}: found {len(mods)} modality array(s) {mods}; need at least two")
    label = np.asarray(label)
    if label.ndim != 1:
        raise ConfigError(f"{source}: key 'label': expected a 1-D array of integers, got {label.dtype} "
                          f"with shape {label.shape}")
    n = len(label)
    if n == 0:
        raise ConfigError(f"{source}: key 'label': 0 rows (a dataset needs samples)")
    integral = np.issubdtype(label.dtype, np.integer) or (
        np.issubdtype(label.dtype, np.floating) and bool(np.all(np.isfinite(label)))
        and bool(np.all(label == np.round(label))))
    if not integral or label.dtype == np.bool_:
        raise ConfigError(f"{source}: key 'label': expected a 1-D array of integers, got {label.dtype} "
                          f"with shape {label.shape}")
    if np.issubdtype(label.dtype, np.floating) and float(np.max(np.abs(label))) >= 2**62:
        raise ConfigError(f"{source}: key 'label': label {label[np.argmax(np.abs(label))]:g} is not a class "
                          f"index")
    label = label.astype(np.int64)
    inferred = num_classes is None
    nc = int(label.max()) + 1 if num_classes is None else int(num_classes)
    check_labels(label, nc, source, "key 'label'")
    if nc > MAX_CLASSES or (inferred and nc > n):
        raise ConfigError(f"{source}: key 'label': largest label {int(label.max())} means {nc} classes for "
                          f"{n} rows; labels must be class indices 0..C-1 with C <= "
                          f"{min(n, MAX_CLASSES) if inferred else MAX_CLASSES} (relabel them)")
    present = len(np.unique(label))
    if nc < 2 or present < 2:
        raise ConfigError(f"{source}: key 'label': need at least 2 classes, found {present} distinct "
                          f"label(s)")
    if split is not None:
        split = np.asarray(split)
        if split.shape != (n,):
            raise ConfigError(f"{source}: key 'split': expected shape ({n},), got {split.shape}")
        split = split.astype(str).astype(object)
        check_splits(split, source, "key 'split'")
        for s in SPLITS:
            if not np.any(split == s):
                raise ConfigError(f"{source}: key 'split': split '{s}' has no rows")
    out = {}
    for m in mods:
        if m in RESERVED:
            raise ConfigError(f"{source}: key '{m}': a modality may not use a reserved name "
                              f"({', '.join(RESERVED)})")
        if not isinstance(m, str) or not m.strip():
            raise ConfigError(f"{source}: key {m!r}: a modality name must be a non-empty string")
        xm = np.asarray(features[m])
        if np.iscomplexobj(xm):
            raise ConfigError(f"{source}: key '{m}': complex values ({xm.dtype}) are not supported; "
                              f"store the real and imaginary parts as channels")
        if not np.issubdtype(xm.dtype, np.number) or xm.dtype == np.bool_:
            raise ConfigError(f"{source}: key '{m}': expected a real-valued numeric array, got {xm.dtype}")
        if xm.ndim < 2:
            raise ConfigError(f"{source}: key '{m}': expected a 2-D float array of shape ({n}, d) or "
                              f"higher rank ({n}, *shape), got {xm.dtype} with shape {xm.shape}")
        if xm.shape[0] != n:
            raise ConfigError(f"{source}: key '{m}': {xm.shape[0]} rows, but 'label' has {n}: expected shape "
                              f"({n}, d) or ({n}, *shape), got {xm.shape}")
        if min(xm.shape[1:]) < 1:
            raise ConfigError(f"{source}: key '{m}': shape {xm.shape} has a size-0 axis (no features)")
        with np.errstate(over="ignore"):
            xm = xm.astype(np.float32)
        check_features(xm, m, source)
        out[m] = xm
    extras: dict[str, np.ndarray | None] = {}
    for key, arr in (("sample_id", sample_id), ("group", group)):
        if arr is None:
            extras[key] = None
            continue
        arr = np.asarray(arr)
        if arr.shape != (n,):
            raise ConfigError(f"{source}: key '{key}': expected shape ({n},), got {arr.shape}")
        if key == "sample_id" and not (np.issubdtype(arr.dtype, np.integer) or arr.dtype.kind == "U"):
            raise ConfigError(f"{source}: key 'sample_id': expected integers or strings, got {arr.dtype}")
        extras[key] = arr
    return ValidArrays(out, label, split, nc, extras["sample_id"], extras["group"])



def check_features(x: np.ndarray, col: str, where: str) -> None:
    """NaN/inf (also after float32 overflow) in (N, *shape) features raise naming the first bad row."""
    finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ConfigError(f"{where}: column '{col}': {len(bad)} rows have NaN/inf features "
                          f"(first at row {bad[0]})")


def check_labels(y: np.ndarray, num_classes: int, where: str, key: str = "column 'label'") -> None:
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        raise ConfigError(f"{where}: {key}: label {y[bad[0]]} at row {bad[0]} is outside [0, {num_classes}) "
                          f"(num_classes={num_classes})")


def check_splits(s: np.ndarray, where: str, key: str = "column 'split'") -> None:
    unknown = sorted(set(np.unique(s).tolist()) - set(SPLITS))
    if unknown:
        raise ConfigError(f"{where}: {key}: unknown split value {unknown[0]!r} "
                          f"(allowed: {', '.join(SPLITS)})")

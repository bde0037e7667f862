"""Parquet feature shards: the schema, a validating local reader and a writer.

A dataset is one Parquet file or a folder of them (``part-00000.parquet``, ...), one row per sample:

======================  =================================  ==========================================
column                  Arrow type                         meaning
======================  =================================  ==========================================
``label``               int (any width)                    class in [0, num_classes)
``split``               string                             ``train``, ``val`` or ``test``
``sample_id``           int64 or string, optional          stable id of the sample
``group``               string, optional                   e.g. speaker / video (kept, not used)
``<modality>``          fixed_size_list<float32>[d_m]      pre-extracted features of that modality
======================  =================================  ==========================================

The file's key-value metadata holds, under the key ``mcrlab``, a JSON object with ``format``
(``"mcrlab.shards"``), ``version`` (1), ``name``, ``modalities`` (column names, in order), ``dims``,
``num_classes``, ``created_by`` and ``split_counts`` (rows per split in that file). Every file of a
dataset must agree on everything but ``split_counts``.

The reader checks everything a training run would otherwise trip over later (missing columns,
ragged or non-finite features, labels out of range, unknown or empty splits, shards that disagree) and
raises a one-line ``ConfigError`` naming the file and the column or key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mcrlab.config import ConfigError
from mcrlab.data.base import SPLITS, MultimodalDataset, Split

__all__ = ["FORMAT", "META_KEY", "RESERVED", "ShardMeta", "shard_files", "read_meta", "load_shards",
           "write_shards", "table_features", "table_labels", "table_splits", "check_features"]

FORMAT = "mcrlab.shards"
VERSION = 1
META_KEY = b"mcrlab"
RESERVED = ("label", "split", "sample_id", "group")
DEFAULT_ROWS_PER_SHARD = 50_000


def _creator() -> str:
    try:
        from importlib.metadata import version

        return f"mcrlab {version('mcrlab')}"
    except Exception:  # noqa: BLE001 - metadata is cosmetic; never fail a write over it
        return "mcrlab"


class ShardMeta(dict):
    """The parsed ``mcrlab`` metadata of one file (a dict with a few typed accessors)."""

    @property
    def modalities(self) -> list[str]:
        return list(self["modalities"])

    @property
    def dims(self) -> list[int]:
        return [int(d) for d in self["dims"]]

    @property
    def num_classes(self) -> int:
        return int(self["num_classes"])

    def identity(self) -> dict:
        """What every shard of a dataset must agree on."""
        return {k: v for k, v in self.items() if k != "split_counts"}


# --------------------------------------------------------------------------------------------------
# locating files and reading metadata


def shard_files(path: str | Path) -> list[Path]:
    """The Parquet files of a dataset: ``path`` itself, or every ``*.parquet`` under it, sorted."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data.name: '{path}': no such file or folder (a dataset is synthetic:<preset>, "
                          f"mfeat:<view>+<view>, digits, or Parquet shards; see `mcrlab data list`)")
    if p.is_file():
        return [p]
    files = sorted(f for f in p.rglob("*.parquet") if f.is_file())
    if not files:
        raise ConfigError(f"{p}: no *.parquet files in this folder (create shards with `mcrlab data import`)")
    return files


def read_meta(file: Path) -> tuple[pa.Schema, ShardMeta]:
    """Schema and validated ``mcrlab`` metadata of one file (reads the footer only)."""
    try:
        schema = pq.read_schema(file)
    except (pa.ArrowException, OSError) as err:
        raise ConfigError(f"{file}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise ConfigError(f"{file}: key 'mcrlab' missing from the Parquet key-value metadata "
                          f"(write shards with `mcrlab data import` or mcrlab.data.shards.write_shards)")
    try:
        meta = ShardMeta(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{file}: metadata key 'mcrlab' is not valid JSON") from None
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{file}: metadata key 'mcrlab.format' must be '{FORMAT}', "
                          f"got {meta.get('format')!r}")
    mods, dims, nc = meta.get("modalities"), meta.get("dims"), meta.get("num_classes")
    if not isinstance(mods, list) or len(mods) < 2 or not all(isinstance(m, str) and m for m in mods):
        raise ConfigError(f"{file}: metadata key 'mcrlab.modalities' must list >= 2 column names, "
                          f"got {mods!r}")
    if set(mods) & set(RESERVED) or len(set(mods)) != len(mods):
        raise ConfigError(f"{file}: metadata key 'mcrlab.modalities' has a reserved or repeated name: {mods}")
    if (not isinstance(dims, list) or len(dims) != len(mods)
            or not all(isinstance(d, int) and d >= 1 for d in dims)):
        raise ConfigError(f"{file}: metadata key 'mcrlab.dims' must give one positive width per modality, "
                          f"got {dims!r}")
    if not isinstance(nc, int) or isinstance(nc, bool) or nc < 2:
        raise ConfigError(f"{file}: metadata key 'mcrlab.num_classes' must be an integer >= 2, got {nc!r}")
    _check_schema(file, schema, meta)
    return schema, meta


def _check_schema(file: Path, schema: pa.Schema, meta: ShardMeta) -> None:
    names = set(schema.names)
    for col in ("label", "split"):
        if col not in names:
            raise ConfigError(f"{file}: column '{col}' missing "
                              f"(see docs/datasets.md, Parquet feature shards)")
    if not pa.types.is_integer(schema.field("label").type):
        raise ConfigError(f"{file}: column 'label' must be an integer type, got {schema.field('label').type}")
    split_type = schema.field("split").type
    if not (pa.types.is_string(split_type) or pa.types.is_large_string(split_type)):
        raise ConfigError(f"{file}: column 'split' must be a string type, got {schema.field('split').type}")
    for m, d in zip(meta.modalities, meta.dims, strict=True):
        if m not in names:
            raise ConfigError(f"{file}: modality column '{m}' missing (metadata lists {meta.modalities})")
        t = schema.field(m).type
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) or not (
                pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
            raise ConfigError(f"{file}: column '{m}' must be a list of floats, got {t}")
        if pa.types.is_fixed_size_list(t) and t.list_size != d:
            raise ConfigError(f"{file}: column '{m}' holds {t.list_size} features per row but metadata "
                              f"'mcrlab.dims' says {d}")


# --------------------------------------------------------------------------------------------------
# column converters (shared with the Ray Data path, which sees the same Arrow tables in batches)


def table_features(table: pa.Table, col: str, dim: int, where: str) -> np.ndarray:
    """Column ``col`` of list<float> -> (N, dim) float32; ragged, null and non-finite rows raise."""
    arr = table.column(col).combine_chunks() if table.num_rows else pa.array([], table.schema.field(col).type)
    if arr.null_count:
        raise ConfigError(f"{where}: column '{col}': {arr.null_count} rows are null")
    if not pa.types.is_fixed_size_list(arr.type):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != dim)
        if len(bad):
            raise ConfigError(f"{where}: column '{col}': ragged feature lengths, row {bad[0]} has "
                              f"{lengths[bad[0]]} values, expected {dim}")
    values = arr.flatten()
    if values.null_count:
        raise ConfigError(f"{where}: column '{col}': {values.null_count} feature values are null")
    x = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(arr), dim)
    check_features(x, col, where)
    return x


def check_features(x: np.ndarray, col: str, where: str) -> None:
    """NaN/inf (also after float32 overflow) in (N, d) features raise naming the first bad row."""
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ConfigError(f"{where}: column '{col}': {len(bad)} rows have NaN/inf features "
                          f"(first at row {bad[0]})")


def table_labels(table: pa.Table, num_classes: int, where: str) -> np.ndarray:
    """Column ``label`` -> (N,) int64 in [0, num_classes); nulls and out-of-range values raise."""
    arr = table.column("label")
    if arr.null_count:
        raise ConfigError(f"{where}: column 'label': {arr.null_count} rows are null")
    y = arr.to_numpy().astype(np.int64)
    check_labels(y, num_classes, where)
    return y


def check_labels(y: np.ndarray, num_classes: int, where: str, key: str = "column 'label'") -> None:
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        raise ConfigError(f"{where}: {key}: label {y[bad[0]]} at row {bad[0]} is outside [0, {num_classes}) "
                          f"(num_classes={num_classes})")


def table_splits(table: pa.Table, where: str) -> np.ndarray:
    """Column ``split`` -> (N,) str; nulls and values other than train/val/test raise."""
    arr = table.column("split")
    if arr.null_count:
        raise ConfigError(f"{where}: column 'split': {arr.null_count} rows are null")
    s = np.asarray(arr.to_pylist(), dtype=object)
    check_splits(s, where)
    return s


def check_splits(s: np.ndarray, where: str, key: str = "column 'split'") -> None:
    unknown = sorted(set(np.unique(s).tolist()) - set(SPLITS))
    if unknown:
        raise ConfigError(f"{where}: {key}: unknown split value {unknown[0]!r} "
                          f"(allowed: {', '.join(SPLITS)})")


# --------------------------------------------------------------------------------------------------
# local reader


def load_shards(path: str, seed: int = 0) -> MultimodalDataset:
    """Read every shard of ``path`` into memory, validated. ``x[m]`` is (N_split, dims[m]) float32.

    ``seed`` is unused: the splits are stored in the ``split`` column (the importer makes seeded
    stratified splits when the source has none). Features are returned as stored (no standardising).
    """
    del seed
    files = shard_files(path)
    first_meta: ShardMeta | None = None
    first_schema: pa.Schema | None = None
    parts: dict[str, list[tuple[list[np.ndarray], np.ndarray]]] = {s: [] for s in SPLITS}
    for f in files:
        schema, meta = read_meta(f)
        if first_meta is None:
            first_meta, first_schema = meta, schema
        else:
            check_same_schema(f, schema, meta, files[0], first_schema, first_meta)
        table = pq.read_table(f, columns=[*meta.modalities, "label", "split"])
        y = table_labels(table, meta.num_classes, str(f))
        s = table_splits(table, str(f))
        x = [table_features(table, m, d, str(f)) for m, d in zip(meta.modalities, meta.dims, strict=True)]
        for name in SPLITS:
            idx = np.flatnonzero(s == name)
            if len(idx):
                parts[name].append(([xm[idx] for xm in x], y[idx]))
    assert first_meta is not None
    splits = {}
    for name in SPLITS:
        if not parts[name]:
            raise ConfigError(f"{path}: column 'split': split '{name}' has no rows (every dataset needs "
                              f"train, val and test rows)")
        xs = [np.concatenate([p[0][m] for p in parts[name]]) for m in range(len(first_meta.modalities))]
        splits[name] = Split(xs, np.concatenate([p[1] for p in parts[name]]))
    return MultimodalDataset(name=str(first_meta.get("name") or path), modalities=first_meta.modalities,
                             num_classes=first_meta.num_classes, splits=splits,
                             meta={"path": str(path), "files": len(files),
                                   "created_by": first_meta.get("created_by", "")})


def check_same_schema(file: Path, schema: pa.Schema, meta: ShardMeta, ref_file: Path,
                      ref_schema: pa.Schema | None, ref_meta: ShardMeta) -> None:
    """Shards of one dataset must share metadata (but split counts) and column types."""
    a, b = meta.identity(), ref_meta.identity()
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            raise ConfigError(f"{file}: mismatched schema between shards: metadata 'mcrlab.{key}' is "
                              f"{a.get(key)!r} here but {b.get(key)!r} in {ref_file.name}")
    assert ref_schema is not None
    for name in [*meta.modalities, "label", "split"]:
        if schema.field(name).type != ref_schema.field(name).type:
            raise ConfigError(f"{file}: mismatched schema between shards: column '{name}' is "
                              f"{schema.field(name).type} here but {ref_schema.field(name).type} "
                              f"in {ref_file.name}")


# --------------------------------------------------------------------------------------------------
# writer


def write_shards(dest: str | Path, features: dict[str, np.ndarray], label: np.ndarray, split: np.ndarray,
                 *, sample_id: np.ndarray | None = None, group: np.ndarray | None = None,
                 num_classes: int | None = None, name: str | None = None,
                 rows_per_shard: int = DEFAULT_ROWS_PER_SHARD, overwrite: bool = False,
                 source: str = "<arrays>") -> list[Path]:
    """Validate arrays and write them as ``dest/part-NNNNN.parquet``.

    ``features[m]`` (N, d_m) float, ``label`` (N,) int, ``split`` (N,) str in train/val/test, optional
    ``sample_id`` (N,) int or str (default: row number) and ``group`` (N,). Rows are written ordered by
    split (train, val, test; stable within a split) so that most shards hold one split, which lets the
    Ray Data path hand whole files to workers. Errors name ``source`` and the offending key.
    """
    if rows_per_shard < 1:
        raise ConfigError(f"--rows-per-shard: must be >= 1, got {rows_per_shard}")
    mods = list(features)
    if len(mods) < 2:
        raise ConfigError(f"{source}: found {len(mods)} modality array(s) {mods}; need at least two")
    label = np.asarray(label)
    n = len(label)
    integral = np.issubdtype(label.dtype, np.integer) or (
        np.issubdtype(label.dtype, np.floating) and bool(np.all(label == np.round(label))))
    if label.ndim != 1 or not integral:
        raise ConfigError(f"{source}: key 'label': expected a 1-D array of integers, got {label.dtype} "
                          f"with shape {label.shape}")
    label = label.astype(np.int64)
    nc = int(label.max()) + 1 if num_classes is None and n else int(num_classes or 0)
    check_labels(label, nc, source, "key 'label'")
    if nc < 2:
        raise ConfigError(f"{source}: key 'label': need at least 2 classes, found {nc}")
    split = np.asarray(split).astype(str).astype(object)
    if split.shape != (n,):
        raise ConfigError(f"{source}: key 'split': expected shape ({n},), got {split.shape}")
    check_splits(split, source, "key 'split'")
    for s in SPLITS:
        if not np.any(split == s):
            raise ConfigError(f"{source}: key 'split': split '{s}' has no rows")
    xs = []
    for m in mods:
        if m in RESERVED:
            raise ConfigError(f"{source}: key '{m}': a modality may not use a reserved name "
                              f"({', '.join(RESERVED)})")
        xm = np.asarray(features[m])
        if xm.ndim != 2 or xm.shape[0] != n or not np.issubdtype(xm.dtype, np.number):
            raise ConfigError(f"{source}: key '{m}': expected a 2-D float array of shape ({n}, d), got "
                              f"{xm.dtype} with shape {xm.shape}")
        xm = xm.astype(np.float32)
        check_features(xm, m, source)
        xs.append(xm)
    for key, arr in (("sample_id", sample_id), ("group", group)):
        if arr is not None and np.shape(arr) != (n,):
            raise ConfigError(f"{source}: key '{key}': expected shape ({n},), got {np.shape(arr)}")
    sample_id = np.arange(n, dtype=np.int64) if sample_id is None else np.asarray(sample_id)

    out = Path(dest)
    if out.is_file():
        raise ConfigError(f"{out}: is a file; the destination of shards is a folder")
    existing = sorted(out.glob("*.parquet")) if out.is_dir() else []
    if existing:
        if not overwrite:
            raise ConfigError(f"{out}: already holds Parquet files (pass --overwrite to replace them)")
        for f in existing:  # only our own kind of file: never wipe a folder the user pointed at by mistake
            f.unlink()
    out.mkdir(parents=True, exist_ok=True)

    rank = {s: i for i, s in enumerate(SPLITS)}
    order = np.argsort(np.vectorize(rank.get)(split), kind="stable")
    base = {"format": FORMAT, "version": VERSION, "name": name or out.name, "modalities": mods,
            "dims": [x.shape[1] for x in xs], "num_classes": nc, "created_by": _creator()}
    written = []
    for k, start in enumerate(range(0, n, rows_per_shard)):
        idx = order[start:start + rows_per_shard]
        cols: dict[str, pa.Array] = {"label": pa.array(label[idx], pa.int64()),
                                     "split": pa.array(split[idx].tolist(), pa.string())}
        cols["sample_id"] = pa.array(sample_id[idx].tolist())
        if group is not None:
            cols["group"] = pa.array(np.asarray(group)[idx].astype(str).tolist(), pa.string())
        for m, xm in zip(mods, xs, strict=True):
            cols[m] = pa.FixedSizeListArray.from_arrays(pa.array(xm[idx].ravel()), xm.shape[1])
        counts = {s: int(np.sum(split[idx] == s)) for s in SPLITS}
        meta = {**base, "split_counts": counts}
        table = pa.table(cols).replace_schema_metadata({META_KEY: json.dumps(meta).encode()})
        path = out / f"part-{k:05d}.parquet"
        pq.write_table(table, path)
        written.append(path)
    return written


def split_counts(files: Iterable[Path]) -> dict[Path, dict[str, int]]:
    """Rows per split in each file: from the metadata, else by reading the ``split`` column only."""
    out = {}
    for f in files:
        _, meta = read_meta(f)
        counts = meta.get("split_counts")
        if not isinstance(counts, dict):
            s = table_splits(pq.read_table(f, columns=["split"]), str(f))
            counts = {name: int(np.sum(s == name)) for name in SPLITS}
        out[f] = {name: int(counts.get(name, 0)) for name in SPLITS}
    return out

"""Parquet feature shards: the schema, a validating local reader and a writer.

A dataset is one Parquet file or a folder of them (``part-00000.parquet``, ...), one row per sample:

======================  =================================  ==========================================
column                  Arrow type                         meaning
======================  =================================  ==========================================
``label``               int (any width)                    class in [0, num_classes)
``split``               string                             ``train``, ``val`` or ``test``
``sample_id``           int64 or string, optional          stable id of the sample
``group``               string, optional                   e.g. speaker / video (kept, not used)
``<modality>``          fixed_size_list<float32>[d_m]      a vector modality (shape ``(d_m,)``)
``<modality>``          fixed_shape_tensor<float32>[shape] a modality of rank >= 2, e.g. ``(C, H, W)``
======================  =================================  ==========================================

A tensor modality uses Arrow's canonical extension type ``arrow.fixed_shape_tensor`` (row-major); its
storage is a ``fixed_size_list<float32>[prod(shape)]``, so readers that do not know the extension see
the flat features. The file's key-value metadata holds, under the key ``mcrlab``, a JSON object with
``format`` (``"mcrlab.shards"``), ``version`` (2), ``name``, ``modalities`` (column names, in order),
``shapes`` (per-modality sample shape without N; absent in version 1 files = vectors), ``dims`` (flat
widths, the products of the shapes), ``num_classes``, ``created_by`` and ``split_counts`` (rows per split
in that file). Every file of a dataset must agree on everything but ``split_counts``.

Row groups hold one split each and at most about ``ROW_GROUP_BYTES`` of features, which is the unit of
streaming reads (``data.loader=stream``). A folder written by ``write_shards`` also holds a manifest,
``_mcrlab_manifest.json``, naming its files: readers read exactly those files (a copy of a shard folder
nested inside it is not read twice), and ``--overwrite`` removes exactly those. A folder without a
manifest is read as the ``*.parquet`` files directly in it (not in sub-folders).

The reader checks everything a training run would otherwise trip over later (missing columns,
ragged or non-finite features, labels out of range, unknown or empty splits, shards that disagree) and
raises a one-line ``ConfigError`` naming the file and the column or key.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mcrlab.config import ConfigError
from mcrlab.data.base import DEFAULT_ROWS_PER_SHARD, SPLITS, MultimodalDataset, Split
from mcrlab.data.validate import RESERVED, check_features, check_labels, check_splits, validate_arrays

__all__ = ["FORMAT", "META_KEY", "RESERVED", "MANIFEST", "ShardMeta", "shard_files", "read_meta",
           "load_shards", "write_shards", "table_features", "table_labels", "table_splits", "check_features",
           "read_manifest"]

FORMAT = "mcrlab.shards"
VERSION = 2
MANIFEST = "_mcrlab_manifest.json"
MANIFEST_FORMAT = "mcrlab.shards.manifest"
ROW_GROUP_BYTES = 8 * 2**20  # streaming granularity: a row group's features stay below ~8 MiB
META_KEY = b"mcrlab"


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
    def shapes(self) -> list[tuple[int, ...]]:
        """Per-modality sample shapes (version 1 files hold vectors: ``(d_m,)``)."""
        if "shapes" in self:
            return [tuple(int(v) for v in sh) for sh in self["shapes"]]
        return [(d,) for d in self.dims]

    @property
    def num_classes(self) -> int:
        return int(self["num_classes"])

    def identity(self) -> dict:
        """What every shard of a dataset must agree on."""
        return {k: v for k, v in self.items() if k != "split_counts"}


# --------------------------------------------------------------------------------------------------
# locating files and reading metadata


def read_manifest(folder: Path) -> list[str] | None:
    """File names listed by ``folder``'s manifest (None when it has none); a bad manifest raises."""
    mf = folder / MANIFEST
    if not mf.is_file():
        return None
    try:
        doc = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{mf}: not a readable manifest ({str(err).splitlines()[0]})") from None
    files = doc.get("files") if isinstance(doc, dict) else None
    if (not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT or not isinstance(files, list)
            or not files):
        raise ConfigError(f"{mf}: key 'files': expected a '{MANIFEST_FORMAT}' manifest listing >= 1 file")
    names = []
    for entry in files:
        name = entry.get("name") if isinstance(entry, dict) else None
        # plain names only: a manifest must never make us read (or delete) outside its folder
        if not isinstance(name, str) or not name.endswith(".parquet") or Path(name).name != name \
                or name.startswith("."):
            raise ConfigError(f"{mf}: key 'files': {str(name)[:80]!r} is not a plain *.parquet file name")
        names.append(name)
    return names


def shard_files(path: str | Path) -> list[Path]:
    """The Parquet files of a dataset: ``path`` itself, the files its manifest names, or (no manifest)
    the ``*.parquet`` files directly in the folder; sorted."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data.name: '{path}': no such file or folder (a dataset is synthetic:<preset>, "
                          f"mfeat:<view>+<view>, digits, package.module:callable, or Parquet shards; see "
                          f"`mcrlab data list`)")
    if p.is_file():
        return [p]
    listed = read_manifest(p)
    if listed is not None:
        files = [p / n for n in sorted(listed)]
        for f in files:
            if not f.is_file():
                raise ConfigError(f"{f}: listed in {MANIFEST} but missing (re-import the dataset)")
        return files
    files = sorted(f for f in p.glob("*.parquet") if f.is_file())
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
    shapes = meta.get("shapes", [[d] for d in dims])
    if (not isinstance(shapes, list) or len(shapes) != len(mods)
            or not all(isinstance(sh, list) and sh and all(isinstance(v, int) and not isinstance(v, bool)
                                                            and v >= 1 for v in sh) for sh in shapes)
            or [math.prod(sh) for sh in shapes] != dims):
        raise ConfigError(f"{file}: metadata key 'mcrlab.shapes' must give one shape of positive sizes per "
                          f"modality whose products are 'mcrlab.dims' {dims!r}, got {str(shapes)[:80]}")
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
    for m, d, shape in zip(meta.modalities, meta.dims, meta.shapes, strict=True):
        if m not in names:
            raise ConfigError(f"{file}: modality column '{m}' missing (metadata lists {meta.modalities})")
        t = schema.field(m).type
        if isinstance(t, pa.FixedShapeTensorType):
            if tuple(t.shape) != shape or not (pa.types.is_floating(t.value_type)
                                               or pa.types.is_integer(t.value_type)):
                raise ConfigError(f"{file}: column '{m}' is a tensor of {t.value_type} with shape "
                                  f"{tuple(t.shape)} but metadata 'mcrlab.shapes' says {shape} (floats)")
            if t.permutation is not None and list(t.permutation) != list(range(len(shape))):
                raise ConfigError(f"{file}: column '{m}': tensors must be row-major (no permutation)")
            continue
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) or not (
                pa.types.is_floating(t.value_type) or pa.types.is_integer(t.value_type)):
            raise ConfigError(f"{file}: column '{m}' must be a list of floats, got {t}")
        if pa.types.is_fixed_size_list(t) and t.list_size != d:
            raise ConfigError(f"{file}: column '{m}' holds {t.list_size} features per row but metadata "
                              f"'mcrlab.dims' says {d}")


# --------------------------------------------------------------------------------------------------
# column converters (shared with the Ray Data path, which sees the same Arrow tables in batches)


def table_features(table: pa.Table, col: str, shape: int | tuple[int, ...], where: str) -> np.ndarray:
    """Column ``col`` (list<float> or fixed_shape_tensor) -> (N, *shape) float32; ragged, null and
    non-finite rows raise. ``shape`` is the sample shape (an int means a vector of that width)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    dim = math.prod(shape)
    arr = table.column(col).combine_chunks() if table.num_rows else pa.array([], table.schema.field(col).type)
    if isinstance(arr, pa.ExtensionArray):  # fixed_shape_tensor: its storage is the flat list
        arr = arr.storage
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
    x = values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(arr), *shape)
    check_features(x, col, where)
    return x


def table_labels(table: pa.Table, num_classes: int, where: str) -> np.ndarray:
    """Column ``label`` -> (N,) int64 in [0, num_classes); nulls and out-of-range values raise."""
    arr = table.column("label")
    if arr.null_count:
        raise ConfigError(f"{where}: column 'label': {arr.null_count} rows are null")
    y = arr.to_numpy().astype(np.int64)
    check_labels(y, num_classes, where)
    return y


def table_splits(table: pa.Table, where: str) -> np.ndarray:
    """Column ``split`` -> (N,) str; nulls and values other than train/val/test raise."""
    arr = table.column("split")
    if arr.null_count:
        raise ConfigError(f"{where}: column 'split': {arr.null_count} rows are null")
    s = np.asarray(arr.to_pylist(), dtype=object)
    check_splits(s, where)
    return s


# --------------------------------------------------------------------------------------------------
# local reader


def load_shards(path: str, seed: int = 0) -> MultimodalDataset:
    """Read every shard of ``path`` into memory, validated. ``x[m]`` is (N_split, *shapes[m]) float32.

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
        x = [table_features(table, m, sh, str(f)) for m, sh in zip(meta.modalities, meta.shapes, strict=True)]
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
    """Validate arrays and write them as ``dest/part-NNNNN.parquet`` plus ``dest/_mcrlab_manifest.json``.

    ``features[m]`` (N, *shape_m) real numbers, ``label`` (N,) int, ``split`` (N,) str in train/val/test,
    optional ``sample_id`` (N,) int or str (default: row number) and ``group`` (N,). Rows are written
    ordered by split (train, val, test; stable within a split) so that most shards hold one split, which
    lets the Ray Data path hand whole files to workers; row groups never mix splits. Errors name
    ``source`` and the offending key (``validate.validate_arrays``).

    Nothing is lost on failure: the files are written into a temporary sibling folder, which then takes
    ``dest``'s place by renames. With ``overwrite``, only the files named by ``dest``'s own manifest are
    replaced; anything else in ``dest`` (a hand-placed file) is carried over. A failed write leaves
    ``dest`` as it was.
    """
    if rows_per_shard < 1:
        raise ConfigError(f"--rows-per-shard: must be >= 1, got {rows_per_shard}")
    v = validate_arrays(features, label, split, sample_id=sample_id, group=group, num_classes=num_classes,
                        source=source)
    out = Path(dest)
    keep = _entries_to_keep(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        written = _write_parts(tmp, v, name or out.name, rows_per_shard)
        for entry in keep:  # hand-placed entries travel into the new folder before the swap
            if (tmp / entry).exists():
                raise ConfigError(f"{out / entry}: not listed in {MANIFEST} but would be overwritten by a "
                                  f"new shard; move it away first")
        _swap_in(tmp, out, keep)
    except OSError as err:  # disk full, file too large, permissions: one line, and dest is unchanged
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"{out}: writing the shards failed, nothing was changed "
                          f"({str(err).splitlines()[0][:160]})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out / f.name for f in written]


def _entries_to_keep(out: Path, overwrite: bool) -> list[str]:
    """Names in ``out`` that are not ours (to carry over); refuses what we may not replace."""
    if out.is_file():
        raise ConfigError(f"{out}: is a file; the destination of shards is a folder")
    if not out.is_dir():
        return []
    listed = read_manifest(out)
    ours = set(listed or []) | ({MANIFEST} if listed is not None else set())
    others = sorted(e.name for e in out.iterdir() if e.name not in ours)
    if listed is not None and not overwrite:
        raise ConfigError(f"{out}: already holds a dataset (pass --overwrite to replace the files its "
                          f"{MANIFEST} lists)")
    foreign = [n for n in others if n.endswith(".parquet")]
    if foreign:
        # not ours (no manifest names them): never delete them, and never mix them into a dataset
        raise ConfigError(f"{out}: holds Parquet files no {MANIFEST} lists ({', '.join(foreign[:3])}); "
                          f"move them away or import into another folder")
    return others


def _swap_in(tmp: Path, out: Path, keep: list[str]) -> None:
    """Make ``tmp`` (new files) become ``out``: carry ``keep`` entries over, then rename the folders."""
    mode = out.stat().st_mode & 0o7777 if out.is_dir() else 0o777 & ~_umask()
    os.chmod(tmp, mode)  # mkdtemp makes 0700; the dataset folder keeps the usual permissions
    if not out.exists():
        os.replace(tmp, out)  # atomic: readers see no folder or the whole new one
        return
    moved = []
    try:
        for entry in keep:
            os.rename(out / entry, tmp / entry)
            moved.append(entry)
    except OSError:
        for entry in moved:  # put back what was moved; dest stays as it was
            os.rename(tmp / entry, out / entry)
        raise
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    os.rmdir(old)
    os.replace(out, old)  # two renames: dest is absent only between them, never half-written
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        for entry in moved:
            os.rename(tmp / entry, out / entry)
        raise
    shutil.rmtree(old, ignore_errors=True)  # holds only the old manifest's files now


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _row_groups(split_sorted: np.ndarray, start: int, stop: int, row_bytes: int) -> list[tuple[int, int]]:
    """[start, stop) cut where the split changes and every ``ROW_GROUP_BYTES`` of features."""
    cap = max(1, ROW_GROUP_BYTES // max(1, row_bytes))
    bounds = [start] + [i for i in range(start + 1, stop) if split_sorted[i] != split_sorted[i - 1]] + [stop]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out += [(i, min(i + cap, b)) for i in range(a, b, cap)]
    return out


def _write_parts(folder: Path, v, name: str, rows_per_shard: int) -> list[Path]:
    """Write validated arrays ``v`` (``validate.ValidArrays``) as part files and a manifest."""
    mods, xs, n = list(v.features), list(v.features.values()), len(v.label)
    rank = {s: i for i, s in enumerate(SPLITS)}
    order = np.argsort(np.vectorize(rank.get)(v.split), kind="stable")
    split_sorted = v.split[order]
    shapes = [list(x.shape[1:]) for x in xs]
    base = {"format": FORMAT, "version": VERSION, "name": name, "modalities": mods, "shapes": shapes,
            "dims": [math.prod(sh) for sh in shapes], "num_classes": v.num_classes, "created_by": _creator()}
    row_bytes = 4 * sum(math.prod(sh) for sh in shapes)
    sample_id = np.arange(n, dtype=np.int64) if v.sample_id is None else v.sample_id
    written, entries = [], []
    for k, start in enumerate(range(0, n, rows_per_shard)):
        stop = min(start + rows_per_shard, n)
        counts = {s: int(np.sum(split_sorted[start:stop] == s)) for s in SPLITS}
        path = folder / f"part-{k:05d}.parquet"
        schema = None
        writer = None
        try:
            for a, b in _row_groups(split_sorted, start, stop, row_bytes):
                table = _table(order[a:b], mods, xs, v, sample_id)
                if writer is None:
                    schema = table.schema.with_metadata({META_KEY: json.dumps({**base, "split_counts": counts})
                                                         .encode()})
                    writer = pq.ParquetWriter(path, schema)
                writer.write_table(table.cast(schema))
        finally:
            if writer is not None:
                writer.close()
        written.append(path)
        entries.append({"name": path.name, "rows": stop - start, "split_counts": counts})
    manifest = {"format": MANIFEST_FORMAT, "version": 1, "name": name, "modalities": mods, "shapes": shapes,
                "num_classes": v.num_classes, "created_by": _creator(), "files": entries}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return written


def _table(idx: np.ndarray, mods: list[str], xs: list[np.ndarray], v, sample_id: np.ndarray) -> pa.Table:
    cols: dict[str, pa.Array] = {"label": pa.array(v.label[idx], pa.int64()),
                                 "split": pa.array(v.split[idx].tolist(), pa.string())}
    cols["sample_id"] = pa.array(sample_id[idx].tolist())
    if v.group is not None:
        cols["group"] = pa.array(np.asarray(v.group)[idx].astype(str).tolist(), pa.string())
    for m, xm in zip(mods, xs, strict=True):
        rows = xm[idx]
        flat = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), math.prod(xm.shape[1:]))
        if xm.ndim == 2:
            cols[m] = flat
        else:
            cols[m] = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float32(), xm.shape[1:]), flat)
    return pa.table(cols)


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

"""Regenerate the binary files of the bad-data corpus (``python tests/reliability/corpus/make_data.py``).

The files are committed; this script documents how each was made (every one is broken on purpose, in
exactly one way). Text cases (CSV folders, a fake .npz) are plain files next to it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent / "data"


def _arrays(n: int = 30, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = {"audio": rng.normal(size=(n, 3)).astype(np.float32), "video": rng.normal(size=(n, 2)).astype(np.float32)}
    label = np.arange(n) % 2
    split = np.array(["train", "val", "test"] * (n // 3), dtype=object)
    return feats, label, split


def _table(feats: dict, label: np.ndarray, split: np.ndarray, meta: dict | None) -> pa.Table:
    cols = {"label": pa.array(label, pa.int64()), "split": pa.array(list(split), pa.string()),
            "sample_id": pa.array(np.arange(len(label)))}
    for m, x in feats.items():
        cols[m] = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), x.shape[1])
    table = pa.table(cols)
    if meta is not None:
        table = table.replace_schema_metadata({b"mcrlab": json.dumps(meta).encode()})
    return table


def _meta(feats: dict, num_classes: int = 2) -> dict:
    return {"format": "mcrlab.shards", "version": 1, "name": "corpus", "modalities": list(feats),
            "dims": [x.shape[1] for x in feats.values()], "num_classes": num_classes}


def main() -> None:
    HERE.mkdir(parents=True, exist_ok=True)
    feats, label, split = _arrays()
    # .npz sources for `mcrlab data import`
    np.savez(HERE / "npz_no_label.npz", audio=feats["audio"], video=feats["video"])
    np.savez(HERE / "npz_one_modality.npz", audio=feats["audio"], label=label)
    np.savez(HERE / "npz_one_class.npz", **feats, label=np.zeros_like(label))
    np.savez(HERE / "npz_float_labels.npz", **feats, label=label + 0.5)
    np.savez(HERE / "npz_unknown_split.npz", **feats, label=label,
             split=np.array(["train", "val", "tst"] * 10))
    bad = {**feats, "video": feats["video"].copy()}
    bad["video"][4, 1] = np.nan
    np.savez(HERE / "npz_nan_feature.npz", **bad, label=label)
    np.savez(HERE / "npz_rows_mismatch.npz", audio=feats["audio"], video=feats["video"][:20], label=label)
    np.savez(HERE / "npz_reserved_modality_name.npz", audio=feats["audio"], group=feats["video"], label=label,
             sample_id=np.arange(30).reshape(10, 3))
    # Parquet shards for `mcrlab data show` / data.name
    pq.write_table(_table(feats, label, split, None), HERE / "shard_no_metadata.parquet")
    bad = {**feats, "video": feats["video"].copy()}
    bad["video"][7, 0] = np.inf
    pq.write_table(_table(bad, label, split, _meta(feats)), HERE / "shard_inf_feature.parquet")
    pq.write_table(_table(feats, label + 5, split, _meta(feats)), HERE / "shard_label_out_of_range.parquet")
    pq.write_table(_table(feats, label, split, {**_meta(feats), "dims": [4, 2]}), HERE / "shard_dims_mismatch.parquet")
    pq.write_table(_table(feats, label, np.array(["train"] * 30, dtype=object), _meta(feats)),
                   HERE / "shard_no_test_split.parquet")
    # inconsistent modalities across the files of one dataset
    mixed = HERE / "shards_inconsistent_modalities"
    mixed.mkdir(exist_ok=True)
    pq.write_table(_table(feats, label, split, _meta(feats)), mixed / "part-00000.parquet")
    other = {"audio": feats["audio"], "text": feats["video"]}
    pq.write_table(_table(other, label, split, _meta(other)), mixed / "part-00001.parquet")
    class_cases()


def class_cases() -> None:
    """Whole classes of bad arrays (validate_arrays): huge labels, complex, 0 rows, width 0."""
    feats, label, _ = _arrays()
    np.savez(HERE / "npz_label_huge.npz", **feats, label=np.where(label == 1, 10**9, 0))  # 10^9 classes
    np.savez(HERE / "npz_complex_feature.npz", audio=feats["audio"] + 1j, video=feats["video"], label=label)
    np.savez(HERE / "npz_zero_rows.npz", audio=np.zeros((0, 3), np.float32), video=np.zeros((0, 2), np.float32),
             label=np.zeros(0, np.int64))
    np.savez(HERE / "npz_width_zero.npz", audio=feats["audio"], video=np.zeros((30, 0), np.float32), label=label)


if __name__ == "__main__":
    main()

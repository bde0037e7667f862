# OMP_NUM_THREADS=1 python jobs/bench_stream.py --json bench_stream.json   (full: 20k and 200k rows, ~25/250 MB)
# python jobs/bench_stream.py --smoke                                        (seconds: 300 and 3,000 rows)
"""Peak memory of a training run against dataset size: streamed (``data.loader=stream``) and in memory.

For each of two dataset sizes 10x apart, shards are written (an image modality (1, 16, 16) and a vector
(64,) per row) and ``fit`` (3 epochs) runs in a fresh subprocess, which reports its peak resident set
size (``resource.getrusage``: the training process itself, and the largest of its reader processes).
Streaming should be flat across size (bounded by the batch, ``data.shuffle_mib`` and the prefetch
depth); in memory it grows with the dataset. Printed as JSON (``--json FILE`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def write_dataset(path: Path, rows: int, seed: int = 0) -> None:
    from mcrlab.data.shards import write_shards

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, rows)
    img = rng.normal(size=(rows, 1, 16, 16)).astype(np.float32) + 0.5 * y[:, None, None, None]
    vec = rng.normal(size=(rows, 64)).astype(np.float32)
    n_tr, n_va = rows * 8 // 10, rows // 10
    split = np.array(["train"] * n_tr + ["val"] * n_va + ["test"] * (rows - n_tr - n_va))
    # the same file and row-group size at every dataset size: only the number of files grows
    write_shards(path, {"img": img, "vec": vec}, y, split, rows_per_shard=2000)


def child(path: str, loader: str, batch_size: int, shuffle_mib: float, workers: int, epochs: int) -> dict:
    """``epochs`` epochs of fit on ``path``; -> peak RSS (MiB) of this process and of its reader processes."""
    from mcrlab.config import load_config
    from mcrlab.engine.fit import fit

    cfg = load_config(None, [f"data.name={path}", f"data.loader={loader}", f"data.workers={workers}",
                             f"data.shuffle_mib={shuffle_mib}", "method.name=joint", f"train.epochs={epochs}",
                             f"train.batch_size={batch_size}", "train.probe_epochs=0", "train.eval_perms=1",
                             "train.device=cpu", "model.hidden=32", "model.latent=16"])
    metrics = fit(cfg)
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    kids_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_rss_mib": round(self_kib / 1024, 1), "reader_peak_rss_mib": round(kids_kib / 1024, 1),
            "test_acc": metrics["test/acc"]}


def _run(args: list[str]) -> str:
    """Run this script in a fresh process. Everything heavy happens in such children: a child's
    ru_maxrss starts from its parent's high-water mark at fork, so the driver must stay small."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *args], capture_output=True,
                         text=True, env=env, check=True)
    return out.stdout


def run_child(path: Path, loader: str, args: argparse.Namespace) -> dict:
    out = _run(["--child", str(path), "--loader", loader, "--batch-size", str(args.batch_size),
                "--shuffle-mib", str(args.shuffle_mib), "--workers", str(args.workers), "--epochs", str(args.epochs)])
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes (seconds): 300 and 3,000 rows")
    p.add_argument("--rows", type=int, default=20_000, help="smaller dataset size (the larger is 10x)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shuffle-mib", type=float, default=4.0, help="data.shuffle_mib of the streamed runs")
    p.add_argument("--workers", type=int, default=1, help="data.workers of the streamed runs")
    p.add_argument("--epochs", type=int, default=3,
                   help="epochs per run (the allocators of a short run on the small dataset have not reached "
                        "their plateau after one epoch, which would flatter the ratio)")
    p.add_argument("--json", help="also write the result to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--write", nargs=2, metavar=("PATH", "ROWS"), help=argparse.SUPPRESS)
    p.add_argument("--loader", default="stream", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.write:
        write_dataset(Path(args.write[0]), int(args.write[1]))
        return 0
    if args.child:
        print(json.dumps(child(args.child, args.loader, args.batch_size, args.shuffle_mib, args.workers,
                               args.epochs)))
        return 0
    if args.smoke:
        args.rows, args.batch_size, args.shuffle_mib, args.epochs = 300, 32, 0.25, 1
    sizes = [args.rows, 10 * args.rows]
    result: dict = {"rows": sizes, "bytes_per_row": 4 * (256 + 64), "rows_per_file": 2000,
                    "batch_size": args.batch_size,
                    "shuffle_mib": args.shuffle_mib, "workers": args.workers, "epochs": args.epochs}
    with tempfile.TemporaryDirectory(prefix="mcrlab-bench-stream-") as tmp:
        for rows in sizes:
            _run(["--write", str(Path(tmp) / f"r{rows}"), str(rows)])
        for loader in ("stream", "memory"):
            runs = [run_child(Path(tmp) / f"r{rows}", loader, args) for rows in sizes]
            result[loader] = {"peak_rss_mib": [r["peak_rss_mib"] for r in runs],
                              "reader_peak_rss_mib": [r["reader_peak_rss_mib"] for r in runs],
                              "test_acc": [r["test_acc"] for r in runs],
                              "ratio_10x": round(runs[1]["peak_rss_mib"] / runs[0]["peak_rss_mib"], 3)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

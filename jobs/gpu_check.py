# On a GPU machine, from the project root (needs only torch, numpy, pyarrow, pyyaml: no Ray, MLflow or Optuna):
#   PYTHONPATH=platform OMP_NUM_THREADS=1 python3 jobs/gpu_check.py --out "$OUT"          (~3-5 min on one H200)
#   (one command, nothing to carry; OUT is the folder whose files come back: OUT/gpu_check.json, < 1 MB)
# On CPU, tiny (what tests/test_gpu_check.py runs):
#   PYTHONPATH=platform OMP_NUM_THREADS=1 python jobs/gpu_check.py --smoke --device cpu --out /tmp/gpu_check
"""The prepared GPU check (issues 13 and 15): two ResNet-18 encoders, bf16 autocast, a data-parallel trial.

Writes ``OUT/gpu_check.json`` (``figures``, ``raw``, ``errors``, ``machine``) and prints each figure:

  dp_samples_per_s_{joint,mcr_s8,mcr_s32}   global training samples/s of a 2-rank data-parallel ``fit``
                                            (evaluation time taken out), median over rounds after a warm-up
  dp_mcr_over_joint_train_time_s{8,32}      MCR / joint training time in that trial (all-reduce included)
  mcr_over_joint_step_{eager,captured}_{late,mlp}_s{8,32}   one process, one step (forward, backward,
                                            optimizer) of MCR over joint on the same model and batch,
                                            variants interleaved; ``captured``: the whole step recorded once
                                            as a CUDA graph and replayed (CUDA only; shapes are static)
  joint_samples_per_s_{eager,captured}_{late,mlp}   B / joint step time

The workload is the benchmarks' conv workload (jobs/bench_conv.py) through the public config:
``model.encoders=[resnet18, resnet18]`` on a generated shard folder of a 3x112x112 frame and a 128x128
spectrogram, B = 256 (global), ``train.amp=auto`` (bf16 autocast on CUDA), ``model.channels_last=true``.

The data-parallel trial is ``mcrlab.engine.fit.fit`` under torch.distributed with 2 ranks, which is the code a
Ray Train worker of a data-parallel trial runs (``trials/data_parallel.py``): every rank takes its rows of each
global batch and gradients are all-reduced. It is launched with ``torch.multiprocessing`` rather than Ray
Train because (a) the GPU machine has no Ray unless it is carried (``bash ../shared/tools/device-bundle.sh``),
and (b) two ranks on ONE GPU cannot use NCCL (it refuses two ranks on one device), and the platform refuses
fractional GPUs for data-parallel trials for that reason; so here both ranks share the GPU over gloo (which
all-reduces CUDA tensors through host memory: a slower all-reduce than NCCL, the same training code). With
two or more GPUs, ``--backend auto`` picks NCCL and one GPU per rank.

Parts fail independently: an error (e.g. a capture the installed torch cannot do) is recorded under
``errors`` and the exit status is 1; the other figures are still written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (str(HERE), str(ROOT / "platform")):  # bench_conv and mcrlab, without an install
    if path not in sys.path:
        sys.path.insert(0, path)

import bench_conv  # noqa: E402 - after the path set-up above

WORLD = 2
S_LIST = (8, 32)
FUSIONS = ("late", "mlp")


def sizes(smoke: bool) -> dict:
    if smoke:
        return {"shapes": bench_conv.SMOKE_SHAPES, "batch": 8, "n_train": 32, "epochs": 1, "rounds": 1,
                "latent": 16, "steps": 2, "warmup": 1}
    return {"shapes": bench_conv.PAPER_SHAPES, "batch": 256, "n_train": 1024, "epochs": 4, "rounds": 3,
            "latent": 128, "steps": 20, "warmup": 3}


# --------------------------------------------------------------------------------------------------
# the data-parallel trial


def _rank_main(rank: int, world: int, args: dict) -> None:
    """One rank: join the group, run fit for each variant (rounds interleaved), rank 0 writes the times."""
    import torch
    import torch.distributed as dist

    os.environ["LOCAL_RANK"] = str(args["local_rank"][rank])  # fit picks cuda:LOCAL_RANK (mod device count)
    dist.init_process_group(args["backend"], init_method=f"file://{args['rendezvous']}", rank=rank,
                            world_size=world)
    try:
        from mcrlab.data import load_dataset

        torch.set_num_threads(1)
        variants = {"joint": ("joint", 0), **{f"mcr_s{s}": ("mcr", s) for s in S_LIST}}
        cfgs = {name: bench_conv.conv_config(args["data"], method=m, num_perms=s or 32, fusion="late",
                                             latent=args["latent"], batch_size=args["batch"],
                                             epochs=args["epochs"], device=args["device"],
                                             channels_last=args["device"] == "cuda")
                for name, (m, s) in variants.items()}
        dataset = load_dataset(cfgs["joint"].data)
        times: dict[str, list[list[float]]] = {n: [] for n in variants}
        for _ in range(args["rounds"] + (1 if args["rounds"] > 1 else 0)):  # a warm-up round when rounds > 1
            for name, cfg in cfgs.items():
                dist.barrier()
                times[name].append(list(bench_conv.platform_fit(cfg, dataset)))
        if rank == 0:
            Path(args["result"]).write_text(json.dumps({"times": times, "config": cfgs["joint"].to_dict()}))
    finally:
        dist.destroy_process_group()


def data_parallel(device: str, sz: dict, backend: str, tmp: Path) -> tuple[dict, dict]:
    import torch
    import torch.multiprocessing as mp

    folder = bench_conv.write_shards(tmp / "conv", n_train=sz["n_train"], shapes=sz["shapes"])
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if backend == "auto":
        backend = "nccl" if gpus >= WORLD else "gloo"
    local_rank = [r if gpus >= WORLD else 0 for r in range(WORLD)]
    args = {"data": str(folder), "device": device, "backend": backend, "local_rank": local_rank,
            "rendezvous": str(tmp / "rendezvous"), "result": str(tmp / "dp.json"), **{
                k: sz[k] for k in ("batch", "epochs", "rounds", "latent")}}
    mp.spawn(_rank_main, args=(WORLD, args), nprocs=WORLD, join=True)
    res = json.loads(Path(args["result"]).read_text())
    steps = max(1, sz["n_train"] // sz["batch"])
    samples = sz["epochs"] * steps * sz["batch"]
    timed = {n: ts[1:] if len(ts) > 1 else ts for n, ts in res["times"].items()}  # drop the warm-up round
    train_s = {n: [t[0] - t[2] for t in ts] for n, ts in timed.items()}  # fit wall - evaluation wall
    figures = {f"dp_samples_per_s_{n}": samples / statistics.median(v) for n, v in train_s.items()}
    for s in S_LIST:
        ratios = [m / j for m, j in zip(train_s[f"mcr_s{s}"], train_s["joint"], strict=True)]
        figures[f"dp_mcr_over_joint_train_time_s{s}"] = statistics.median(ratios)
    raw = {"world": WORLD, "backend": backend, "local_rank": local_rank, "samples_per_fit": samples,
           "fit_wall_cpu_evalwall_evalcpu_s": res["times"], "config": res["config"]}
    return figures, raw


# --------------------------------------------------------------------------------------------------
# one process: eager and captured steps


def steps(device: str, sz: dict, capture: bool) -> tuple[dict, dict]:
    mode = "captured" if capture else "eager"
    figures, raw = {}, {}
    for fusion in FUSIONS:
        res = bench_conv.step_ratios(sz["shapes"], device=device, fusion=fusion, batch=sz["batch"],
                                     steps=sz["steps"], warmup=sz["warmup"], s_list=S_LIST, latent=sz["latent"],
                                     capture=capture, channels_last=device == "cuda")
        raw[fusion] = res
        for s in S_LIST:
            figures[f"mcr_over_joint_step_{mode}_{fusion}_s{s}"] = res[f"mcr_S{s}"]["ratio_wall"]
        figures[f"joint_samples_per_s_{mode}_{fusion}"] = sz["batch"] / (res["joint"]["wall_ms"] / 1e3)
    return figures, raw


def machine() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cores": os.cpu_count(),
           "load_average": list(os.getloadavg()), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        out.update(gpu=torch.cuda.get_device_name(), gpus=torch.cuda.device_count(),
                   bf16=torch.cuda.is_bf16_supported())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, metavar="DIR", help="folder for gpu_check.json")
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"), help="auto = cuda if present")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and counts (seconds on a CPU)")
    ap.add_argument("--backend", default="auto", choices=("auto", "gloo", "nccl"),
                    help="process group of the data-parallel trial (auto: nccl with >= 2 GPUs, else gloo)")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: dp, eager, captured")
    args = ap.parse_args(argv)
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    sz = sizes(args.smoke)
    skip = set(filter(None, args.skip.split(",")))
    out: dict = {"command": " ".join(["python", "jobs/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": device, "smoke": args.smoke,
                 "sizes": {k: (list(map(list, v)) if k == "shapes" else v) for k, v in sz.items()},
                 "machine_start": machine(), "figures": {}, "raw": {}, "errors": {}, "skipped": {}, "seconds": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        parts = [("dp", lambda: data_parallel(device, sz, args.backend, Path(tmp))),
                 ("eager", lambda: steps(device, sz, capture=False)),
                 ("captured", lambda: steps(device, sz, capture=True))]
        for name, run in parts:
            if name in skip:
                out["skipped"][name] = "--skip"
                continue
            if name == "captured" and device != "cuda":
                out["skipped"][name] = "CUDA graphs need a CUDA device"
                continue
            t0 = time.perf_counter()
            try:
                figures, raw = run()
            except Exception as err:  # keep the other parts' figures
                traceback.print_exc()
                figures, raw = {}, {}
                out["errors"][name] = f"{type(err).__name__}: {err}"
            out["seconds"][name] = time.perf_counter() - t0
            out["figures"].update(figures)
            out["raw"][name] = raw
            for k, v in figures.items():
                print(f"{k:<44} {v:12.4f}", flush=True)
    out["machine_end"] = machine()
    bad = [k for k, v in out["figures"].items() if not math.isfinite(v)]
    if bad:
        out["errors"]["non_finite"] = ", ".join(bad)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_check.json").write_text(json.dumps(out, indent=1, default=str))
    print(f"gpu_check: wrote {Path(args.out) / 'gpu_check.json'}", file=sys.stderr)
    if out["errors"]:
        print(f"gpu_check: errors in {', '.join(out['errors'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

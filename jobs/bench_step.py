# OMP_NUM_THREADS=1 python jobs/bench_step.py --json bench_step.json      (full: CPU 1 thread + default, CUDA if present)
# python jobs/bench_step.py --smoke                                        (seconds: tiny batch, few steps)
"""Median time of one training step (forward + backward + optimizer step) per method, same model and batch.

Methods: joint, multiloss, MCR (the real plug-in, S = 8 and S = 32, default terms: game + supcon shared
bound), MCR with the game term only, and a "released-code-style" MCR for comparison (a second encoder
pass, then the fusion head re-run once per permutation and modality in a Python loop). Reported per
device, thread setting and fusion head (late, mlp): median milliseconds and the ratio to joint.

Steps of all methods are interleaved round-robin so that load changes on a shared machine hit them
alike; wall-clock and (CPU) process-time medians are both recorded. ``--compile true`` (or another
train.compile setting) adds every variant compiled as ``fit`` compiles it, in the same rounds. Each ratio is the median over rounds
of (variant step / joint step of the same round), with its spread (the 25th-75th percentile of those
per-round ratios), so that a burst of load on a shared machine widens the spread instead of moving the
figure. Targets (issue 15, bench MLPs, CPU, B = 256): MCR <= 1.35x at S = 8 and <= 1.45x at S = 32,
game term only <= 1.20x, MLP fusion head <= 2.0x at S = 32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from mcrlab.config import ModelConfig
from mcrlab.engine.optim import fused_options
from mcrlab.mcr import divergence as div
from mcrlab.mcr import draw_permutations
from mcrlab.methods import REGISTRY, StepContext
from mcrlab.methods.mcr import MCRParams
from mcrlab.models.net import MultimodalNet

IN_DIMS = (128, 64)  # two feature modalities
NUM_CLASSES = 10


def released_style_step(model: MultimodalNet, xs: list[torch.Tensor], y: torch.Tensor, num_perms: int,
                        lambda_m: float, gen: torch.Generator) -> torch.Tensor:
    """The released code's shape of computation: clean pass, second encoder pass, per-permutation head runs."""
    out = model(xs)
    loss = F.cross_entropy(out.fused, y) + sum(F.cross_entropy(h, y) for h in out.heads)
    z2 = model.encode(xs)  # the second encoder pass
    perms = draw_permutations(num_perms, y.shape[0], gen, y.device)
    ds = []
    for m in range(len(z2)):
        d = 0.0
        for s in range(num_perms):  # the head re-run for every permutation
            zs = [z[perms[s]] if j == m else z for j, z in enumerate(z2)]
            d = d + div(out.fused, model.fusion(zs), "jsd").mean()
        ds.append(d / num_perms)
    return loss - lambda_m * (ds[0] - ds[1])


def _variants(S_list: list[int], compiled: bool = False) -> dict[str, tuple[str, dict]]:
    v: dict[str, tuple[str, dict]] = {"joint": ("joint", {})}
    if not compiled:  # (compiling costs time: the compiled set keeps what the figures need)
        v["multiloss"] = ("multiloss", {})
    for S in S_list:
        v[f"mcr_S{S}"] = ("mcr", {"num_perms": S})
        v[f"mcr_game_only_S{S}"] = ("mcr", {"num_perms": S, "lambda_c": 0.0})
    if not compiled:  # the released code's loop is not a train.compile path
        v[f"released_style_S{S_list[-1]}"] = ("released", {"num_perms": S_list[-1]})
    return v


def bench(device: torch.device, fusion: str, batch: int, steps: int, warmup: int, width: dict,
          S_list: list[int], compile: bool | str = False, eager: bool = True, block: int = 1,
          adam: str = "fit") -> dict[str, dict[str, float]]:
    """Interleaved step times of every variant: name -> {wall_ms, cpu_ms, ratio_wall, ratio_cpu, spreads}.

    compile: a ``train.compile`` setting (false = none). When set, every variant also runs compiled as
    ``fit`` compiles it (MCR: its whole step; joint: the forward), under the name ``<variant>_compiled``,
    in the same rounds as the eager ones (``eager=False`` leaves those out); a compiled variant's ratio is
    to the compiled joint step of the same round. The warm-up steps include the compilation.
    block: steps of one variant in a row per round (1: one step each, round-robin). With block > 1 the first
    step of each block is not timed and the round's time is the mean of the other block - 1: the steady
    state of a training loop, which repeats one step with its caches warm (round-robin over a dozen models
    times every step with the previous model's data in the caches).
    adam: "fit" (the optimizer ``fit`` builds: fused Adam where the parameters allow, engine.optim) or "loop"
    (torch's default for-each Adam, what fit used before: the figures of the earlier rounds).
    """
    from mcrlab.engine.fit import compile_options

    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(batch, d, generator=g).to(device) for d in IN_DIMS]
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(device)
    settings = ([False] if eager else []) + ([compile] if compile is not False else [])
    runs = {}
    for setting in settings:
        suffix = "" if setting is False else "_compiled"
        for name, (method_name, params) in _variants(S_list, setting is not False).items():
            torch.manual_seed(0)
            model = MultimodalNet(list(IN_DIMS), NUM_CLASSES, ModelConfig(fusion=fusion, **width)).to(device)
            method = None
            if method_name != "released":
                p = MCRParams(**params) if method_name == "mcr" else REGISTRY[method_name].Params()
                method = REGISTRY[method_name](p, model, NUM_CLASSES)
            extra = method.extra_modules() if method is not None else None
            params_all = list(model.parameters()) + (list(extra.parameters()) if extra is not None else [])
            opt = torch.optim.Adam(params_all, lr=1e-3, **(fused_options(params_all) if adam == "fit" else {}))
            ctx = StepContext(epoch=0, step=0, global_step=0, epochs=1, steps_per_epoch=1,
                              generator=torch.Generator().manual_seed(0), device=device, optimizer=opt)
            step_model = model
            if setting is not False and method is not None:  # what fit does under train.compile
                options = compile_options(setting)
                if not method.compile_step(options):
                    step_model = torch.compile(model, **options)
            runs[name + suffix] = (step_model, method, opt, ctx, params.get("num_perms", 0))

    def step(name: str) -> tuple[float, float]:
        model, method, opt, ctx, S = runs[name]
        if device.type == "cuda":
            torch.cuda.synchronize()
        w0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda" and name.endswith("_compiled"):  # as fit does under reduce-overhead
            torch.compiler.cudagraph_mark_step_begin()
        if method is None:
            loss = released_style_step(model, xs, y, S, 0.01, ctx.generator)
        else:
            loss = method.training_step(model, xs, y, ctx).loss
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3

    times: dict[str, list[tuple[float, float]]] = {n: [] for n in runs}
    for i in range(warmup + steps):
        for name in runs:  # round-robin: load changes affect every method alike
            if block == 1:
                t = step(name)
            else:  # the block's first step warms the caches; the rest are timed
                step(name)
                ts = [step(name) for _ in range(block - 1)]
                t = (statistics.fmean(x[0] for x in ts), statistics.fmean(x[1] for x in ts))
            if i >= warmup:
                times[name].append(t)
    out = {}
    for name, ts in times.items():
        base = times["joint_compiled" if name.endswith("_compiled") else "joint"]
        w, c = statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)
        rw = [t[0] / b[0] for t, b in zip(ts, base, strict=True)]  # per-round ratios: same load
        rc = [t[1] / b[1] if b[1] > 0 else math.nan for t, b in zip(ts, base, strict=True)]
        out[name] = {"wall_ms": w, "cpu_ms": c, "ratio_wall": statistics.median(rw),
                     "ratio_cpu": statistics.median(rc), **_spread("ratio_wall", rw), **_spread("ratio_cpu", rc)}
    return out


def _spread(key: str, xs: list[float]) -> dict[str, float]:
    """25th and 75th percentiles of per-round ratios (the spread printed next to each median)."""
    if len(xs) < 2:
        return {f"{key}_p25": xs[0], f"{key}_p75": xs[0]}
    q = statistics.quantiles(xs, n=4)
    return {f"{key}_p25": q[0], f"{key}_p75": q[2]}


def print_table(label: str, res: dict[str, dict[str, float]]) -> None:
    print(f"\n{label}")
    print(f"  {'method':<27}{'wall ms':>9}{'x joint':>9}{'[p25, p75]':>15}{'cpu ms':>9}{'x joint':>9}{'[p25, p75]':>15}")
    for name, r in res.items():
        print(f"  {name:<27}{r['wall_ms']:>9.2f}{r['ratio_wall']:>9.2f}"
              f"   [{r['ratio_wall_p25']:.2f}, {r['ratio_wall_p75']:.2f}]"
              f"{r['cpu_ms']:>9.2f}{r['ratio_cpu']:>9.2f}   [{r['ratio_cpu_p25']:.2f}, {r['ratio_cpu_p75']:.2f}]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="seconds-long run: small batch and few steps")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                    help="auto = CPU, plus CUDA when present")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=60, help="timed steps per method")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--block", type=int, default=1,
                    help="steps of one method in a row per round, the first not timed (steady state); "
                         "1 = one step each, round-robin")
    ap.add_argument("--adam", default="fit", choices=("fit", "loop"),
                    help="fit: the optimizer fit builds (fused Adam); loop: torch's default Adam (earlier rounds)")
    ap.add_argument("--threads", default="1,default", help="CPU thread settings, e.g. '1,default' or '2'")
    ap.add_argument("--fusion", default="late,mlp")
    ap.add_argument("--compile", default="false",
                    help="also time every variant compiled with this train.compile setting (true, "
                         "reduce-overhead, ...), interleaved with the eager ones")
    args = ap.parse_args()
    compile_setting = {"false": False, "true": True}.get(args.compile, args.compile)
    width = {"hidden": 256, "depth": 2, "latent": 128, "fusion_hidden": 256}
    S_list = [8, 32]
    if args.smoke:
        args.batch, args.steps, args.warmup = 32, 3, 1
        width = {"hidden": 16, "depth": 1, "latent": 8, "fusion_hidden": 16}
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else (
        ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    default_threads = torch.get_num_threads()
    results = []
    for dev in devices:
        thread_opts = [t for t in args.threads.split(",")] if dev == "cpu" else ["default"]
        for th in thread_opts:
            n = default_threads if th == "default" else int(th)
            torch.set_num_threads(n)
            for fusion in args.fusion.split(","):
                res = bench(torch.device(dev), fusion, args.batch, args.steps, args.warmup, width, S_list,
                            compile=compile_setting, block=args.block, adam=args.adam)
                label = f"{dev} threads={n} fusion={fusion} B={args.batch}" if dev == "cpu" else \
                    f"{dev} ({torch.cuda.get_device_name()}) fusion={fusion} B={args.batch}"
                print_table(label, res)
                results.append({"device": dev, "threads": n, "fusion": fusion, "batch": args.batch,
                                "width": width, "in_dims": IN_DIMS, "classes": NUM_CLASSES, "results": res})
    torch.set_num_threads(default_threads)
    print(f"\nload average (1, 5, 15 min): {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "load_average": os.getloadavg(), "runs": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

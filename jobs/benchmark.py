# OMP_NUM_THREADS=1 python jobs/benchmark.py --json runs/benchmark.json          (CPU: ~10 min; GPU part when CUDA)
# OMP_NUM_THREADS=1 python jobs/benchmark.py --smoke --json /tmp/bench.json      (minutes: tiny sizes, every figure)
# ray job submit --address "$RAY_API_SERVER_ADDRESS" --runtime-env jobs/runtime_env.yaml --entrypoint-num-gpus 1 \
#     -- python jobs/benchmark.py --json benchmark.json                        (on a cluster's GPU node)
"""The platform's performance figures in one run, as ratios, each under a stable JSON name.

Figures (``figures`` in the JSON; the CPU ones always, ``*_cuda_*`` only when CUDA is present):

  mcr_over_joint_step_{late,mlp}_s{8,32}          MCR step time / joint step time, CPU, B=256, bench MLPs
  mcr_over_joint_step_{late,mlp}_s{8,32}_cputime  (wall clock; and process time, steadier on a loaded machine),
                                                  median of per-round ratios, interleaved, by jobs/bench_step.py's
                                                  ``bench`` (targets: late <= 1.35 at S=8, <= 1.45 at S=32; mlp
                                                  <= 2.0 at S=32); spread (p25, p75) in raw
  mcr_game_only_over_joint_step_{late,mlp}_s{8,32}[_cputime]   the same with the game term only (lambda_C = 0;
                                                  target <= 1.20)
  mcr[_game_only]_over_joint_step_{late,mlp}_s{8,32}_compiled[_cputime]   the same with every step compiled as
                                                  train.compile=true compiles it (MCR: the whole step, forward
                                                  and loss; joint: the forward), measured in the same
                                                  interleaved rounds as the eager figures, ratio to the
                                                  compiled joint step
  mcr[_game_only]_over_joint_step_cuda_{late,mlp}_s{8,32}[_captured]   the same on CUDA, MLP model, eager and
                                                  with train.compile=reduce-overhead (CUDA-graph captured)
  mcr_over_joint_step_cpu_resnet_{late,mlp}_s{8,32}[_cputime]   the conv workload (jobs/bench_conv.py):
                                                  model.encoders=[resnet18, resnet18] from the config, a
                                                  3x32x32 frame + a 32x32 spectrogram, B=32, interleaved
  joint_step_ms_cpu_resnet_{late,mlp}             its joint step in ms (the scale of the ratios above)
  mcr_over_joint_step_cuda_resnet[_captured]_{late,mlp}_s{8,32}   the same on CUDA at paper scale (frame
                                                  3x112x112, spectrogram 128x128), bf16 autocast, B=256,
                                                  eager and with the whole step captured as a CUDA graph
  platform_over_bare_throughput_conv[_no_eval][_cputime]   samples/s of ``fit`` on the conv workload (a
                                                  generated shard folder, loaded by fit) / samples/s of a
                                                  bare PyTorch loop on the same model, data and batches;
                                                  _no_eval: fit's evaluation time taken out (target >= 0.9)
  fit_eval_share_conv                             fraction of fit's process time spent evaluating (conv)
  platform_over_bare_throughput_conv_cuda[_no_eval]    the same on CUDA at paper scale (B=256, bf16)
  platform_over_bare_throughput                   samples/s of ``fit`` (dataset generation, per-epoch
                                                  validation, final test metrics: everything) / samples/s
                                                  of a bare PyTorch loop on the same model, data and batch
  platform_over_bare_throughput_no_eval           the same with fit's evaluation time taken out (target >= 0.9)
  platform_over_bare_throughput[_no_eval]_cputime the same two from process time (steadier under load)
  fit_eval_share                                  fraction of fit's process time spent evaluating
  sweep_overhead_s_per_trial_single               (sweep wall - plain Optuna wall) / trials, single-process
  sweep_overhead_s_per_trial_dp                   the same through data-parallel trials (2 Ray Train workers)
  dp_startup_s                                    fit_distributed (2 workers) wall - in-process fit wall
  dp_scaling_2w_over_1w                           training throughput of 2 Ray Train workers / 1 worker
                                                  (fit's own time inside the workers, start-up excluded)

The step and throughput parts run first (no Ray); the Ray parts reuse jobs/bench_sweep_overhead.py.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

HERE = Path(__file__).resolve().parent
S_LIST = [8, 32]
FUSIONS = ("late", "mlp")
# every run reports these (CPU); the *_cuda_* figures come in addition when CUDA is present
STABLE_FIGURES = (
    *(f"mcr{g}_over_joint_step_{f}_s{s}{c}{t}" for g in ("", "_game_only") for f in FUSIONS for s in S_LIST
      for c in ("", "_compiled") for t in ("", "_cputime")),
    "platform_over_bare_throughput", "platform_over_bare_throughput_no_eval",
    "platform_over_bare_throughput_cputime", "platform_over_bare_throughput_no_eval_cputime", "fit_eval_share",
    "sweep_overhead_s_per_trial_single", "sweep_overhead_s_per_trial_dp", "dp_startup_s", "dp_scaling_2w_over_1w",
    *(f"platform_over_bare_throughput_conv{e}{t}" for e in ("", "_no_eval") for t in ("", "_cputime")),
    "fit_eval_share_conv",
    *(f"mcr_over_joint_step_cpu_resnet_{f}_s{s}{t}" for f in FUSIONS for s in S_LIST for t in ("", "_cputime")),
    *(f"joint_step_ms_cpu_resnet_{f}" for f in FUSIONS))


@functools.cache
def _load(name: str):
    """A sibling job script as a module (jobs/ is not a package), loaded once."""
    spec = importlib.util.spec_from_file_location(f"_mcrlab_jobs_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------------
# 1. step time: MCR vs joint


def step_ratios(smoke: bool, device: str) -> tuple[dict, dict]:
    """bench_step.bench per fusion head: the MCR/joint ratios (wall and process time) and the raw table.

    Eager and compiled steps in the same interleaved rounds: on CPU ``train.compile=true`` (inductor;
    MCR compiles its whole step, joint its forward), figures ``*_compiled``; on CUDA
    ``train.compile=reduce-overhead`` (the step captured as CUDA graphs), figures ``*_captured``.
    """
    import torch

    bench_step = _load("bench_step")
    width = {"hidden": 256, "depth": 2, "latent": 128, "fusion_hidden": 256}
    batch, steps, warmup = 256, 40, 5
    if smoke:
        width = {"hidden": 16, "depth": 1, "latent": 8, "fusion_hidden": 16}
        batch, steps, warmup = 32, 3, 1
    figures, raw = {}, {}
    tag = "" if device == "cpu" else "_cuda"
    setting, compiled_tag = (True, "_compiled") if device == "cpu" else ("reduce-overhead", "_captured")
    for fusion in FUSIONS:
        res = bench_step.bench(torch.device(device), fusion, batch, steps, warmup, width, S_LIST, compile=setting)
        raw[f"{device}_{fusion}"] = res
        bench_step.print_table(f"{device} fusion={fusion} B={batch} (compiled: train.compile={setting})", res)
        for s in S_LIST:
            for g, variant in (("", f"mcr_S{s}"), ("_game_only", f"mcr_game_only_S{s}")):
                for suffix, key in (("", variant), (compiled_tag, f"{variant}_compiled")):
                    figures[f"mcr{g}_over_joint_step{tag}_{fusion}_s{s}{suffix}"] = res[key]["ratio_wall"]
                    if device == "cpu":
                        figures[f"mcr{g}_over_joint_step_{fusion}_s{s}{suffix}_cputime"] = res[key]["ratio_cpu"]
    return figures, raw


def conv_part(smoke: bool) -> tuple[dict, dict]:
    """The conv workload on CPU (jobs/bench_conv.py): two ResNet-18 encoders named in the config
    (``model.encoders=[resnet18, resnet18]``) on a generated frame + spectrogram shard folder.

    - throughput: ``fit`` against a bare PyTorch loop on the same model, data and batches, interleaved;
    - step time: MCR (S = 8, 32) over joint, late and MLP fusion, variants interleaved.
    """
    conv = _load("bench_conv")
    if smoke:
        shapes, batch, n_train, epochs, repeats, latent, steps, warmup = conv.SMOKE_SHAPES, 8, 32, 1, 1, 16, 2, 1
    else:
        shapes, batch, n_train, epochs, repeats, latent, steps, warmup = conv.CPU_SHAPES, 32, 256, 2, 5, 128, 10, 2
    figures: dict = {}
    raw: dict = {"shapes": [list(s) for s in shapes], "batch": batch, "latent": latent}
    with tempfile.TemporaryDirectory() as tmp:
        folder = conv.write_shards(Path(tmp) / "conv", n_train=n_train, shapes=shapes)
        cfg = conv.conv_config(folder, method="joint", batch_size=batch, epochs=epochs, latent=latent)
        samples = epochs * (n_train // batch) * batch
        f, raw["throughput"] = conv.throughput(cfg, repeats, samples)
        figures.update(f)
    for fusion in FUSIONS:
        res = conv.step_ratios(shapes, device="cpu", fusion=fusion, batch=batch, steps=steps, warmup=warmup,
                               s_list=tuple(S_LIST), latent=latent)
        raw[f"step_{fusion}"] = res
        _load("bench_step").print_table(f"cpu resnet18 x2 fusion={fusion} B={batch}", res)
        for s in S_LIST:
            figures[f"mcr_over_joint_step_cpu_resnet_{fusion}_s{s}"] = res[f"mcr_S{s}"]["ratio_wall"]
            figures[f"mcr_over_joint_step_cpu_resnet_{fusion}_s{s}_cputime"] = res[f"mcr_S{s}"]["ratio_cpu"]
        figures[f"joint_step_ms_cpu_resnet_{fusion}"] = res["joint"]["wall_ms"]
    return figures, raw


def conv_cuda_part(smoke: bool, capture: bool) -> tuple[dict, dict]:
    """The conv workload on CUDA at paper scale (frame 3x112x112, spectrogram 128x128, B = 256, bf16
    autocast): MCR/joint step ratios eager or CUDA-graph captured, and fit vs bare throughput (eager)."""
    conv = _load("bench_conv")
    shapes, batch, steps, warmup, latent, n_train = conv.PAPER_SHAPES, 256, 20, 3, 128, 2048
    if smoke:
        shapes, batch, steps, warmup, latent, n_train = conv.SMOKE_SHAPES, 8, 2, 1, 16, 32
    tag = "cuda_resnet_captured" if capture else "cuda_resnet"
    figures: dict = {}
    raw: dict = {}
    for fusion in FUSIONS:
        res = conv.step_ratios(shapes, device="cuda", fusion=fusion, batch=batch, steps=steps, warmup=warmup,
                               s_list=tuple(S_LIST), latent=latent, capture=capture)
        raw[f"step_{fusion}"] = res
        for s in S_LIST:
            figures[f"mcr_over_joint_step_{tag}_{fusion}_s{s}"] = res[f"mcr_S{s}"]["ratio_wall"]
        figures[f"joint_step_ms_{tag}_{fusion}"] = res["joint"]["wall_ms"]
    if not capture:
        with tempfile.TemporaryDirectory() as tmp:
            folder = conv.write_shards(Path(tmp) / "conv", n_train=n_train, shapes=shapes)
            cfg = conv.conv_config(folder, method="joint", batch_size=batch, epochs=2, latent=latent, device="cuda")
            f, raw["throughput"] = conv.throughput(cfg, 1 if smoke else 3, 2 * (n_train // batch) * batch)
        figures.update({k.replace("_conv", "_conv_cuda"): v for k, v in f.items()
                        if not k.endswith("_cputime")})
    return figures, raw


# --------------------------------------------------------------------------------------------------
# 2. throughput: fit vs a bare loop


def _throughput_config(smoke: bool):
    from mcrlab.config import RunConfig

    model = {"hidden": 256, "depth": 2, "latent": 128} if not smoke else {"hidden": 16, "depth": 1, "latent": 8}
    return RunConfig.from_dict({
        "data": {"name": "synthetic:imbalanced", "n_train": 512 if smoke else 8192},
        "model": model, "method": {"name": "joint"},
        "train": {"epochs": 1 if smoke else 4, "batch_size": 256, "device": "cpu", "probe_epochs": 0,
                  "eval_perms": 1, "seed": 0}})


def bare_loop(cfg) -> tuple[float, float]:
    """(wall, process-time) seconds of a bare PyTorch loop: load the data, same model/optimizer/batches, CE on the fused logits."""
    import torch
    import torch.nn.functional as F

    from mcrlab.data import load_dataset
    from mcrlab.engine.optim import fused_options
    from mcrlab.models import build_model

    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.train.seed)
    data = load_dataset(cfg.data)
    tr = data.splits["train"]
    xs = [torch.as_tensor(x, dtype=torch.float32) for x in tr.x]
    y = torch.as_tensor(tr.y, dtype=torch.long)
    model = build_model(data.dims, data.num_classes, cfg.model)
    # the optimizer fit builds (engine.optim: fused Adam), so that the figure is the platform's overhead alone
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, **fused_options(model.parameters()))
    b, n = cfg.train.batch_size, len(y)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    for _ in range(cfg.train.epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(max(1, n // b)):
            idx = perm[s * b:(s + 1) * b]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model([x[idx] for x in xs]).fused, y[idx])
            loss.backward()
            opt.step()
    return time.perf_counter() - t0, time.process_time() - c0


def platform_fit(cfg) -> tuple[float, float, float, float]:
    """fit(cfg) loading its own data: (wall, process time, wall in evaluation, process time in evaluation);
    one timing harness for both workloads (jobs/bench_conv.py's)."""
    return _load("bench_conv").platform_fit(cfg)


def throughput(smoke: bool) -> tuple[dict, dict]:
    """Medians over repeats, interleaved (bare, fit, bare, fit, ...) so load changes hit both alike.

    Wall-clock and process-time figures: both loops are single-threaded in this process, so on a loaded
    machine process time is the steadier measure of the work each does.
    """
    cfg = _throughput_config(smoke)
    repeats = 1 if smoke else 5
    bare_loop(cfg)  # warm-up: imports, allocator, data generation code paths
    bare, fits = [], []
    for _ in range(repeats):
        bare.append(bare_loop(cfg))
        fits.append(platform_fit(cfg))
    med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
    samples = cfg.train.epochs * (cfg.data.n_train // cfg.train.batch_size) * cfg.train.batch_size
    raw = {"samples": samples, "bare_wall_cpu_s": bare, "fit_wall_cpu_evalwall_evalcpu_s": fits,
           "bare_samples_per_s": samples / med(bare, 0), "fit_samples_per_s": samples / med(fits, 0),
           "config": cfg.to_dict()}
    ratio = [b[0] / f[0] for b, f in zip(bare, fits)]
    ratio_cpu = [b[1] / f[1] for b, f in zip(bare, fits)]
    ratio_cpu_no_eval = [b[1] / max(f[1] - f[3], 1e-9) for b, f in zip(bare, fits)]
    figures = {"platform_over_bare_throughput": statistics.median(ratio),
               "platform_over_bare_throughput_no_eval": statistics.median(
                   b[0] / max(f[0] - f[2], 1e-9) for b, f in zip(bare, fits)),
               "platform_over_bare_throughput_cputime": statistics.median(ratio_cpu),
               "platform_over_bare_throughput_no_eval_cputime": statistics.median(ratio_cpu_no_eval),
               "fit_eval_share": statistics.median(f[3] / f[1] for f in fits)}
    return figures, raw


# --------------------------------------------------------------------------------------------------
# 3. Ray: sweep overhead, data-parallel start-up and scaling


def _timed_fit_loop(config: dict) -> None:
    """Ray Train worker: fit as ``fit_distributed`` runs it, then its own wall time as the last report."""
    import ray.train

    from mcrlab.config import RunConfig
    from mcrlab.engine.fit import fit
    from mcrlab.trials.data_parallel import worker_report

    t0 = time.perf_counter()
    fit(RunConfig.from_dict(config["run"]), report=worker_report())
    if ray.train.get_context().get_world_rank() == 0:  # a file: Result.metrics holds only checkpointed reports
        Path(config["out"]).write_text(json.dumps(time.perf_counter() - t0))


def ray_figures(smoke: bool) -> tuple[dict, dict]:
    import dataclasses

    import ray

    from mcrlab.engine.fit import fit
    from mcrlab.trials.data_parallel import fit_distributed, make_trainer
    from mcrlab.tune.runner import run_sweep
    from mcrlab.tune.space import trial_config

    overhead = _load("bench_sweep_overhead")
    trials, epochs = (2, 1) if smoke else (6, 2)
    raw: dict = {"trials": trials, "epochs": epochs}
    t0 = time.perf_counter()
    if not ray.is_initialized():
        from mcrlab.trials.session import start_ray  # patient start-up: a loaded machine misses Ray's 30 s

        start_ray(include_dashboard=False)
    raw["ray_init_s"] = time.perf_counter() - t0
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        from mcrlab.tracking import Tracker

        uri = f"sqlite:///{tmp}/mlflow.db"
        t0 = time.perf_counter()
        Tracker(uri).experiment("warm-up")  # the store's one-off schema creation is not a per-trial cost
        raw["mlflow_store_create_s"] = time.perf_counter() - t0
        space = overhead._space(trials, epochs)
        plain = overhead.plain_optuna(space, trials)
        t0 = time.perf_counter()
        run_sweep(space, storage_path=Path(tmp) / "single", tracking_uri=uri,
                  progress=False)
        single = time.perf_counter() - t0
        figures["sweep_overhead_s_per_trial_single"] = (single - plain) / trials
        # data-parallel trials: the same space with 2 workers per trial (one trial at a time on 2 cores)
        dp_trials = 1 if smoke else 2
        dp_space = dataclasses.replace(overhead._space(dp_trials, epochs), name="bench_dp",
                                       scaling=dataclasses.replace(space.scaling, workers=2))
        plain_dp = overhead.plain_optuna(dp_space, dp_trials)
        t0 = time.perf_counter()
        run_sweep(dp_space, storage_path=Path(tmp) / "dp", tracking_uri=uri, progress=False)
        dp_sweep = time.perf_counter() - t0
        figures["sweep_overhead_s_per_trial_dp"] = (dp_sweep - plain_dp) / dp_trials
        raw.update(plain_optuna_s=plain, sweep_single_s=single, plain_optuna_dp_s=plain_dp, sweep_dp_s=dp_sweep,
                   dp_trials=dp_trials)

        # start-up: fit_distributed (2 workers) against the same fit in this process
        cfg = trial_config(space, space.datasets[0], {}, 0)
        t0 = time.perf_counter()
        fit(cfg)
        single_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        fit_distributed(cfg, workers=2, name="bench-startup", storage_path=Path(tmp) / "startup")
        figures["dp_startup_s"] = time.perf_counter() - t0 - single_fit
        raw.update(fit_in_process_s=single_fit)

        # scaling: fit's own time inside 1 and 2 workers, on a config where compute dominates
        scale_cfg = _throughput_config(smoke).replace({"train.probe_epochs": 0})
        fit_s = {}
        for w in (1, 2):
            out_file = Path(tmp) / f"fit_s_{w}.json"
            trainer = make_trainer(_timed_fit_loop, {"run": scale_cfg.to_dict(), "out": str(out_file)},
                                   name=f"bench-scale-{w}", storage_path=Path(tmp) / "scale", workers=w,
                                   max_failures=0)
            trainer.fit()
            fit_s[w] = json.loads(out_file.read_text())
        figures["dp_scaling_2w_over_1w"] = fit_s[1] / fit_s[2]
        raw.update(scaling_fit_s=fit_s)
    return figures, raw


# --------------------------------------------------------------------------------------------------


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average": list(os.getloadavg())}


def part_of(figure: str) -> str:
    """The part (``--skip`` name) that produces a stable figure."""
    if "_conv" in figure or "_resnet" in figure:
        return "conv"
    if figure.startswith(("mcr_over", "mcr_game_only_over")):
        return "step"
    if figure.startswith(("platform", "fit_")):
        return "throughput"
    return "ray"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 epilog="figures: see the module docstring", )
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, every figure (a few minutes on 2 cores: the step part compiles ten tiny steps)")
    ap.add_argument("--json", metavar="PATH", help="write {figures, raw, machine, ...} as JSON")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: step, throughput, conv, ray, gpu")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1 if os.environ.get("OMP_NUM_THREADS") == "1" else torch.get_num_threads())
    skip = set(filter(None, args.skip.split(",")))
    out = {"command": " ".join(["python", "jobs/benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
           "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "smoke": args.smoke, "machine_start": machine(),
           "figures": {}, "raw": {}, "seconds": {}}
    # (--skip name, key of its raw record, what it runs)
    parts = [("step", "step", lambda: step_ratios(args.smoke, "cpu")),
             ("throughput", "throughput", lambda: throughput(args.smoke)),
             ("conv", "conv", lambda: conv_part(args.smoke)),
             ("ray", "ray", lambda: ray_figures(args.smoke))]
    if torch.cuda.is_available():
        parts += [("gpu", "gpu", lambda: step_ratios(args.smoke, "cuda")),
                  ("gpu", "gpu_conv", lambda: conv_cuda_part(args.smoke, capture=False)),
                  ("gpu", "gpu_conv_captured", lambda: conv_cuda_part(args.smoke, capture=True))]
    for name, key, run in parts:
        if name in skip:
            continue
        t0 = time.perf_counter()
        try:
            figures, raw = run()
        except Exception as err:  # keep the other parts' figures; the missing ones make the exit status 1
            import traceback

            traceback.print_exc()
            figures, raw = {}, {"error": repr(err)}
        out["seconds"][name] = out["seconds"].get(name, 0.0) + time.perf_counter() - t0
        out["figures"].update(figures)
        out["raw"][key] = raw
        for k, v in figures.items():
            print(f"{k:<56} {v:10.4f}", flush=True)
    out["machine_end"] = machine()
    bad = [k for k, v in out["figures"].items() if not math.isfinite(v)]
    bad += [k for k in STABLE_FIGURES if k not in out["figures"] and part_of(k) not in skip]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    if bad:
        print(f"benchmark: non-finite figures {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

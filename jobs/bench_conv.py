"""The conv workload of the benchmarks, through the public config: two ResNet-18 encoders
(``model.encoders=[resnet18, resnet18]``) on a tiny generated shard folder of a frame (C, H, W) and a
spectrogram (T, F), trained by ``mcrlab.engine.fit.fit`` and compared with a bare PyTorch loop.

Used by jobs/benchmark.py (CPU figures; CUDA ones when present) and jobs/gpu_check.py (the prepared GPU
check). Nothing here hand-builds an encoder: every model comes from ``build_model(shapes, classes,
cfg.model)`` of a ``RunConfig``, the same call ``fit`` makes.

Shapes: paper scale is a 3x112x112 frame and a 128x128 log-mel spectrogram (CREMA-D-like), B = 256; the CPU
figures use small inputs (``CPU_SHAPES``) so that a run fits on a shared 2-core machine.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

PAPER_SHAPES: tuple[tuple[int, ...], ...] = ((3, 112, 112), (128, 128))  # frame (C, H, W), spectrogram (T, F)
CPU_SHAPES: tuple[tuple[int, ...], ...] = ((3, 32, 32), (32, 32))
SMOKE_SHAPES: tuple[tuple[int, ...], ...] = ((3, 16, 16), (16, 16))
MODALITIES = ("frame", "spec")
NUM_CLASSES = 6  # CREMA-D's emotions


def write_shards(dest: str | Path, *, n_train: int, n_val: int = 32, n_test: int = 32,
                 shapes: tuple[tuple[int, ...], ...] = CPU_SHAPES, seed: int = 0) -> Path:
    """A shard folder (``mcrlab.data.shards.write_shards``) with a frame and a spectrogram per row.

    Each class brightens one band of the frame's rows and of the spectrogram's time steps, so both
    modalities carry the label; the rest is Gaussian noise. Returns ``dest``.
    """
    from mcrlab.data.shards import write_shards as _write

    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    label = rng.integers(0, NUM_CLASSES, n)
    feats = {}
    for name, shape in zip(MODALITIES, shapes, strict=True):
        x = rng.standard_normal((n, *shape)).astype(np.float32)
        rows = shape[-2]  # H of a frame, T of a spectrogram
        band = max(1, rows // NUM_CLASSES)
        for i, c in enumerate(label):
            x[i, ..., c * band:(c + 1) * band, :] += 1.0
        feats[name] = x
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test, dtype=object)
    _write(dest, feats, label, split, num_classes=NUM_CLASSES, name=Path(dest).name, overwrite=True)
    return Path(dest)


def conv_config(data: str | Path, *, method: str = "joint", num_perms: int = 32, fusion: str = "late",
                latent: int = 128, batch_size: int = 32, epochs: int = 1, device: str = "cpu",
                amp: str = "auto", seed: int = 0, channels_last: bool = False) -> Any:
    """The RunConfig of the conv workload: ResNet-18 per modality by name, everything else public keys."""
    from mcrlab.config import RunConfig

    meth: dict[str, Any] = {"name": method}
    if method == "mcr":
        meth["num_perms"] = num_perms
    return RunConfig.from_dict({
        "data": {"name": str(data)},
        "model": {"encoders": ["resnet18", "resnet18"], "latent": latent, "fusion": fusion,
                  "fusion_hidden": latent, "channels_last": channels_last},
        "method": meth,
        "train": {"epochs": epochs, "batch_size": batch_size, "device": device, "amp": amp, "probe_epochs": 0,
                  "eval_perms": 1, "seed": seed, "optimizer": "adam", "lr": 1e-3}}, "<bench_conv>")


def spread(xs: list[float]) -> dict[str, float]:
    """Median, 25th and 75th percentiles."""
    if len(xs) < 2:
        return {"median": xs[0], "p25": xs[0], "p75": xs[0]}
    q = statistics.quantiles(xs, n=4)
    return {"median": statistics.median(xs), "p25": q[0], "p75": q[2]}


# --------------------------------------------------------------------------------------------------
# throughput: fit vs a bare loop on the same model, data and batches


def bare_loop(cfg: Any) -> tuple[float, float]:
    """(wall, process time) of a bare PyTorch loop: load the shards, build the same model, the same
    optimizer, the same batch order; cross-entropy on the fused logits (what ``joint`` optimises)."""
    import torch
    import torch.nn.functional as F

    from mcrlab.data import load_dataset
    from mcrlab.engine.optim import fused_options
    from mcrlab.models import build_model

    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(cfg.train.seed)
    dev = torch.device(cfg.train.device)
    data = load_dataset(cfg.data)
    tr = data.splits["train"]
    xs = [torch.as_tensor(x, dtype=torch.float32, device=dev) for x in tr.x]
    y = torch.as_tensor(tr.y, dtype=torch.long, device=dev)
    model = build_model(data.shapes, data.num_classes, cfg.model, device=dev)
    # the optimizer fit builds (engine.optim: fused Adam), so that the figure is the platform's overhead alone
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, **fused_options(model.parameters()))
    amp = dev.type == "cuda" and cfg.train.amp in ("auto", "bf16")
    b, n = cfg.train.batch_size, len(y)
    gen = torch.Generator().manual_seed(cfg.train.seed)
    for _ in range(cfg.train.epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        for s in range(max(1, n // b)):
            idx = perm[s * b:(s + 1) * b]
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model([x[idx] for x in xs]).fused.float(), y[idx])
            loss.backward()
            opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def platform_fit(cfg: Any, dataset: Any = None) -> tuple[float, float, float, float]:
    """``fit(cfg)`` (loading its own data unless ``dataset``): (wall, process time, wall in evaluation,
    process time in evaluation). Evaluation = per-epoch validation and the final test metrics."""
    import torch

    import mcrlab.engine.fit as engine

    spent = [0.0, 0.0]
    originals = {name: getattr(engine, name) for name in ("evaluate", "_final_metrics")}

    def timed(fn):
        def wrapper(*a, **kw):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                spent[0] += time.perf_counter() - t0
                spent[1] += time.process_time() - c0
        return wrapper

    try:  # fit looks these up as module globals at call time: wrapping them times fit's evaluation
        for name, fn in originals.items():
            setattr(engine, name, timed(fn))
        t0, c0 = time.perf_counter(), time.process_time()
        engine.fit(cfg, dataset=dataset)
        if torch.cuda.is_available() and cfg.train.device != "cpu":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0, spent[0], spent[1]
    finally:
        for name, fn in originals.items():
            setattr(engine, name, fn)


def throughput(cfg: Any, repeats: int, samples: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Bare loop and fit interleaved (bare, fit, bare, fit, ...) after one warm-up of each; per-round
    ratios bare time / fit time (= fit's samples/s over the bare loop's), median and spread."""
    bare_loop(cfg)
    platform_fit(cfg)
    bare, fits = [], []
    for _ in range(repeats):
        bare.append(bare_loop(cfg))
        fits.append(platform_fit(cfg))
    ratio = [b[0] / f[0] for b, f in zip(bare, fits)]
    ratio_no_eval = [b[0] / max(f[0] - f[2], 1e-9) for b, f in zip(bare, fits)]
    ratio_cpu = [b[1] / f[1] for b, f in zip(bare, fits)]
    ratio_cpu_no_eval = [b[1] / max(f[1] - f[3], 1e-9) for b, f in zip(bare, fits)]
    figures = {"platform_over_bare_throughput_conv": statistics.median(ratio),
               "platform_over_bare_throughput_conv_no_eval": statistics.median(ratio_no_eval),
               "platform_over_bare_throughput_conv_cputime": statistics.median(ratio_cpu),
               "platform_over_bare_throughput_conv_no_eval_cputime": statistics.median(ratio_cpu_no_eval),
               "fit_eval_share_conv": statistics.median(f[3] / f[1] for f in fits)}
    raw = {"samples": samples, "bare_wall_cpu_s": bare, "fit_wall_cpu_evalwall_evalcpu_s": fits,
           "bare_samples_per_s": samples / statistics.median(b[0] for b in bare),
           "fit_samples_per_s": samples / statistics.median(f[0] for f in fits),
           "fit_samples_per_s_no_eval": samples / statistics.median(f[0] - f[2] for f in fits),
           "spread": {"wall": spread(ratio), "wall_no_eval": spread(ratio_no_eval), "cpu": spread(ratio_cpu),
                      "cpu_no_eval": spread(ratio_cpu_no_eval)},
           "config": cfg.to_dict()}
    return figures, raw


# --------------------------------------------------------------------------------------------------
# step time: MCR vs joint, the models built from the config


class StepRunner:
    """One variant (joint or MCR with S permutations): model, method and optimizer as ``fit`` builds them
    (``build_model`` + ``REGISTRY[cfg.method.name]`` + Adam), one training step on a fixed batch.

    ``capture``: on CUDA, record the whole step (forward, backward, optimizer) once as a CUDA graph and
    replay it; the inputs are static tensors (same shapes every step), the optimizer is ``capturable``,
    and the method's random draws come from a CUDA generator registered with the graph.
    """

    def __init__(self, cfg: Any, shapes: list[tuple[int, ...]], xs: list[Any], y: Any, *, capture: bool = False):
        import torch

        from mcrlab.methods import REGISTRY, StepContext
        from mcrlab.models import build_model

        self.dev = xs[0].device
        self.amp = self.dev.type == "cuda" and cfg.train.amp in ("auto", "bf16")
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(shapes, NUM_CLASSES, cfg.model, device=self.dev)
        self.method = REGISTRY[cfg.method.name](cfg.method.params, self.model, NUM_CLASSES)
        extra = self.method.extra_modules()
        params = list(self.model.parameters())
        if extra is not None:
            extra.to(self.dev)
            params += list(extra.parameters())
        self.capture = capture and self.dev.type == "cuda"
        self.opt = torch.optim.Adam(params, lr=cfg.train.lr, capturable=self.capture)
        # a generator on the step's device: no per-step generator (device_generator returns it as is)
        gen = torch.Generator(device=self.dev).manual_seed(cfg.train.seed)
        self.ctx = StepContext(epoch=0, step=0, global_step=0, epochs=1, steps_per_epoch=1, generator=gen,
                               device=self.dev, optimizer=self.opt)
        self.xs, self.y = xs, y
        self.graph = None
        if self.capture:
            self._capture(gen)

    def _autocast(self) -> Any:
        import torch

        # autocast's weight-cast cache must be off in a captured region (PyTorch's CUDA-graph notes): the
        # cached casts would be tensors of the capture's private pool that replays do not refresh
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=self.amp,
                              cache_enabled=not self.capture)

    def _body(self) -> None:
        """Forward, backward and optimizer step: what the eager step runs and the graph records."""
        with self._autocast():
            res = self.method.training_step(self.model, self.xs, self.y, self.ctx)
        if not res.backward_done:
            res.loss.backward()
        self.method.after_backward(self.model, self.ctx)
        self.opt.step()

    def _eager(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        self._body()

    def _capture(self, gen: Any) -> None:
        import torch

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph: lazy state, cuDNN plans, optimizer state
            for _ in range(3):
                self._eager()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if hasattr(graph, "register_generator_state"):
            graph.register_generator_state(gen)
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            self._body()
        self.graph = graph

    def step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._eager()


def step_ratios(data_shapes: tuple[tuple[int, ...], ...], *, device: str, fusion: str, batch: int, steps: int,
                warmup: int, s_list: tuple[int, ...] = (8, 32), latent: int = 128, capture: bool = False,
                channels_last: bool = False) -> dict[str, dict[str, float]]:
    """Per variant (joint, mcr_S{s}): step wall/process ms and the per-round ratios to joint (median,
    p25, p75), variants interleaved round-robin so load changes hit all alike."""
    import torch

    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(batch, *s, generator=g).to(dev) for s in data_shapes]
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(dev)
    shapes = [tuple(s) for s in data_shapes]
    def make(method: str, s: int = 32) -> StepRunner:
        cfg = conv_config("<memory>", method=method, num_perms=s, fusion=fusion, latent=latent, batch_size=batch,
                          device=device, channels_last=channels_last)
        return StepRunner(cfg, shapes, xs, y, capture=capture)

    runs = {"joint": make("joint")}
    for s in s_list:
        runs[f"mcr_S{s}"] = make("mcr", s)
    cuda = dev.type == "cuda"
    times: dict[str, list[tuple[float, float]]] = {n: [] for n in runs}
    for i in range(warmup + steps):
        for name, run in runs.items():
            if cuda:
                torch.cuda.synchronize()
            w0, c0 = time.perf_counter(), time.process_time()
            run.step()
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(((time.perf_counter() - w0) * 1e3, (time.process_time() - c0) * 1e3))
    out = {}
    base = times["joint"]
    for name, ts in times.items():
        rw = [t[0] / b[0] for t, b in zip(ts, base, strict=True)]
        rc = [t[1] / b[1] if b[1] > 0 else math.nan for t, b in zip(ts, base, strict=True)]
        sw, sc = spread(rw), spread(rc)
        out[name] = {"wall_ms": statistics.median(t[0] for t in ts), "cpu_ms": statistics.median(t[1] for t in ts),
                     "ratio_wall": sw["median"], "ratio_wall_p25": sw["p25"], "ratio_wall_p75": sw["p75"],
                     "ratio_cpu": sc["median"], "ratio_cpu_p25": sc["p25"], "ratio_cpu_p75": sc["p75"]}
    return out

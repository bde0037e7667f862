"""``fit(cfg, report)``: the one training loop. Plain PyTorch; imports no Ray.

The same loop runs under pytest, plain Python, a Ray Tune function trainable and a Ray Train worker:
callers pass ``report(metrics, checkpoint_dir)`` to receive per-epoch metrics. Under torch.distributed
(Ray Train workers) every rank draws the same global batch order, takes rows ``rank::world`` of each global
batch, and gradients are averaged with one flat all-reduce after the method's gradient hook - so any method,
whatever its forward, trains data-parallel without a DDP wrapper. MCR's permutations are drawn per worker
over its local batch (the estimator is a per-sample mean, so each rank's D_m is an unbiased estimate and the
averaged gradient matches the single-process one in expectation; exactly only for methods without in-batch
randomness).

BatchNorm (and any other floating) buffers are averaged over ranks at the end of every epoch, before
validation, so every rank evaluates and checkpoints the same running statistics.

Data: a split in memory (``data.Split``) goes to the device whole (the fast path); a streamed shard split
(``data.stream.ShardSplit``, ``data.loader=stream``) is read by ``data.stream.StreamBatches`` (each rank
its own row groups) and evaluated chunk by chunk; a caller may also pass ``train_batches`` (the Ray Data
iterator of ``ray_train``). All three give fit batches through the same ``steps`` / ``epoch(generator)``.

Model selection: the test metrics are computed on the weights of the best validation epoch.
"""

from __future__ import annotations

import copy
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from mcrlab.config import ConfigError, RunConfig
from mcrlab.data import MultimodalDataset, Split, load_dataset
from mcrlab.engine.metrics import accuracy, macro_f1
from mcrlab.engine.optim import build_optimizer
from mcrlab.engine.pretrain import apply_init, load_or_pretrain
from mcrlab.engine.probe import linear_probe
from mcrlab.methods import REGISTRY, Method, StepContext
from mcrlab.models import MultimodalNet, build_model
from mcrlab.models.sync import sync_buffers

__all__ = ["fit", "ReportFn", "CHECKPOINT_FILE", "evaluate", "player_multipliers", "TrainBatches", "MemoryBatches"]

# fit reports each epoch through this: report(metrics, checkpoint_dir or None)
ReportFn = Callable[[dict[str, float], "str | None"], None]
CHECKPOINT_FILE = "state.pt"
EVAL_CHUNK = 4096


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN/inf loss; the run is stopped at once."""


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device(cfg: RunConfig) -> torch.device:
    want = cfg.train.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda" and dist.is_initialized():
        # modulo: with fractional GPUs several workers of one node may see the same single device
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % max(1, torch.cuda.device_count()))
    return torch.device(want)


def _to_tensors(split: Split, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    xs = [torch.as_tensor(x, dtype=torch.float32, device=device) for x in split.x]
    return xs, torch.as_tensor(split.y, dtype=torch.long, device=device)


Batch = tuple[list[torch.Tensor], torch.Tensor]  # (x per modality (B, *shape_m), y (B,))


class TrainBatches(Protocol):
    """Where fit's training batches come from: ``steps`` per epoch, the same on every rank."""

    steps: int

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        """This rank's ``steps`` batches of one epoch; the order is drawn from ``generator``."""
        ...


class MemoryBatches:
    """The in-memory fast path: the whole split on the device, one global permutation per epoch, this
    rank's rows ``rank::world`` of each global batch of ``batch_size``."""

    def __init__(self, split: Split, device: torch.device, batch_size: int, rank: int = 0, world: int = 1):
        self.xs, self.y = _to_tensors(split, device)
        self.batch_size, self.rank, self.world, self.device = batch_size, rank, world, device
        n = len(self.y)
        self.steps = max(1, n // batch_size) if n >= batch_size else 1

    def epoch(self, generator: torch.Generator) -> Iterator[Batch]:
        perm = torch.randperm(len(self.y), generator=generator).to(self.device)
        b = self.batch_size
        for step in range(self.steps):
            idx = perm[step * b:(step + 1) * b][self.rank::self.world]
            yield [x[idx] for x in self.xs], self.y[idx]


class _EvalChunks:
    """A split for evaluation, iterable as chunks of ``EVAL_CHUNK`` rows in split order (re-iterable).

    In memory: tensors put on the device once. Streamed: read from the shards at every pass, so the
    chunks (hence D_m's permutation draws) are exactly those of the in-memory evaluation."""

    def __init__(self, split: Any, device: torch.device):
        self.split, self.device = split, device
        self.tensors = _to_tensors(split, device) if isinstance(split, Split) else None

    def __iter__(self) -> Iterator[Batch]:
        if self.tensors is not None:
            xs, y = self.tensors
            for s in range(0, len(y), EVAL_CHUNK):
                yield [x[s:s + EVAL_CHUNK] for x in xs], y[s:s + EVAL_CHUNK]
            return
        cuda = self.device.type == "cuda"
        for xs, y in self.split.chunks(EVAL_CHUNK):
            # arrays may be read-only views of Arrow buffers: torch wants writable memory
            yield ([torch.from_numpy(np.require(x, requirements="W")).to(self.device, non_blocking=cuda)
                    for x in xs], torch.from_numpy(np.require(y, requirements="W")).to(self.device, non_blocking=cuda))


def _train_batches(data: MultimodalDataset, cfg: RunConfig, device: torch.device, rank: int,
                   world: int) -> TrainBatches:
    split = data.splits["train"]
    if isinstance(split, Split):
        return MemoryBatches(split, device, cfg.train.batch_size, rank, world)
    from mcrlab.data.stream import StreamBatches

    return StreamBatches(split, batch_size=cfg.train.batch_size, device=device, rank=rank, world=world,
                         workers=cfg.data.workers, shuffle_mib=cfg.data.shuffle_mib)


def player_multipliers(cfg: RunConfig, num_modalities: int) -> list[float]:
    """r_m from train.player_lr (missing entries are 1.0)."""
    given = [float(r) for r in cfg.train.player_lr]
    return (given + [1.0] * num_modalities)[:num_modalities]


def _param_groups(model: MultimodalNet, method: Method, lr: float, mult: list[float]) -> list[dict]:
    """One group per player (lr * r_m), one for everything else (fusion bias / MLP head, extras)."""
    groups: list[dict] = []
    seen: set[int] = set()
    for m in range(model.num_modalities):
        params = [p for mod in model.player_modules(m) for p in mod.parameters()]
        seen.update(id(p) for p in params)
        params = [p for p in params if p.requires_grad]  # a frozen encoder (model.init) is not optimised
        groups.append({"params": params, "lr": lr * mult[m], "player": m})
    rest = [p for p in model.parameters() if id(p) not in seen and p.requires_grad]
    extra = method.extra_modules()
    if extra is not None:
        rest += list(extra.parameters())
    if rest:
        groups.append({"params": rest, "lr": lr, "player": -1})
    return groups


def _optimizer(cfg: RunConfig, groups: list[dict]) -> torch.optim.Optimizer:
    return build_optimizer(cfg, groups)


def _set_player_lr(opt: torch.optim.Optimizer, lr: float, mult: list[float]) -> None:
    for g in opt.param_groups:
        if g["player"] >= 0:
            g["lr"] = lr * mult[g["player"]]


def adaptive_multipliers(base: list[float], d: list[float], band: list[float], rate: float) -> list[float]:
    """Adaptive game-theoretic learning rates: the player with the smaller influence D_m steps larger.

    r_m = base_m * clip((mean(D) / D_m) ** rate, lo, hi). Stateless per epoch, so it cannot drift.
    A player with no influence (D_m <= 1e-12) while others have some gets the top of the band (the limit
    of the formula); when no player has any (mean <= 1e-12) there is nothing to balance: r_m = base_m.
    """
    mean = sum(d) / len(d)
    out = []
    for b, dm in zip(base, d):
        if mean <= 1e-12:
            ratio = 1.0
        elif dm <= 1e-12:
            ratio = math.inf if rate > 0 else 1.0
        else:
            ratio = (mean / dm) ** rate
        out.append(b * min(max(ratio, band[0]), band[1]))
    return out


def _read_epoch(losses: list[torch.Tensor], step_logs: dict, epoch: int) -> tuple[float, dict[str, float]]:
    """The epoch's loss sum and last-step logs as host floats, in one device->host transfer; raises
    NonFiniteLoss for the first non-finite step loss (the check deferred from the steps off the CPU)."""
    keys = [k for k, v in step_logs.items() if isinstance(v, torch.Tensor)]
    vals = torch.stack(losses).float()
    if keys:
        vals = torch.cat([vals, torch.stack([step_logs[k].float().reshape(()) for k in keys])])
    host = vals.tolist()
    step_losses = host[:len(losses)]
    bad = next((i for i, v in enumerate(step_losses) if not math.isfinite(v)), None)
    if bad is not None:
        raise NonFiniteLoss(f"non-finite loss {step_losses[bad]} at epoch {epoch}, step {bad}")
    return sum(step_losses), {**step_logs, **dict(zip(keys, host[len(losses):], strict=True))}


def _allreduce_grads(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over ranks with one flat all-reduce (params without grad count as zero)."""
    world = dist.get_world_size()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


@torch.no_grad()
def evaluate(model: MultimodalNet, method: Method, chunks: Iterable[Batch], modalities: list[str],
             num_classes: int, prefix: str, num_perms: int, generator: torch.Generator
             ) -> tuple[dict[str, float], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Fused accuracy/F1, per-modality head accuracy and D_m on one split, read as ``chunks`` of
    (x per modality (b, *shape_m), y (b,)). Returns (metrics, latents (N, d_m) per modality, y (N,),
    fused predictions (N,))."""
    from mcrlab.mcr import unique_information

    model.eval()
    logits: list[torch.Tensor] = []
    heads: list[list[torch.Tensor]] = [[] for _ in modalities]
    zs: list[list[torch.Tensor]] = [[] for _ in modalities]
    ys: list[torch.Tensor] = []
    ds: torch.Tensor | None = None
    for xs, yc in chunks:
        out = model(xs)
        logits.append(method.predict(out).float())
        for m in range(len(modalities)):
            heads[m].append(out.heads[m].argmax(1))
            zs[m].append(out.z[m].float())
        d = unique_information(model, out, num_perms=num_perms, generator=generator) * len(yc)
        ds = d if ds is None else ds + d
        ys.append(yc)
    model.train()
    y = torch.cat(ys)
    assert ds is not None  # torch.cat(ys) above refuses no chunks, and every chunk sets ds
    n = len(y)
    pred = torch.cat(logits).argmax(1)
    metrics = {f"{prefix}/acc": accuracy(pred, y), f"{prefix}/f1": macro_f1(pred, y, num_classes)}
    for m, name in enumerate(modalities):
        metrics[f"{prefix}/head/{name}"] = accuracy(torch.cat(heads[m]), y)
        metrics[f"{prefix}/D/{name}"] = float(ds[m]) / n
    return metrics, [torch.cat(z) for z in zs], y, pred


def _final_metrics(model: MultimodalNet, method: Method, data: MultimodalDataset, cfg: RunConfig,
                   device: torch.device, generator: torch.Generator) -> dict[str, float]:
    """Test metrics, linear probes per frozen encoder and accuracy per information type."""
    metrics, z_test, y, pred = evaluate(model, method, _EvalChunks(data.splits["test"], device), data.modalities,
                                        data.num_classes, "test", cfg.train.eval_perms, generator)
    if cfg.train.probe_epochs > 0:
        with torch.no_grad():  # latents of the frozen encoders, chunk by chunk (streamed splits too)
            model.eval()
            parts = [(model.encode(xs), yc) for xs, yc in _EvalChunks(data.splits["train"], device)]
            model.train()
        z_train = [torch.cat([p[0][m] for p in parts]) for m in range(len(data.modalities))]
        ytr = torch.cat([p[1] for p in parts])
        for m, name in enumerate(data.modalities):
            metrics[f"test/probe/{name}"] = linear_probe(
                z_train[m].double().cpu(), ytr.cpu(), z_test[m].double().cpu(), y.cpu(), data.num_classes,
                steps=cfg.train.probe_epochs, seed=cfg.train.seed)
    types = data.splits["test"].info_type
    if types is not None and data.info_types:
        t = torch.as_tensor(types, device=device)
        for k, name in enumerate(data.info_types):
            mask = t == k
            if mask.any():
                metrics[f"test/acc_type/{name}"] = accuracy(pred[mask], y[mask])
    return metrics


# keys that say how a run is carried out, not what it computes: a resumed run may change them
RESUME_FREE = frozenset({"train.epochs", "train.device", "train.checkpoint_every", "train.patience",
                         "data.loader", "data.workers"})


def check_resumable(saved: dict | None, cfg: RunConfig, where: Path) -> None:
    """Refuse to continue a checkpoint written by another configuration (another lr, data seed, method...):
    it would silently mix two runs. ConfigError naming the first differing key and both values."""
    if saved is None:
        return
    old = RunConfig.from_dict(saved, str(where)).flat()
    new = cfg.flat()
    for key in [*old, *(k for k in new if k not in old)]:  # config order: a method switch shows as method.name
        if key not in RESUME_FREE and old.get(key) != new.get(key):
            raise ConfigError(f"--resume: {where}: the checkpoint was written with {key}={old.get(key)!r}, "
                              f"this run has {key}={new.get(key)!r}; resume with the same configuration "
                              "(or start a new run in another folder)")


def _save(path: Path, state: dict, name: str = CHECKPOINT_FILE) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / name)  # atomic: a kill mid-write never leaves a torn checkpoint


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def compile_options(setting: bool | str) -> dict[str, Any]:
    """torch.compile's keyword arguments for ``train.compile``: true = "default" (inductor); "reduce-overhead"
    adds CUDA-graph capture of the compiled step on CUDA (a no-op on CPU); "max-autotune" also tunes kernels."""
    mode = "default" if setting is True else setting
    if mode not in COMPILE_MODES:
        raise ValueError(f"train.compile: {setting!r} is not true, false or one of {', '.join(COMPILE_MODES)}")
    return {} if mode == "default" else {"mode": mode}


def fit(cfg: RunConfig, report: ReportFn | None = None, *, checkpoint_dir: str | None = None,
        resume_from: str | None = None, dataset: MultimodalDataset | None = None,
        train_batches: TrainBatches | None = None, model_out: str | Path | None = None) -> dict[str, float]:
    """Train one run; return the final metrics (also carried by the last ``report`` call).

    report(metrics, checkpoint_dir) is called once per epoch; the last call adds the test/* metrics.
    checkpoint_dir: where to write ``state.pt`` every ``train.checkpoint_every`` epochs (and at the end).
    resume_from: a directory holding a ``state.pt`` written by this function; training continues there
    and, on CPU, ends exactly as an uninterrupted run would.
    train_batches: this rank's training batches (e.g. ``ray_train``'s Ray Data shard); default: from
    ``dataset``'s train split, in memory or streamed (``data.loader``).
    model_out: a file to write the selected model to at the end (rank 0): ``{"model": the best validation
    epoch's state dict, "config": cfg}`` - what ``mcrlab train --track`` logs for ``model.init=<run id>``.
    """
    t = cfg.train
    _seed_everything(t.seed)
    device = _device(cfg)
    data = dataset if dataset is not None else load_dataset(cfg.data)
    M, C, names = len(data.modalities), data.num_classes, data.modalities
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)

    model = build_model(data.shapes, C, cfg.model, device=device)
    apply_init(model, cfg, data, device)  # model.init: pre-trained unimodal encoders + heads (cached)
    method = REGISTRY[cfg.method.name](cfg.method.params, model, C)
    method.prepare(cfg, data, device,  # e.g. UMT's unimodal teachers (the cached pre-training of model.init)
                   unimodal_state=lambda: load_or_pretrain(model, cfg, data, device)[0])
    extra = method.extra_modules()
    if extra is not None:
        extra.to(device)
    base_mult = player_multipliers(cfg, M)
    mult = list(base_mult)
    opt = _optimizer(cfg, _param_groups(model, method, t.lr, mult))
    # train.compile: the method compiles its whole step (MCR: forward and loss) or, by default, the training
    # forward runs compiled; evaluation and checkpoints use the module itself
    step_model = model
    if t.compile is not False:
        options = compile_options(t.compile)
        if not method.compile_step(options):
            # torch.compile's stubs return a plain callable; for a module it returns an OptimizedModule
            step_model = torch.compile(model, **options)  # type: ignore[assignment]
    all_params = [p for g in opt.param_groups for p in g["params"]]

    batches = train_batches if train_batches is not None else _train_batches(data, cfg, device, rank, world)
    val_chunks = _EvalChunks(data.splits["val"], device)
    steps_per_epoch = batches.steps
    cuda = device.type == "cuda"
    # reduce-overhead on CUDA replays the compiled step as CUDA graphs, whose outputs live in memory that the
    # next replay overwrites: each step's loss is copied (on the device) to survive until the epoch's read
    captured = cuda and t.compile == "reduce-overhead"
    order_gen = torch.Generator().manual_seed(t.seed)  # batch order: identical on every rank
    method_gen = torch.Generator(device="cpu").manual_seed(t.seed * 1_000_003 + rank)  # per-rank draws
    eval_gen = torch.Generator(device="cpu")
    amp = device.type == "cuda" and t.amp in ("auto", "bf16")

    start_epoch, global_step, best_val, best_state, bad_epochs = 0, 0, -math.inf, None, 0
    if resume_from is not None and (Path(resume_from) / CHECKPOINT_FILE).is_file():
        state = torch.load(Path(resume_from) / CHECKPOINT_FILE, map_location=device, weights_only=True)
        check_resumable(state.get("config"), cfg, Path(resume_from))
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        method.load_state_dict(state["method"])
        order_gen.set_state(state["order_gen"])
        method_gen.set_state(state["method_gen"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, global_step = state["epoch"] + 1, state["global_step"]
        best_val, best_state, bad_epochs = state["best_val"], state["best_state"], state["bad_epochs"]
        mult = state["mult"]
        _set_player_lr(opt, t.lr, mult)
        if start_epoch >= t.epochs:  # the run had already finished
            return state["metrics"]

    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, t.epochs):
        ctx = StepContext(epoch=epoch, step=0, global_step=global_step, epochs=t.epochs,
                          steps_per_epoch=steps_per_epoch, generator=method_gen, device=device, optimizer=opt)
        logs = method.on_epoch_start(epoch, ctx)
        losses, step_logs = [], {}
        for step, (xb, yb) in enumerate(batches.epoch(order_gen)):
            xb = [x.to(device, non_blocking=cuda) for x in xb]  # no-ops for the in-memory path
            yb = yb.to(device, non_blocking=cuda)
            ctx.step, ctx.global_step = step, global_step
            opt.zero_grad(set_to_none=True)
            if captured:  # a new training iteration: the previous step's graph outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                res = method.training_step(step_model, xb, yb, ctx)
            # reading a CPU tensor is free; on an accelerator the check waits for the epoch's one read below
            if device.type == "cpu" and not torch.isfinite(res.loss):
                raise NonFiniteLoss(f"non-finite loss {res.loss.item()} at epoch {epoch}, step {step}")
            if not res.backward_done:
                res.loss.backward()
            step_logs = {**res.logs, **method.after_backward(model, ctx)}
            if world > 1:
                _allreduce_grads(all_params)
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(all_params, t.grad_clip)
            opt.step()
            # (the last step's logs are read before the next replay, at the end of the epoch)
            losses.append(res.loss.detach().clone() if captured else res.loss.detach())
            global_step += 1
        loss_sum, step_logs = _read_epoch(losses, step_logs, epoch)

        if world > 1:  # BatchNorm statistics: equal on every rank before anyone evaluates or saves
            for module in (model, extra):
                if module is not None:
                    sync_buffers(module)
        val, z_val, y_va, _ = evaluate(model, method, val_chunks, names, C, "val", t.eval_perms,
                                       eval_gen.manual_seed(t.seed + epoch))
        method.on_validation(z_val, y_va)
        metrics = {"epoch": epoch + 1, "train/loss": loss_sum / steps_per_epoch, **val,
                   **{f"train/{k}": v for k, v in step_logs.items()}, **logs}
        metrics.update(method.on_epoch_end(epoch, metrics))
        if t.adaptive_lr:
            mult = adaptive_multipliers(base_mult, [val[f"val/D/{n}"] for n in names], t.adaptive_band,
                                        t.adaptive_rate)
            _set_player_lr(opt, t.lr, mult)
        metrics.update({f"lr/{n}": t.lr * mult[m] for m, n in enumerate(names)})

        if val["val/acc"] > best_val and method.selectable(epoch):
            best_val, bad_epochs = val["val/acc"], 0
            # the method's state too: predict may use it (MLA's shared head, ensemble scales, MMCosine's W)
            best_state = copy.deepcopy({"model": model.state_dict(), "method": method.state_dict()})
        else:
            bad_epochs += 1
        last = epoch == t.epochs - 1 or (t.patience > 0 and bad_epochs >= t.patience)
        if last:
            # evaluate the best epoch in place (method and model together), then restore the last state
            current = copy.deepcopy({"model": model.state_dict(), "method": method.state_dict()})
            if best_state is not None:
                model.load_state_dict(best_state["model"])
                method.load_state_dict(best_state["method"])
            metrics.update(_final_metrics(model, method, data, cfg, device,
                                          eval_gen.manual_seed(t.seed + 10_000)))
            if model_out is not None and rank == 0:  # the weights the test metrics were computed on
                _save(Path(model_out).parent, {"model": model.state_dict(), "config": cfg.to_dict()},
                      Path(model_out).name)
            model.load_state_dict(current["model"])
            method.load_state_dict(current["method"])
            metrics["val/best_acc"] = best_val
        ckpt = None
        if checkpoint_dir is not None and (last or (epoch + 1) % t.checkpoint_every == 0):
            ckpt = checkpoint_dir
            if rank == 0:
                _save(Path(checkpoint_dir), {
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "method": method.state_dict(),
                    "order_gen": order_gen.get_state(), "method_gen": method_gen.get_state(),
                    "torch_rng": torch.get_rng_state(), "epoch": epoch, "global_step": global_step,
                    "best_val": best_val, "best_state": best_state, "bad_epochs": bad_epochs, "mult": mult,
                    "config": cfg.to_dict(), "metrics": metrics})
        if report is not None:
            report(metrics, ckpt)
        if last:
            break
    return metrics


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``fit`` (tensors and plain containers only: weights_only)."""
    return torch.load(Path(path) / CHECKPOINT_FILE, map_location=map_location, weights_only=True)

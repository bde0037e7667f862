"""``fit(cfg, report)``: the one training loop. Plain PyTorch; imports no Ray.

The same loop runs under pytest, plain Python, a Ray Tune function trainable and a Ray Train worker:
callers pass ``report(metrics, checkpoint_dir)`` to receive per-epoch metrics. Under torch.distributed
(Ray Train workers) every rank draws the same global batch order, takes rows ``rank::world`` of each global
batch, and gradients are averaged with one flat all-reduce after the method's gradient hook - so any method,
whatever its forward, trains data-parallel without a DDP wrapper. MCR's permutations are drawn per worker
over its local batch (the estimator is a per-sample mean, so each rank's D_m is an unbiased estimate and the
averaged gradient matches the single-process one in expectation; exactly only for methods without in-batch
randomness).

Model selection: the test metrics are computed on the weights of the best validation epoch.
"""

from __future__ import annotations

import copy
import math
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mcrlab.config import RunConfig
from mcrlab.data import MultimodalDataset, Split, load_dataset
from mcrlab.methods import REGISTRY, Method, StepContext
from mcrlab.metrics import accuracy, macro_f1
from mcrlab.models import MultimodalNet, build_model
from mcrlab.probe import linear_probe

__all__ = ["fit", "Report", "CHECKPOINT_FILE", "evaluate", "player_multipliers"]

Report = Callable[[dict[str, float], "str | None"], None]
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
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(want)


def _to_tensors(split: Split, device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor]:
    xs = [torch.as_tensor(x, dtype=torch.float32, device=device) for x in split.x]
    return xs, torch.as_tensor(split.y, dtype=torch.long, device=device)


def player_multipliers(cfg: RunConfig, num_modalities: int) -> list[float]:
    """r_m from train.player_lr (missing entries are 1.0)."""
    given = [float(r) for r in cfg.train.player_lr]
    return (given + [1.0] * num_modalities)[:num_modalities]


def _param_groups(model: MultimodalNet, method: Method, lr: float, mult: list[float]) -> list[dict]:
    """One group per player (lr * r_m), one for everything else (fusion bias / MLP head, extras)."""
    groups, seen = [], set()
    for m in range(model.num_modalities):
        params = [p for mod in model.player_modules(m) for p in mod.parameters()]
        seen.update(id(p) for p in params)
        groups.append({"params": params, "lr": lr * mult[m], "player": m})
    rest = [p for p in model.parameters() if id(p) not in seen]
    extra = method.extra_modules()
    if extra is not None:
        rest += list(extra.parameters())
    if rest:
        groups.append({"params": rest, "lr": lr, "player": -1})
    return groups


def _optimizer(cfg: RunConfig, groups: list[dict]) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=t.lr, weight_decay=t.weight_decay)


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
def evaluate(model: MultimodalNet, method: Method, xs: list[torch.Tensor], y: torch.Tensor,
             modalities: list[str], num_classes: int, prefix: str, num_perms: int,
             generator: torch.Generator) -> tuple[dict[str, float], list[torch.Tensor]]:
    """Fused accuracy/F1, per-modality head accuracy and D_m on one split. Returns (metrics, latents)."""
    from mcrlab.mcr import unique_information

    model.eval()
    logits, heads, zs, ds, n = [], [[] for _ in modalities], [[] for _ in modalities], None, len(y)
    for s in range(0, n, EVAL_CHUNK):
        out = model([x[s:s + EVAL_CHUNK] for x in xs])
        logits.append(method.predict(out).float())
        for m in range(len(modalities)):
            heads[m].append(out.heads[m].argmax(1))
            zs[m].append(out.z[m].float())
        d = unique_information(model, out, num_perms=num_perms, generator=generator) * len(y[s:s + EVAL_CHUNK])
        ds = d if ds is None else ds + d
    model.train()
    pred = torch.cat(logits).argmax(1)
    metrics = {f"{prefix}/acc": accuracy(pred, y), f"{prefix}/f1": macro_f1(pred, y, num_classes)}
    for m, name in enumerate(modalities):
        metrics[f"{prefix}/head/{name}"] = accuracy(torch.cat(heads[m]), y)
        metrics[f"{prefix}/D/{name}"] = float(ds[m]) / n
    return metrics, [torch.cat(z) for z in zs]


def _final_metrics(model: MultimodalNet, method: Method, data: MultimodalDataset, cfg: RunConfig,
                   device: torch.device, generator: torch.Generator) -> dict[str, float]:
    """Test metrics, linear probes per frozen encoder and accuracy per information type."""
    xs, y = _to_tensors(data.splits["test"], device)
    metrics, z_test = evaluate(model, method, xs, y, data.modalities, data.num_classes, "test",
                               cfg.train.eval_perms, generator)
    if cfg.train.probe_epochs > 0:
        xtr, ytr = _to_tensors(data.splits["train"], device)
        with torch.no_grad():
            model.eval()
            z_train = model.encode(xtr)
            model.train()
        for m, name in enumerate(data.modalities):
            metrics[f"test/probe/{name}"] = linear_probe(
                z_train[m].double().cpu(), ytr.cpu(), z_test[m].double().cpu(), y.cpu(), data.num_classes,
                steps=cfg.train.probe_epochs, seed=cfg.train.seed)
    types = data.splits["test"].info_type
    if types is not None and data.info_types:
        with torch.no_grad():
            model.eval()
            pred = torch.cat([method.predict(model([x[s:s + EVAL_CHUNK] for x in xs])).argmax(1)
                              for s in range(0, len(y), EVAL_CHUNK)])
            model.train()
        t = torch.as_tensor(types, device=device)
        for k, name in enumerate(data.info_types):
            mask = t == k
            if mask.any():
                metrics[f"test/acc_type/{name}"] = accuracy(pred[mask], y[mask])
    return metrics


def _save(path: Path, state: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / CHECKPOINT_FILE)  # atomic: a kill mid-write never leaves a torn checkpoint


def fit(cfg: RunConfig, report: Report | None = None, *, checkpoint_dir: str | None = None,
        resume_from: str | None = None, dataset: MultimodalDataset | None = None) -> dict[str, float]:
    """Train one run; return the final metrics (also carried by the last ``report`` call).

    report(metrics, checkpoint_dir) is called once per epoch; the last call adds the test/* metrics.
    checkpoint_dir: where to write ``state.pt`` every ``train.checkpoint_every`` epochs (and at the end).
    resume_from: a directory holding a ``state.pt`` written by this function; training continues there
    and, on CPU, ends exactly as an uninterrupted run would.
    """
    t = cfg.train
    _seed_everything(t.seed)
    device = _device(cfg)
    data = dataset if dataset is not None else load_dataset(cfg.data)
    M, C, names = len(data.modalities), data.num_classes, data.modalities
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)

    model = build_model(data.dims, C, cfg.model).to(device)
    method = REGISTRY[cfg.method.name](cfg.method.params, model, C)
    extra = method.extra_modules()
    if extra is not None:
        extra.to(device)
    base_mult = player_multipliers(cfg, M)
    mult = list(base_mult)
    opt = _optimizer(cfg, _param_groups(model, method, t.lr, mult))
    # train.compile: the training forward runs compiled; evaluation and checkpoints use the module itself
    step_model = torch.compile(model) if t.compile else model
    all_params = [p for g in opt.param_groups for p in g["params"]]

    xs_tr, y_tr = _to_tensors(data.splits["train"], device)
    xs_va, y_va = _to_tensors(data.splits["val"], device)
    n_train = len(y_tr)
    steps_per_epoch = max(1, n_train // t.batch_size) if n_train >= t.batch_size else 1
    order_gen = torch.Generator().manual_seed(t.seed)  # batch order: identical on every rank
    method_gen = torch.Generator(device="cpu").manual_seed(t.seed * 1_000_003 + rank)  # per-rank draws
    eval_gen = torch.Generator(device="cpu")
    amp = device.type == "cuda" and t.amp in ("auto", "bf16")

    start_epoch, global_step, best_val, best_state, bad_epochs = 0, 0, -math.inf, None, 0
    if resume_from is not None and (Path(resume_from) / CHECKPOINT_FILE).is_file():
        state = torch.load(Path(resume_from) / CHECKPOINT_FILE, map_location=device, weights_only=True)
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
        perm = torch.randperm(n_train, generator=order_gen).to(device)
        losses, step_logs = [], {}
        for step in range(steps_per_epoch):
            idx = perm[step * t.batch_size:(step + 1) * t.batch_size][rank::world]
            ctx.step, ctx.global_step = step, global_step
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
                res = method.training_step(step_model, [x[idx] for x in xs_tr], y_tr[idx], ctx)
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
            losses.append(res.loss.detach())
            global_step += 1
        loss_sum, step_logs = _read_epoch(losses, step_logs, epoch)

        val, z_val = evaluate(model, method, xs_va, y_va, names, C, "val", t.eval_perms,
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

        if val["val/acc"] > best_val:
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

"""Pre-trained unimodal initialisation (``model.init=unimodal|unimodal_frozen``), the paper's protocol
(``model.init=<MLflow run id>`` is ``engine/init_run.py``).

Each modality's encoder and unimodal head are first trained alone (cross-entropy of h_m(f_m(x_m)), a
plain mini-batch loop like ``fit``'s), then loaded into the multimodal model; ``unimodal_frozen`` also
freezes the encoders (no gradients, BatchNorm in eval mode). The result is cached as one file per
(dataset fingerprint, settings that shape it) under a cache directory, so every trial of a sweep with
the same settings shares one pre-training. The write is atomic (a temporary file, then ``os.replace``);
a file that does not load or does not fit the model (half-written, another version) is ignored and
rebuilt.

The global RNG is left as it was: a cache hit and a cache miss continue with the same random stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mcrlab.config import RunConfig
from mcrlab.engine.cache import CACHE_ENV, default_cache_dir
from mcrlab.engine.optim import build_optimizer
from mcrlab.models.net import MultimodalNet, build_model

__all__ = ["FORMAT", "CACHE_ENV", "default_cache_dir", "pretrain_key", "pretrain_unimodal", "load_or_pretrain",
           "apply_init", "init_lineage"]

FORMAT = 1  # bump when the pre-training procedure changes: old cache files then stop matching


def _shapes(dataset: Any) -> list:
    shapes = getattr(dataset, "shapes", None)
    return list(shapes) if shapes is not None else list(dataset.dims)


def pretrain_key(fingerprint: str, cfg: RunConfig) -> str:
    """Hash of everything that shapes the pre-trained encoders and heads: the data, the encoders'
    settings and the optimisation settings. The fusion head, the method and ``model.init`` itself
    (unimodal and unimodal_frozen share one pre-training) do not enter."""
    model = {k: v for k, v in cfg.to_dict()["model"].items() if k not in ("init", "fusion", "fusion_hidden",
                                                                          "channels_last")}
    t = cfg.train
    train = {"epochs": cfg.model.init_epochs or t.epochs, "batch_size": t.batch_size, "lr": t.lr,
             "optimizer": t.optimizer, "momentum": t.momentum, "weight_decay": t.weight_decay,
             "grad_clip": t.grad_clip, "seed": t.seed}
    blob = json.dumps({"format": FORMAT, "data": fingerprint, "model": model, "train": train},
                      sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def init_lineage(cfg: RunConfig, fingerprint: str) -> dict[str, str]:
    """MLflow lineage tags of a run's initialisation ({} from scratch): the mode and the pre-training's
    cache key, so runs that share one pre-training are found by one tag (computed on the driver)."""
    if cfg.model.init == "scratch":
        return {}
    from mcrlab.engine.init_run import is_run_id

    if is_run_id(cfg.model.init):  # model.init=<MLflow run id>: the source run is the lineage
        return {"init": "run", "init_run_id": cfg.model.init}
    return {"init": cfg.model.init, "init_key": pretrain_key(fingerprint, cfg)}


def pretrain_unimodal(cfg: RunConfig, dataset: Any, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Train encoder m + head m alone on modality m, for every m; return their tensors under the
    multimodal model's state-dict names (``encoders.m.*``, ``heads.m.*``), on the CPU.

    The encoders are built exactly as ``build_model`` builds them (seed ``train.seed``), batches are drawn
    from a seeded generator per modality, and the last incomplete batch is dropped (BatchNorm needs
    more than one sample).
    """
    t, device = cfg.train, torch.device(device)
    epochs = cfg.model.init_epochs or t.epochs
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(t.seed)
        model = build_model(_shapes(dataset), dataset.num_classes, cfg.model, device=device)
        split = dataset.splits["train"]
        xs = [torch.as_tensor(x, dtype=torch.float32, device=device) for x in split.x]
        y = torch.as_tensor(split.y, dtype=torch.long, device=device)
        n = len(y)
        bs = min(t.batch_size, n)
        amp = device.type == "cuda" and t.amp in ("auto", "bf16")
        state: dict[str, torch.Tensor] = {}
        for m in range(model.num_modalities):
            enc, head = model.encoders[m], model.heads[m]
            params = [*enc.parameters(), *head.parameters()]
            opt = build_optimizer(cfg, params)
            order = torch.Generator().manual_seed(t.seed * 1_000_003 + 7 * m + 1)
            enc.train()
            for _ in range(epochs):
                perm = torch.randperm(n, generator=order).to(device)
                for b in range(n // bs):
                    idx = perm[b * bs:(b + 1) * bs]
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                        loss = F.cross_entropy(head(enc(xs[m][idx])).float(), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if t.grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
                    opt.step()
            for prefix, mod in ((f"encoders.{m}.", enc), (f"heads.{m}.", head)):
                state.update({prefix + k: v.detach().cpu().clone() for k, v in mod.state_dict().items()})
    return state


def _expected(model: MultimodalNet) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k.startswith(("encoders.", "heads."))}


def _read(path: Path, key: str, expected: dict[str, tuple]) -> dict[str, torch.Tensor] | None:
    """The cached state, or None when the file is missing, torn, of another key or does not fit."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, half-written, not a torch file
        return None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("key") != key:
        return None
    state = blob.get("state")
    if not isinstance(state, dict) or {k: tuple(v.shape) for k, v in state.items()} != expected:
        return None
    return state


def load_or_pretrain(model: MultimodalNet, cfg: RunConfig, dataset: Any, device: torch.device | str = "cpu",
                     cache_dir: str | Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The pre-trained state for ``model`` from the cache, else trained now and cached (atomically).

    Returns ``(state, lineage)``; ``lineage`` (``init``, ``init/key``, ``init/cached``, ``init/path``)
    is meant for the run's MLflow tags.
    """
    key = pretrain_key(dataset.fingerprint(), cfg)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"unimodal-{key}.pt"
    state = _read(path, key, _expected(model))
    cached = state is not None
    if state is None:
        state = pretrain_unimodal(cfg, dataset, device)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
        try:
            torch.save({"format": FORMAT, "key": key, "state": state}, tmp)
            os.replace(tmp, path)  # atomic: readers see the old file or the whole new one, never a torn one
        finally:
            tmp.unlink(missing_ok=True)
    lineage = {"init": cfg.model.init, "init/key": key, "init/cached": str(cached).lower(), "init/path": str(path)}
    return state, lineage


def apply_init(model: MultimodalNet, cfg: RunConfig, dataset: Any, device: torch.device | str = "cpu",
               cache_dir: str | Path | None = None) -> dict[str, str]:
    """Initialise ``model`` as ``model.init`` says (the one call ``fit`` makes after ``build_model``).

    scratch: nothing. unimodal: load the pre-trained encoders and heads. unimodal_frozen: the same, then
    freeze the encoders. An MLflow run id: that run's encoders, and its heads where they fit
    (``engine.init_run``; cached per run id in ``cache_dir``). Returns the lineage tags ({} for scratch).
    """
    if cfg.model.init == "scratch":
        return {}
    from mcrlab.engine.init_run import is_run_id, load_run_init

    if is_run_id(cfg.model.init):
        return load_run_init(model, cfg.model.init, cache_dir=cache_dir)
    state, lineage = load_or_pretrain(model, cfg, dataset, device, cache_dir)
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # _read checked the names and shapes
    if cfg.model.init == "unimodal_frozen":
        for m in range(model.num_modalities):
            model.freeze_encoder(m)
    return lineage

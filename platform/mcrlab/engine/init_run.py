"""``model.init=<MLflow run id>``: start from the encoders (and heads) of a finished run's checkpoint.

Any finished run that logged a model works: a sweep trial or an ablation cell (``best_checkpoint/state.pt``,
the trial's best checkpoint written by ``fit``), or ``mcrlab train --track`` (``model/state.pt``). The
weights taken are the run's selected model: the best validation epoch's (``best_state``) when the
checkpoint holds one, else its last. Every encoder ``encoders.m.*`` is loaded and must fit the current
config exactly (same parameter names and shapes: same encoder, same widths); each head ``heads.m.*`` is
loaded when its shapes match (another number of classes leaves that head as built). The fusion head and
the method's own modules are never taken.

The run is checked on the driver before anything starts (``trials.init_source.check_run_init``; the
engine layer does not talk to MLflow): an unknown run id, a run that is not FINISHED, a run without a model
artifact, or an encoder that does not fit is one ConfigError naming ``model.init`` and the reason. The
encoder and head tensors are then cached as one file per run id (``$MCRLAB_CACHE_DIR/pretrain/run-<id>.pt``,
written atomically), which ``fit`` reads. On a multi-node cluster that folder must be shared storage: a
worker that finds no cache file fails at once with a ConfigError that says so.

Lineage: the run's ``model.init`` param holds the source run id, and ``init_lineage`` tags every trial,
cell and tracked train run with ``init=run`` and ``init_run_id``.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

from mcrlab.config import RUN_ID_RE, ConfigError
from mcrlab.engine.cache import default_cache_dir

__all__ = ["ARTIFACTS", "is_run_id", "cache_path", "parse_checkpoint", "write_cache", "read_cache", "check_fits",
           "load_run_init", "selected_weights"]

# where a finished run keeps its model, in the order looked for
ARTIFACTS = ("best_checkpoint/state.pt", "model/state.pt")
FORMAT = 1


def is_run_id(value: str) -> bool:
    """Whether a ``model.init`` value names an MLflow run (32 hex digits) rather than a mode."""
    return bool(RUN_ID_RE.match(value))


def cache_path(run_id: str, cache_dir: str | Path | None = None) -> Path:
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"run-{run_id}.pt"


def selected_weights(blob: Any) -> dict[str, torch.Tensor] | None:
    """The model state a checkpoint file selects: ``best_state.model`` if present, else ``model``."""
    if not isinstance(blob, dict):
        return None
    best = blob.get("best_state")
    state = best.get("model") if isinstance(best, dict) else None
    state = state if isinstance(state, dict) else blob.get("model")
    return state if isinstance(state, dict) else None


def _read_cache(path: Path, run_id: str) -> dict[str, Any] | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, half-written, not a torch file: fetch again
        return None
    if isinstance(blob, dict) and blob.get("format") == FORMAT and blob.get("run_id") == run_id \
            and isinstance(blob.get("state"), dict):
        return blob
    return None


def _source_encoders(params: dict[str, str]) -> str:
    """What the source run was trained with, for messages: its model.encoders or model.encoder param."""
    enc = params.get("model.encoders")
    return f"model.encoders={enc}" if enc not in (None, "[]") else f"model.encoder={params.get('model.encoder', '?')}"


def parse_checkpoint(run_id: str, artifact: str, local: str | Path, params: dict[str, str]) -> dict[str, Any]:
    """The cache record of a downloaded checkpoint file: ``{"format", "run_id", "state" (encoder and head
    tensors, CPU), "artifact", "source" (what the run was trained with)}``; ConfigError naming
    ``model.init`` when it does not load or holds no model."""
    try:
        blob = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"model.init: MLflow run '{run_id}': its {artifact} does not load "
                          f"({type(err).__name__})") from None
    weights = selected_weights(blob)
    if weights is None:
        raise ConfigError(f"model.init: MLflow run '{run_id}': its {artifact} is not a mcrlab checkpoint "
                          "(no model state)")
    state = {k: v.detach().cpu().clone() for k, v in weights.items() if k.startswith(("encoders.", "heads."))}
    if not any(k.startswith("encoders.") for k in state):
        raise ConfigError(f"model.init: MLflow run '{run_id}': its {artifact} holds no encoders")
    return {"format": FORMAT, "run_id": run_id, "state": state, "artifact": artifact,
            "source": _source_encoders(params)}


def write_cache(record: dict[str, Any], cache_dir: str | Path | None = None) -> Path:
    """Write a record of ``parse_checkpoint`` to its cache file, atomically; returns the path."""
    path = cache_path(record["run_id"], cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_file = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        torch.save(record, tmp_file)
        os.replace(tmp_file, path)  # atomic: other trials see the old file or the whole new one
    finally:
        tmp_file.unlink(missing_ok=True)
    return path


def read_cache(run_id: str, cache_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The cached record of run ``run_id``, or None (missing, torn, another format)."""
    return _read_cache(cache_path(run_id, cache_dir), run_id)


def _modalities(keys: Any, prefix: str) -> set[int]:
    return {int(k.split(".")[1]) for k in keys if k.startswith(prefix)}


def check_fits(model: Any, fetched: dict[str, Any]) -> list[int]:
    """Check that every encoder of ``fetched`` fits ``model`` exactly; return the modalities whose head
    fits too. ConfigError naming ``model.init`` and the first mismatch."""
    run_id, state, source = fetched["run_id"], fetched["state"], fetched.get("source", "?")
    M = model.num_modalities
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    have = _modalities(theirs, "encoders.")
    if have != set(range(M)):
        raise ConfigError(f"model.init: MLflow run '{run_id}' has {len(have)} encoder(s), this config's data has "
                          f"{M} modalities")
    where = f"model.init: MLflow run '{run_id}' (trained with {source})"
    for m in range(M):
        pre = f"encoders.{m}."
        a = {k: s for k, s in theirs.items() if k.startswith(pre)}
        b = {k: s for k, s in mine.items() if k.startswith(pre)}
        key = f"model.encoders[{m}]"
        if set(a) != set(b):
            only = sorted(set(b) - set(a)) or sorted(set(a) - set(b))
            side = "this model's" if set(b) - set(a) else "the run's"
            raise ConfigError(f"{where}: its encoder {m} does not fit {key}: {side} encoder has "
                              f"'{only[0][len(pre):]}' and the other has not (another encoder or depth)")
        for k in sorted(a):
            if a[k] != b[k]:
                raise ConfigError(f"{where}: its encoder {m} does not fit {key}: '{k[len(pre):]}' has shape "
                                  f"{a[k]} in the run, {b[k]} here (other widths or input shape)")
    heads = []
    for m in range(M):
        pre = f"heads.{m}."
        a = {k: s for k, s in theirs.items() if k.startswith(pre)}
        if a and a == {k: s for k, s in mine.items() if k.startswith(pre)}:
            heads.append(m)
    return heads


def load_run_init(model: Any, run_id: str, *, cache_dir: str | Path | None = None) -> dict[str, str]:
    """Load run ``run_id``'s encoders (and the heads that fit) into ``model`` from the cache the driver
    filled (``trials.init_source.fetch_run_state``); return lineage tags."""
    fetched = read_cache(run_id, cache_dir)
    if fetched is None:
        raise ConfigError(f"model.init: the weights of MLflow run '{run_id}' are not in {cache_path(run_id, cache_dir)}; "
                          "mcrlab train/sweep/ablate fetch them before training starts (on a cluster, set "
                          "MCRLAB_CACHE_DIR to storage the workers share)")
    heads = check_fits(model, fetched)
    state = {k: v for k, v in fetched["state"].items()
             if k.startswith("encoders.") or int(k.split(".")[1]) in heads}
    device = next(model.parameters()).device
    result = model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys  # check_fits compared names and shapes
    return {"init": "run", "init/run_id": run_id, "init/artifact": fetched["artifact"],
            "init/heads": ",".join(map(str, heads))}

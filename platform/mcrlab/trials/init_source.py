"""Fetching the source run of ``model.init=<MLflow run id>`` on the driver (MLflow access lives here and in
``mcrlab.tracking``; ``engine.init_run`` holds the checks and the loading, and reads only the cache).

``check_run_init`` is what ``mcrlab train``, ``mcrlab sweep`` and ``mcrlab ablate`` call before anything
starts: the run must exist, be FINISHED and hold a model artifact whose encoders fit the config; its encoder
and head tensors are then cached per run id for ``fit``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from mcrlab.config import ConfigError, RunConfig
from mcrlab.engine.init_run import ARTIFACTS, check_fits, is_run_id, parse_checkpoint, read_cache, write_cache

__all__ = ["fetch_run_state", "check_run_init"]


def fetch_run_state(run_id: str, uri: str, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """The cache record of MLflow run ``run_id`` at ``uri`` (``engine.init_run.parse_checkpoint``): from the
    cache, else downloaded, checked and cached (atomically).

    ConfigError (naming ``model.init``) for a store that does not exist (none is created), an unknown run, a
    run that is not FINISHED, no model artifact, or an artifact that is not a mcrlab checkpoint.
    """
    cached = read_cache(run_id, cache_dir)
    if cached is not None:
        return cached
    from mcrlab.tracking import download_run_file

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise ConfigError(f"model.init: no MLflow run '{run_id}': there is no MLflow store at {uri}")
    with tempfile.TemporaryDirectory(prefix="mcrlab-init-") as tmp:
        run, artifact, local = download_run_file(uri, run_id, ARTIFACTS, tmp)
        if run is None:
            raise ConfigError(f"model.init: no MLflow run '{run_id}' in {uri}")
        if run["status"] != "FINISHED":
            raise ConfigError(f"model.init: MLflow run '{run_id}' is {run['status']}, not FINISHED "
                              "(initialise from a finished run)")
        if local is None or artifact is None:
            raise ConfigError(f"model.init: MLflow run '{run_id}' has no model checkpoint artifact "
                              f"(looked for {' and '.join(ARTIFACTS)})")
        record = parse_checkpoint(run_id, artifact, local, run["params"])
    write_cache(record, cache_dir)
    return record


def check_run_init(cfg: RunConfig, layout: tuple[list[tuple[int, ...]], int], uri: str,
                   cache_dir: str | Path | None = None) -> None:
    """Driver-side check of ``model.init=<run id>`` before anything starts: fetch (and cache) the run's
    weights and check them against ``cfg``'s model built for ``layout`` (shapes, classes). Does nothing
    for the other init modes."""
    if not is_run_id(cfg.model.init):
        return
    from mcrlab.models import build_model

    fetched = fetch_run_state(cfg.model.init, uri, cache_dir)
    shapes, num_classes = layout
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        model = build_model(shapes, num_classes, cfg.model)
    check_fits(model, fetched)

"""Where the engine caches what trials share (unimodal pre-trainings, ``model.init=<run id>`` weights)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "default_cache_dir"]

CACHE_ENV = "MCRLAB_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$MCRLAB_CACHE_DIR/pretrain``, else ``~/.cache/mcrlab/pretrain`` (shared storage on a cluster)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mcrlab"
    return Path(root) / "pretrain"

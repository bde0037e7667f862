"""mcrlab: distributed hyperparameter search and ablation studies for MCR-trained multimodal models.

The public API is re-exported here and imported lazily, so ``import mcrlab`` (and ``mcrlab --help``)
does not pay for torch, Ray or MLflow until a name is used::

    from mcrlab import RunConfig, load_config, fit, REGISTRY, run_sweep, run_ablation
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (the single place to update when a module moves)
_PUBLIC: dict[str, str] = {
    "RunConfig": "mcrlab.config",
    "load_config": "mcrlab.config",
    "ConfigError": "mcrlab.config",
    "fit": "mcrlab.engine.fit",
    "REGISTRY": "mcrlab.methods",
    "run_sweep": "mcrlab.tune.runner",
    "run_ablation": "mcrlab.ablate.runner",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mcrlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # cache: the next lookup skips __getattr__
    return value


def __dir__() -> list[str]:
    return __all__

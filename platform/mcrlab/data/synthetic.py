"""Synthetic multimodal data with a known information structure (binary labels, M >= 2 modalities).

Each sample draws an information type: ``unique<k>`` (only modality k carries the label), ``redundant``
(every modality carries it) or ``synergy`` (y is the XOR of one bit per modality: no modality alone says
anything, and an additive rule only gets part of it, see ceilings.py). Every modality m encodes one bit b_m in its signal
coordinates; b_m = y when m carries the label, otherwise it is an independent fair bit in the same
coordinates, so nothing leaks through the type. Per modality:

- ``signal``: ``linear`` (easy: a signed shift along one direction) or ``product`` (hard: the bit is the
  sign of the product of two coordinates, a within-modality interaction);
- ``bit_acc``: the Bayes accuracy of decoding b_m from x_m (sets the signal-to-noise ratio);
- ``dim``: input width; the signal coordinates are padded with unit-Gaussian nuisance dimensions and the
  whole vector is turned by a fixed random rotation (``rotate``), so the signal hides in every coordinate.

Seeding: ``np.random.SeedSequence(seed)`` spawns independent streams for the rotations and for each split,
so changing ``n_train`` leaves val and test unchanged. The analytic ceilings (``dataset.meta["ceilings"]``)
come from ``mcrlab.data.ceilings`` and depend only on the preset, not on the seed.

With ``num_modalities`` M different from a preset's own, the modality specs and the unique-type
probabilities cycle over the preset's lists; the unique probabilities are rescaled to keep their total.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from mcrlab.config import ConfigError
from mcrlab.data.base import MultimodalDataset, Split
from mcrlab.data.ceilings import SIGNALS, amplitude, compute_ceilings, llr, sample_coords, sample_structure

__all__ = ["ModalitySpec", "SyntheticPreset", "PRESETS", "SyntheticWorld", "make_world", "make_synthetic",
           "modality_names", "info_type_names"]


@dataclass(frozen=True)
class ModalitySpec:
    """One modality of the generator."""

    dim: int = 16  # input width (>= 1 for linear, >= 2 for product)
    bit_acc: float = 0.9  # Bayes accuracy of decoding this modality's bit from it, in (0.5, 0.9999]
    signal: str = "linear"  # linear (easy) | product (hard: sign of a product of two coordinates)

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ConfigError(f"signal: {self.signal!r} is not one of {', '.join(SIGNALS)}")
        if not 0.5 < self.bit_acc <= 0.9999:
            raise ConfigError(f"bit_acc: must be in (0.5, 0.9999], got {self.bit_acc}")
        if self.dim < (2 if self.signal == "product" else 1):
            raise ConfigError(f"dim: too small for a {self.signal} signal: {self.dim}")


@dataclass(frozen=True)
class SyntheticPreset:
    """The knobs of one named preset. ``suggested`` holds training settings (dotted config keys) under
    which the preset shows what its description says; they are advice, not applied automatically."""

    description: str
    modalities: tuple[ModalitySpec, ...]
    p_unique: tuple[float, ...]  # P(unique_k) per modality
    p_redundant: float
    p_synergy: float
    n_train: int = 1000
    n_val: int = 2000
    n_test: int = 2000
    rotate: bool = True
    suggested: tuple[tuple[str, object], ...] = field(default=())

    def __post_init__(self) -> None:
        if len(self.modalities) < 2 or len(self.p_unique) != len(self.modalities):
            raise ConfigError("modalities: need >= 2 modality specs and one p_unique per modality")
        probs = [*self.p_unique, self.p_redundant, self.p_synergy]
        if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-9:
            raise ConfigError(f"p_unique/p_redundant/p_synergy: must be >= 0 and sum to 1, got {probs}")
        if self.n_train < 2 or self.n_val < 1 or self.n_test < 1:
            raise ConfigError("n_train/n_val/n_test: need n_train >= 2, n_val >= 1, n_test >= 1")

    @property
    def num_modalities(self) -> int:
        return len(self.modalities)

    def resolve(self, num_modalities: int = 0, n_train: int = 0) -> SyntheticPreset:
        """This preset for M modalities (0 = own) and n_train samples (0 = own); see the module docstring."""
        M = num_modalities or self.num_modalities
        if M < 2:
            raise ConfigError(f"data.num_modalities: must be 0 (preset default) or >= 2, got {M}")
        specs = tuple(self.modalities[m % self.num_modalities] for m in range(M))
        pu = [self.p_unique[m % self.num_modalities] for m in range(M)]
        total, cyc = sum(self.p_unique), sum(pu)
        pu = [p * total / cyc for p in pu] if cyc > 0 else pu
        return dataclasses.replace(self, modalities=specs, p_unique=tuple(pu), n_train=n_train or self.n_train)

    def to_dict(self) -> dict:
        """Plain (JSON-able) form, for dataset metadata and docs."""
        d = dataclasses.asdict(self)
        d["modalities"] = [dataclasses.asdict(s) for s in self.modalities]
        d["p_unique"] = list(self.p_unique)
        d["suggested"] = dict(self.suggested)
        return d


def _lin(dim: int, acc: float) -> ModalitySpec:
    return ModalitySpec(dim=dim, bit_acc=acc, signal="linear")


PRESETS: dict[str, SyntheticPreset] = {
    "balanced": SyntheticPreset(
        description="two equally informative linear modalities; all four information types",
        modalities=(_lin(16, 0.9), _lin(16, 0.9)),
        p_unique=(0.2, 0.2), p_redundant=0.4, p_synergy=0.2, n_train=1000),
    "imbalanced": SyntheticPreset(
        description="a strong modality (high SNR, few dims) and a weak one (low SNR, many dims)",
        modalities=(_lin(8, 0.95), _lin(32, 0.75)),
        p_unique=(0.25, 0.25), p_redundant=0.4, p_synergy=0.1, n_train=1000),
    "redundant": SyntheticPreset(
        description="mostly redundant information: either modality nearly suffices",
        modalities=(_lin(16, 0.9), _lin(16, 0.85)),
        p_unique=(0.05, 0.05), p_redundant=0.9, p_synergy=0.0, n_train=1000),
    "synergy": SyntheticPreset(
        description="mostly XOR synergy: additive late fusion falls short, a non-additive (mlp) fusion "
                    "reaches the Bayes rule",
        modalities=(_lin(8, 0.95), _lin(8, 0.95)),
        p_unique=(0.05, 0.05), p_redundant=0.1, p_synergy=0.8, n_train=2000,
        suggested=(("model.fusion", "mlp"),)),
    "competition": SyntheticPreset(
        description="easy linear 128-d modality vs a hard product one, redundant label, few samples: "
                    "joint training falls behind the ensemble of unimodal models",
        modalities=(_lin(128, 0.88), ModalitySpec(dim=32, bit_acc=0.95, signal="product")),
        p_unique=(0.0, 0.0), p_redundant=1.0, p_synergy=0.0, n_train=400),
}


def modality_names(M: int) -> list[str]:
    return [f"m{m}" for m in range(M)]


def info_type_names(M: int) -> list[str]:
    return [*(f"unique{k}" for k in range(M)), "redundant", "synergy"]


def _rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    """A uniformly random d x d orthogonal matrix (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))[None, :]


@dataclass
class SyntheticWorld:
    """A resolved preset plus the seed-dependent rotations: it can sample splits and compute exact LLRs."""

    preset: SyntheticPreset
    rotations: list[np.ndarray | None]  # per modality (d, d), None when not rotated
    amplitudes: list[float]

    def _width(self, m: int) -> int:
        return 1 if self.preset.modalities[m].signal == "linear" else 2

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        """n samples: x[m] (n, dim_m) float32, y (n,) int64, info_type (n,) int64."""
        p = self.preset
        t, y, bits = sample_structure(rng, n, p.p_unique, p.p_redundant, p.p_synergy)
        xs = []
        for m, spec in enumerate(p.modalities):
            sig = sample_coords(rng, spec.signal, self.amplitudes[m], bits[:, m])
            nuisance = rng.standard_normal((n, spec.dim - sig.shape[1]))
            x = np.concatenate([sig, nuisance], axis=1)
            rot = self.rotations[m]
            xs.append((x @ rot.T if rot is not None else x).astype(np.float32))
        return Split(xs, y.astype(np.int64), t.astype(np.int64))

    def llr(self, m: int, x: np.ndarray) -> np.ndarray:
        """Exact log p(x_m | b_m=1) / p(x_m | b_m=0) for inputs x (N, dim_m) -> (N,) float64."""
        x = np.asarray(x, dtype=np.float64)
        rot = self.rotations[m]
        coords = x @ rot if rot is not None else x  # undo x = R c
        return llr(self.preset.modalities[m].signal, self.amplitudes[m], coords[:, : self._width(m)])


def make_world(name: str, seed: int, num_modalities: int = 0, n_train: int = 0) -> SyntheticWorld:
    """Resolve preset ``name`` and draw its rotations from ``seed``."""
    if name not in PRESETS:
        raise ConfigError(f"data.name: unknown synthetic preset '{name}' (known: {', '.join(PRESETS)})")
    preset = PRESETS[name].resolve(num_modalities, n_train)
    world_rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    rots = [_rotation(world_rng, s.dim) if preset.rotate else None for s in preset.modalities]
    amps = [amplitude(s.signal, s.bit_acc) for s in preset.modalities]
    return SyntheticWorld(preset, rots, amps)


def make_synthetic(preset: str, seed: int, n_train: int = 0, num_modalities: int = 0) -> MultimodalDataset:
    """Generate ``synthetic:<preset>``; n_train / num_modalities 0 mean the preset's defaults.

    Splits train (n_train), val and test; labels in {0, 1}; ``info_type`` indexes ``info_types``.
    ``meta``: preset name and description, the resolved knobs, and the ceilings (see ceilings.py).
    """
    world = make_world(preset, seed, num_modalities, n_train)
    p = world.preset
    streams = np.random.SeedSequence(seed).spawn(4)[1:]  # [0] drew the rotations
    splits = {name: world.sample(np.random.default_rng(ss), n)
              for name, ss, n in zip(("train", "val", "test"), streams, (p.n_train, p.n_val, p.n_test))}
    M = p.num_modalities
    names, types = modality_names(M), info_type_names(M)
    c = compute_ceilings(tuple(s.signal for s in p.modalities), tuple(s.bit_acc for s in p.modalities),
                         p.p_unique, p.p_redundant, p.p_synergy)
    meta = {
        "preset": preset,
        "description": p.description,
        "params": p.to_dict(),
        "ceilings": {"best_unimodal": c["best_unimodal"], "late_fusion": c["late_fusion"],
                     "full_fusion": c["full_fusion"]},
        "unimodal_ceilings": dict(zip(names, c["unimodal"])),
        # per information type; types the preset never draws are left out
        "type_ceilings": {k: {t: a for t, a in zip(types, v) if a == a} for k, v in c["by_type"].items()},
    }
    return MultimodalDataset(name=f"synthetic:{preset}", modalities=names, num_classes=2, splits=splits,
                             info_types=types, meta=meta)

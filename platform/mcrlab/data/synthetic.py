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

Interaction channels (``xor_acc`` > 0 on >= 2 modalities): each such modality carries one more linear
coordinate with a bit c_m, and the parity of all c_m is y on every sample, so the modalities depend on
each other given y and summing unimodal logits (the ensemble) is not the Bayes rule (preset
``interaction``; ceilings in ceilings.py). Presets without channels draw exactly what they always drew.

User-defined presets: ``synthetic:path/to/preset.yaml`` reads a ``SyntheticPreset`` from YAML
(``parse_preset`` lists the keys); errors are one line naming the file and the key.

With ``num_modalities`` M different from a preset's own, the modality specs and the unique-type
probabilities cycle over the preset's lists; the unique probabilities are rescaled to keep their total.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from mcrlab.config import ConfigError
from mcrlab.data.base import MultimodalDataset, Split
from mcrlab.data.ceilings import (
    SIGNALS,
    amplitude,
    compute_ceilings,
    llr,
    sample_coords,
    sample_structure,
    sample_xor_bits,
)

__all__ = ["ModalitySpec", "SyntheticPreset", "PRESETS", "SyntheticWorld", "make_world", "make_synthetic",
           "modality_names", "info_type_names", "get_preset", "is_preset_file", "load_preset_file",
           "parse_preset", "preset_to_yaml"]


@dataclass(frozen=True)
class ModalitySpec:
    """One modality of the generator."""

    dim: int = 16  # input width (>= 1 for linear, >= 2 for product)
    bit_acc: float = 0.9  # Bayes accuracy of decoding this modality's bit from it, in (0.5, 0.9999]
    signal: str = "linear"  # linear (easy) | product (hard: sign of a product of two coordinates)
    # Bayes accuracy of this modality's interaction channel (one more linear coordinate carrying a bit c_m;
    # the parity of all modalities' c_m is y on every sample); 0 = no channel. See ceilings.py.
    xor_acc: float = 0.0

    def __post_init__(self) -> None:
        if self.signal not in SIGNALS:
            raise ConfigError(f"signal: {self.signal!r} is not one of {', '.join(SIGNALS)}")
        if not 0.5 < self.bit_acc <= 0.9999:
            raise ConfigError(f"bit_acc: must be in (0.5, 0.9999], got {self.bit_acc}")
        if self.xor_acc != 0.0 and not 0.5 < self.xor_acc <= 0.9999:
            raise ConfigError(f"xor_acc: must be 0 (no interaction channel) or in (0.5, 0.9999], got {self.xor_acc}")
        if self.dim < self.width:
            raise ConfigError(f"dim: too small for a {self.signal} signal"
                              f"{' plus an interaction channel' if self.xor_acc else ''}: {self.dim}")

    @property
    def width(self) -> int:
        """Signal coordinates before the nuisance dims: 1 (linear) or 2 (product), + 1 for a channel."""
        return (1 if self.signal == "linear" else 2) + (1 if self.xor_acc else 0)


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
        if sum(1 for s in self.modalities if s.xor_acc) == 1:
            raise ConfigError("xor_acc: an interaction channel needs >= 2 modalities with one (the label is "
                              "the parity of their channel bits)")

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

    @property
    def xor_accs(self) -> tuple[float, ...]:
        """Per-modality interaction-channel accuracies, () when no modality has one."""
        accs = tuple(s.xor_acc for s in self.modalities)
        return accs if any(accs) else ()


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
    "interaction": SyntheticPreset(
        description="modalities dependent given the label: a redundant bit (strong m0, weak m1) plus an "
                    "interaction channel whose parity across modalities is the label; the unimodal ensemble "
                    "and late fusion fall short, a non-additive (mlp) fusion reaches the Bayes rule",
        modalities=(ModalitySpec(dim=8, bit_acc=0.85, xor_acc=0.97),
                    ModalitySpec(dim=8, bit_acc=0.75, xor_acc=0.97)),
        p_unique=(0.0, 0.0), p_redundant=1.0, p_synergy=0.0, n_train=2000,
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

    def _channels(self) -> list[int]:
        return [m for m, s in enumerate(self.preset.modalities) if s.xor_acc]

    def sample(self, rng: np.random.Generator, n: int) -> Split:
        """n samples: x[m] (n, dim_m) float32, y (n,) int64, info_type (n,) int64."""
        p = self.preset
        t, y, bits = sample_structure(rng, n, p.p_unique, p.p_redundant, p.p_synergy)
        chan = self._channels()
        # presets without channels draw exactly what they drew before channels existed (same data)
        cbits = dict(zip(chan, sample_xor_bits(rng, y, len(chan)).T, strict=True)) if chan else {}
        xs = []
        for m, spec in enumerate(p.modalities):
            sig = sample_coords(rng, spec.signal, self.amplitudes[m], bits[:, m])
            if m in cbits:
                sig = np.concatenate([sig, sample_coords(rng, "linear", self.xor_amplitude(m), cbits[m])], axis=1)
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

    def xor_amplitude(self, m: int) -> float:
        return amplitude("linear", self.preset.modalities[m].xor_acc)

    def xor_llr(self, m: int, x: np.ndarray) -> np.ndarray:
        """Exact log p(x_m | c_m=1) / p(x_m | c_m=0) of modality m's interaction channel -> (N,) float64."""
        if not self.preset.modalities[m].xor_acc:
            raise ValueError(f"modality {m} has no interaction channel")
        x = np.asarray(x, dtype=np.float64)
        rot = self.rotations[m]
        coords = x @ rot if rot is not None else x
        w = self._width(m)
        return llr("linear", self.xor_amplitude(m), coords[:, w:w + 1])


def is_preset_file(name: str) -> bool:
    """``synthetic:<name>`` names a YAML preset file rather than a built-in preset."""
    return name.endswith((".yaml", ".yml"))


def get_preset(name: str) -> SyntheticPreset:
    """A built-in preset by name, or the preset in YAML file ``name`` (``*.yaml`` / ``*.yml``)."""
    if is_preset_file(name):
        return load_preset_file(name)
    if name not in PRESETS:
        raise ConfigError(f"data.name: unknown synthetic preset '{name}' (known: {', '.join(PRESETS)}; "
                          f"or a preset file synthetic:path/to/preset.yaml)")
    return PRESETS[name]


def make_world(name: str, seed: int, num_modalities: int = 0, n_train: int = 0) -> SyntheticWorld:
    """Resolve preset ``name`` (built-in or YAML file) and draw its rotations from ``seed``."""
    preset = get_preset(name).resolve(num_modalities, n_train)
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
                         p.p_unique, p.p_redundant, p.p_synergy, xor_accs=p.xor_accs)
    meta = {
        "preset": preset,
        **({"preset_sha256": hashlib.sha256(Path(preset).read_bytes()).hexdigest()}
           if is_preset_file(preset) else {}),
        "description": p.description,
        "params": p.to_dict(),
        "ceilings": {"best_unimodal": c["best_unimodal"], "ensemble": c["ensemble"],
                     "late_fusion": c["late_fusion"], "full_fusion": c["full_fusion"]},
        "unimodal_ceilings": dict(zip(names, c["unimodal"])),
        # per information type; types the preset never draws are left out
        "type_ceilings": {k: {t: a for t, a in zip(types, v) if a == a} for k, v in c["by_type"].items()},
    }
    return MultimodalDataset(name=f"synthetic:{preset}", modalities=names, num_classes=2, splits=splits,
                             info_types=types, meta=meta)


# --------------------------------------------------------------------------------------------------
# user-defined presets from YAML: data.name=synthetic:path/to/preset.yaml

_SPEC_KEYS = {"dim": int, "bit_acc": float, "signal": str, "xor_acc": float}
_PRESET_KEYS = ("description", "modalities", "p_unique", "p_redundant", "p_synergy", "n_train", "n_val",
                "n_test", "rotate", "suggested")


_T = TypeVar("_T")


def _typed(where: str, key: str, value: object, kind: type[_T]) -> _T:
    """``value`` as ``kind`` (an int is a fine float; bools are neither), else a one-line ConfigError."""
    ok = (isinstance(value, kind) and not isinstance(value, bool)) or (
        kind is float and isinstance(value, int) and not isinstance(value, bool)) or (
        kind is bool and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{where}: key '{key}': expected {kind.__name__}, got {value!r}")
    if kind is float and isinstance(value, (int, float)):  # always so once ok holds for a float
        return cast(_T, float(value))
    return cast(_T, value)  # ok: value is a kind


def _rekey(where: str, prefix: str, err: ConfigError) -> ConfigError:
    """A dataclass' ``field: message`` error -> ``where: key 'prefix.field': message``."""
    field_name, _, msg = str(err).partition(": ")
    return ConfigError(f"{where}: key '{prefix}{field_name}': {msg}")


def parse_preset(raw: object, where: str) -> SyntheticPreset:
    """A preset from a parsed YAML mapping. Keys: ``modalities`` (required: a list of {dim, bit_acc,
    signal, xor_acc}), ``p_unique`` (default zeros), ``p_synergy`` (default 0), ``p_redundant`` (default:
    the rest of the probability), ``n_train``/``n_val``/``n_test``, ``rotate``, ``description``,
    ``suggested`` (dotted config keys -> values). Every error names ``where`` and the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of preset keys at the top level, got "
                          f"{type(raw).__name__}")
    for key in raw:
        if key not in _PRESET_KEYS:
            raise ConfigError(f"{where}: key '{key}': unknown (allowed: {', '.join(_PRESET_KEYS)})")
    mods = raw.get("modalities")
    if not isinstance(mods, list) or len(mods) < 2:
        raise ConfigError(f"{where}: key 'modalities': expected a list of >= 2 modality mappings, got {mods!r}")
    specs = []
    for i, m in enumerate(mods):
        if not isinstance(m, dict):
            raise ConfigError(f"{where}: key 'modalities[{i}]': expected a mapping, got {m!r}")
        kw: dict[str, Any] = {}
        for key, value in m.items():
            if key not in _SPEC_KEYS:
                raise ConfigError(f"{where}: key 'modalities[{i}].{key}': unknown (allowed: "
                                  f"{', '.join(_SPEC_KEYS)})")
            kw[key] = _typed(where, f"modalities[{i}].{key}", value, _SPEC_KEYS[key])
        try:
            specs.append(ModalitySpec(**kw))
        except ConfigError as err:
            raise _rekey(where, f"modalities[{i}].", err) from None
    M = len(specs)
    pu = raw.get("p_unique", [0.0] * M)
    if not isinstance(pu, list) or len(pu) != M:
        raise ConfigError(f"{where}: key 'p_unique': expected a list of {M} probabilities (one per modality), "
                          f"got {pu!r}")
    pu = [_typed(where, f"p_unique[{i}]", v, float) for i, v in enumerate(pu)]
    p_syn = _typed(where, "p_synergy", raw.get("p_synergy", 0.0), float)
    p_red = _typed(where, "p_redundant", raw.get("p_redundant", round(1.0 - sum(pu) - p_syn, 12)), float)
    kw = {"description": raw.get("description", f"user preset {where}"), "modalities": tuple(specs),
          "p_unique": tuple(pu), "p_redundant": p_red, "p_synergy": p_syn}
    _typed(where, "description", kw["description"], str)
    for key, kind in (("n_train", int), ("n_val", int), ("n_test", int), ("rotate", bool)):
        if key in raw:
            kw[key] = _typed(where, key, raw[key], kind)
    if "suggested" in raw:
        sug = raw["suggested"]
        if not isinstance(sug, dict) or not all(isinstance(k, str) and "." in k for k in sug):
            raise ConfigError(f"{where}: key 'suggested': expected a mapping of dotted config keys "
                              f"(e.g. model.fusion: mlp), got {sug!r}")
        kw["suggested"] = tuple(sug.items())
    try:
        return SyntheticPreset(**kw)
    except ConfigError as err:
        raise _rekey(where, "", err) from None


def load_preset_file(path: str | Path) -> SyntheticPreset:
    """Read and validate a YAML preset file (see ``parse_preset``)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data.name: synthetic preset file '{path}' not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{at}") from None
    return parse_preset(raw, str(p))


def preset_to_yaml(preset: SyntheticPreset) -> str:
    """The YAML text of a preset (the inverse of ``parse_preset``): a starting point for your own."""
    import yaml

    d = preset.to_dict()
    return yaml.safe_dump(d, sort_keys=False)

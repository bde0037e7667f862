"""The helpers behind three fault fixes, without Ray: the finished-trial record, the full-disk watch and the
local-Ray watchdog. The end-to-end tests against real Ray, Optuna and MLflow are in tests/reliability/."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from mcrlab.trials import diskfull, finished, reaper


# ---- trials.finished ---------------------------------------------------------------------------------
def test_finished_record_round_trip_keeps_only_the_trials_own_scalars(tmp_path):
    path = tmp_path / "finished-x.json"
    assert finished.finished_result(path, "a") is None and finished.finished_ids(path) == set()
    result = {"objective": 0.75, "val/acc": 0.75, "trial_iteration": 4, "epoch": 4, "early_stopped": False,
              "training_iteration": 9, "time_total_s": 3.0, "pid": 123, "config": {"train.lr": 0.1},
              "trial_id": "a", "nan": float("nan"), "date": "today", "note": "kept"}
    finished.record_finished(path, "a", result)
    finished.record_finished(path, "b", {"objective": 0.5})
    assert finished.finished_ids(path) == {"a", "b"}
    # Tune fills in its own keys again; NaN is not JSON and is not reported again
    assert finished.finished_result(path, "a") == {"objective": 0.75, "val/acc": 0.75, "trial_iteration": 4,
                                                   "epoch": 4, "early_stopped": False, "note": "kept"}
    assert finished.finished_result(path, "c") is None
    assert finished.finished_result("", "a") is None  # no record configured (ablations)
    assert not list(tmp_path.glob(".*.tmp"))  # replaced atomically, no temporary left


def test_an_unreadable_record_is_empty_so_the_trial_simply_runs(tmp_path):
    path = tmp_path / "finished-x.json"
    path.write_text("{not json")
    assert finished.finished_result(path, "a") is None
    path.write_text(json.dumps(["a"]))
    assert finished.finished_ids(path) == set()
    finished.record_finished(path, "a", {"objective": 1.0})  # a broken record is replaced, not kept
    assert finished.finished_result(path, "a") == {"objective": 1.0}


def test_finished_record_keeps_the_point_and_the_experiment_apart_from_the_replayed_result(tmp_path):
    path = tmp_path / "finished-x.json"
    finished.record_finished(path, "a", {"objective": 0.75}, config={"train.lr": 0.01}, experiment="ds")
    finished.record_finished(path, "b", {"objective": 0.5}, config={"x": float("nan")})  # not JSON: left out
    finished.record_finished(path, "c", {"objective": 0.25})  # as an older version wrote it
    trials = finished.finished_trials(path)
    assert trials["a"] == finished.FinishedTrial({"objective": 0.75}, {"train.lr": 0.01}, "ds")
    assert trials["b"] == finished.FinishedTrial({"objective": 0.5}, None, None)
    assert trials["c"] == finished.FinishedTrial({"objective": 0.25}, None, None)
    assert finished.finished_result(path, "a") == {"objective": 0.75}  # what the trial reports again
    assert finished.finished_trials("") == {} and finished.finished_ids(path) == {"a", "b", "c"}


# ---- trials.diskfull ---------------------------------------------------------------------------------
@pytest.mark.parametrize("err,full", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    ("(sqlite3.OperationalError) database or disk is full", True),
    ("OSError: [Errno 28] Error writing bytes to file.", True),
    (OSError(errno.EACCES, "Permission denied"), False),
    ("ConnectionError: MLflow is down", False),
    (None, False),
    (RuntimeError("An exception is raised during the commit."), False),
])
def test_is_disk_full(err, full):
    assert diskfull.is_disk_full(err) is full


def test_is_disk_full_follows_the_exception_chain():
    """Optuna's StorageInternalError says nothing of the disk; the SQLite error it wraps does."""
    try:
        try:
            raise RuntimeError("(sqlite3.OperationalError) database or disk is full")
        except RuntimeError as inner:
            raise ValueError("An exception is raised during the commit.") from inner
    except ValueError as outer:
        assert diskfull.is_disk_full(outer)
    try:
        try:
            raise KeyError("x")
        except KeyError:
            raise ValueError("An exception is raised during the commit.") from None
    except ValueError as outer:
        assert not diskfull.is_disk_full(outer)


def test_reserve_is_really_allocated_and_freed_by_the_first_trigger(tmp_path):
    diskfull.arm()
    try:
        path = diskfull.reserve(tmp_path, size=1 << 20)
        assert path is not None and path.stat().st_size == 1 << 20
        assert path.stat().st_blocks * 512 >= 1 << 20  # not a sparse file: the space is taken
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        diskfull.trigger("trial t1", "OSError: [Errno 28] No space left on device\n")
        assert not path.exists()
        assert diskfull.triggered() == "trial t1: OSError: [Errno 28] No space left on device"
        diskfull.trigger("tracking store x", "database or disk is full")  # the first one is kept
        assert diskfull.triggered().startswith("trial t1")
    finally:
        diskfull.disarm()
    diskfull.arm()
    assert diskfull.triggered() is None  # each sweep starts afresh
    diskfull.disarm()


def test_an_unarmed_trigger_only_records(tmp_path):
    diskfull.arm()
    path = diskfull.reserve(tmp_path, size=4096)
    diskfull.disarm()  # the sweep is over: its reserve is gone
    assert path is not None and not path.exists()
    path = diskfull.reserve(tmp_path, size=4096)
    diskfull.trigger("x", "No space left on device")
    assert path.exists()  # not a sweep's watch (an ablation, say): nothing freed, nothing stopped
    diskfull.release_reserves()


def _tune_run_event():
    """The interrupt event Tune creates when a run starts, created as ``fit`` would in a worker thread."""
    from ray.tune import tune as tune_module

    got = []
    thread = threading.Thread(target=lambda: got.append(tune_module._setup_signal_catching()))
    thread.start()
    thread.join()
    return got[0]


def test_trigger_stops_every_tune_run_from_any_thread():
    """A full disk seen in one study's thread stops the Tune runs of every study (and those starting later)
    the way Ctrl+C does: by the event Tune's loop checks; no signal is sent (SIGUSR1 would end the process
    where Tune's handler is missing: a fit in a worker thread)."""
    handler = signal.getsignal(signal.SIGUSR1)
    diskfull.arm()
    try:
        first, second = _tune_run_event(), _tune_run_event()
        assert not first.is_set() and not second.is_set()
        thread = threading.Thread(target=diskfull.trigger, args=("trial t", "No space left on device"))
        thread.start()
        thread.join()
        assert first.is_set() and second.is_set()
        assert _tune_run_event().is_set()  # a run starting after the stop stops at once
        assert signal.getsignal(signal.SIGUSR1) is handler
        diskfull.arm()  # the next sweep starts afresh
        assert not _tune_run_event().is_set()
    finally:
        diskfull.disarm()
    diskfull.trigger("x", "No space left on device")  # unarmed: records only, stops nothing
    assert not _tune_run_event().is_set()
    diskfull.arm()  # leave no recorded full disk behind for later tests
    diskfull.disarm()


# ---- trials.reaper -----------------------------------------------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watchdog reads /proc (Linux only)")
def test_reaper_kills_the_drivers_descendants_and_marked_processes_once_the_driver_is_gone(tmp_path):
    token = f"test-{os.getpid()}-{time.monotonic_ns()}"
    # a stand-in driver with a child and a grandchild (as the raylet and its workers; unmarked, and in a
    # session of their own), one marked process it did not start, and an unmarked bystander that must survive
    spawn = ("import subprocess, sys, time\n"
             "code = 'import subprocess, sys, time; subprocess.Popen([sys.executable, \"-c\", \"import time; "
             "time.sleep(600)\"]); time.sleep(600)'\n"
             "subprocess.Popen([sys.executable, '-c', code], start_new_session=True)\n"
             "time.sleep(600)\n")
    driver = subprocess.Popen([sys.executable, "-c", spawn])
    marked = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"],
                              env={**os.environ, reaper.OWNER_VAR: token}, start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    started: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (len(started) < 2 or not reaper.owned_pids(token)):
            started = reaper.descendants(driver.pid)
            time.sleep(0.05)
        assert len(started) == 2 and reaper.owned_pids(token) == [marked.pid]
        watchdog = subprocess.Popen([sys.executable, "-I", reaper.__file__, str(driver.pid), token],
                                    start_new_session=True)
        time.sleep(2.5)  # it has noted the driver's descendants
        assert all(reaper._alive_as_noted(p, t) for p, t in started.items()) and marked.poll() is None
        driver.kill()
        driver.wait()
        assert marked.wait(timeout=30) == -signal.SIGKILL
        assert watchdog.wait(timeout=60) == 0
        assert not [p for p, t in started.items() if reaper._alive_as_noted(p, t)]
        assert bystander.poll() is None
    finally:
        for p in (driver, marked, bystander):
            if p.poll() is None:
                p.kill()
                p.wait()
        for pid, start in started.items():
            if reaper._alive_as_noted(pid, start):
                os.kill(pid, signal.SIGKILL)

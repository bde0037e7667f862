"""A full disk during a sweep: stop at the first sign, keep what is done, end with one line.

Without this a full ``--storage`` (or tracking store) ended badly: trials failed their retries one after the
other on ENOSPC, the recorder waited two minutes for a store that could not take writes, Tune's experiment
state was half-written (so ``--resume`` refused it as unsigned), and the driver ended in a traceback.

What happens now:

- Before the study, the driver sets aside a **reserve** file (``RESERVE_BYTES``, allocated for real with
  ``posix_fallocate``) in the sweep folder.
- The first ENOSPC anyone reports - a trial's error (``is_disk_full`` on its error text), a tracking write
  ("database or disk is full"), the state signer, or an error out of Tune itself (the Optuna study's SQLite
  file, for one) - calls ``trigger``: the reserve is deleted, which gives
  Tune, the signer, the recorder and the finished-trial record room for their last writes, and every Tune run
  of the driver is asked to stop the way Ctrl+C stops it (``trials.interrupt``, from whichever thread saw the
  error: the loop ends, the experiment state is saved one last time with the running trials still
  unfinished, so a resume continues them from their checkpoints). Concurrent dataset studies all stop.
- The runner then raises ``StorageFull``: the CLI prints one line (what is full, how to resume) and exits 1.

State is per process (the driver's). Only a driver that ``arm``s it (the sweep runner) is stopped; elsewhere
``trigger`` only records the error.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from pathlib import Path

from mcrlab.trials import interrupt

__all__ = ["StorageFull", "RESERVE_BYTES", "is_disk_full", "reserve", "release_reserves", "trigger", "triggered",
           "arm", "disarm"]

RESERVE_BYTES = 16 << 20  # room for the last state snapshot, signatures and tracking writes
_MARKERS = ("no space left on device", "database or disk is full", "disk quota exceeded",
            f"[errno {errno.ENOSPC}]", f"[errno {errno.EDQUOT}]")


class StorageFull(RuntimeError):
    """The sweep stopped because a disk it writes to is full (the message says which and how to resume)."""


_state: dict = {"message": None, "reserves": [], "armed": False}
_lock = threading.Lock()


def is_disk_full(err: BaseException | str | None) -> bool:
    """Whether an exception (or its text) is a full disk or quota: ENOSPC/EDQUOT, SQLite's 'disk is full'."""
    seen = 0
    while err is not None and seen < 10:  # the chain too: Optuna wraps SQLAlchemy wraps sqlite3's "disk is full"
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err).lower()
        if any(marker in text for marker in _MARKERS):
            return True
        if not isinstance(err, BaseException):
            return False
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def reserve(folder: str | os.PathLike, size: int = RESERVE_BYTES) -> Path | None:
    """Set aside ``size`` bytes in ``folder`` (really allocated, not a sparse file); None if there is no room
    (the sweep still runs: the probe write of ``check_storage`` passed, so the disk is merely tight)."""
    path = Path(folder) / ".reserve"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with _lock:
        _state["reserves"].append(path)
    return path


def release_reserves() -> None:
    """Delete the reserve files (a finished sweep leaves none behind)."""
    with _lock:
        paths, _state["reserves"] = list(_state["reserves"]), []
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def trigger(where: str, err: BaseException | str) -> None:
    """Record the first full-disk error (``where`` wrote, ``err`` says what), free the reserve, stop Tune."""
    with _lock:
        if _state["message"] is not None:
            return
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        _state["message"] = f"{where}: {first[:200]}"
    if not _state["armed"]:
        return
    release_reserves()
    interrupt.stop_runs()  # any thread: Tune's own SIGUSR1 handler exists only while fit runs on the main one


def triggered() -> str | None:
    """The first full-disk error of this sweep (``where: message``), or None."""
    return _state["message"]


def arm() -> None:
    """Start a sweep's watch afresh: no error recorded, a trigger frees the reserve and stops Tune's runs."""
    interrupt.reset()
    interrupt.watch()  # before any Tune run of this sweep starts: its stop event is kept
    with _lock:
        _state["message"], _state["armed"] = None, True


def disarm() -> None:
    """End the watch (the sweep is over): reserves deleted, later triggers only record."""
    with _lock:
        _state["armed"] = False
    interrupt.reset()  # later Tune runs of this process (another command in it) are not asked to stop
    release_reserves()

"""Watchdog of a local Ray started by a driver: when the driver dies, every process of that Ray dies too.

Ray ties the head's own processes (GCS, raylet, dashboard) to the driver that started them (the kernel's
parent-death signal), but not what the raylet started: agents, idle workers and trial actors notice the lost
raylet only at their next check, and a trial busy in an epoch ran on for a minute or two after a driver
SIGKILL, holding CPUs and its trial folder.

``mcrlab.trials.session.start_ray`` starts this file as a separate process after a local ``ray.init`` (its own
session, so a signal to the driver's process group does not reach it):

    python -I reaper.py DRIVER_PID TOKEN

While the driver lives, it notes the driver's descendants once a second (pid and start time: the raylet's
agents, workers and trial actors; after the driver's death they are re-parented and could no longer be told
apart). When the driver exits (``pidfd_open``, else a poll) it SIGKILLs every noted process still running
(same start time, so never a recycled pid), and every process whose environment holds ``OWNER_VAR=TOKEN``
(the token every process of that Ray inherits; a process that renamed itself with setproctitle may have
overwritten it, hence the notes), again until none is left (at most ``SWEEP_S``), and exits. After a normal
exit the driver's ``ray.shutdown()`` has already ended them and there is nothing to do. Linux only
(``/proc``); standard library only, so it starts in milliseconds and imports nothing of the platform.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

OWNER_VAR = "MCRLAB_RAY_OWNER"
SWEEP_S = 30.0  # keep looking this long for processes that were starting when the driver died


def owned_pids(token: str, proc: str = "/proc") -> list[int]:
    """Pids of the processes whose environment holds ``OWNER_VAR=token`` (this process excluded)."""
    needle = f"{OWNER_VAR}={token}".encode()
    found = []
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"{proc}/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:  # gone, or not ours to read
            continue
        if needle in env:
            found.append(int(name))
    return found


def _stat(pid: int, proc: str = "/proc") -> tuple[int, int, str] | None:
    """(parent pid, start time in clock ticks, state) of ``pid``, or None once it is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19]), fields[0].decode()


def descendants(root: int, proc: str = "/proc") -> dict[int, int]:
    """The live descendants of ``root``: pid -> start time."""
    children: dict[int, list[tuple[int, int]]] = {}
    for name in os.listdir(proc):
        if name.isdigit():
            st = _stat(int(name), proc)
            if st is not None and st[2] != "Z":
                children.setdefault(st[0], []).append((int(name), st[1]))
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if pid not in found and pid != os.getpid():
                found[pid] = start
                todo.append(pid)
    return found


def _alive_as_noted(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == start and st[2] != "Z"


def wait_for_exit(pid: int, every: float = 1.0, notes: dict[int, int] | None = None) -> None:
    """Return once process ``pid`` has ended; meanwhile add its descendants to ``notes`` every ``every`` s."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        while True:
            if notes is not None:
                notes.update(descendants(pid))
            if fd is not None:
                if select.select([fd], [], [], every)[0]:
                    return
            else:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                except PermissionError:
                    pass
                time.sleep(every)
    finally:
        if fd is not None:
            os.close(fd)


def reap(token: str, notes: dict[int, int] | None = None, sweep_s: float = SWEEP_S) -> int:
    """SIGKILL the noted processes still running and those marked with ``token``, until none is left for a
    moment; returns how many."""
    killed: set[int] = set()
    deadline = time.monotonic() + sweep_s
    quiet = 0
    while time.monotonic() < deadline and quiet < 3:
        pids = [p for p, start in (notes or {}).items() if _alive_as_noted(p, start)] + owned_pids(token)
        quiet = 0 if pids else quiet + 1
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            except OSError:
                pass
        time.sleep(0.2)
    return len(killed)


def main(argv: list[str]) -> int:
    driver, token = int(argv[0]), argv[1]
    notes: dict[int, int] = {}
    wait_for_exit(driver, notes=notes)
    reap(token, notes)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl+C meant for the driver is not for the watchdog
    raise SystemExit(main(sys.argv[1:]))

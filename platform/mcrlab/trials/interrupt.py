"""Stop every Ray Tune run of this driver process, from any thread, the way Ctrl+C stops one.

Tune ends a run gracefully only from its own SIGINT/SIGUSR1 handler: the controller loop stops, the
experiment state is saved one last time with the running trials still unfinished, and ``Tuner.restore``
(``--resume``) continues them from their last checkpoints. Tune installs that handler only when ``fit``
runs on the main thread. A sweep whose dataset studies run in threads (``scaling.concurrent_studies``)
needs the same stop from anywhere: a full disk seen by one study's recorder, or Ctrl+C caught by the main
thread, must stop every study. (A ``Stopper.stop_all`` is no substitute: it ends the trials as TERMINATED,
so a resume would never continue them.)

The handler only sets a ``threading.Event`` that Tune creates for each run in
``ray.tune.tune._setup_signal_catching`` and checks once per controller step. ``watch()`` wraps that function
so every run's event is also kept here, and ``stop_runs()`` sets them all; a run that starts after a stop
was asked for stops at once. The wrapped function is private to Ray (2.60, pinned in constraints.txt): if a
Ray upgrade removes it, ``watch()`` fails loudly instead of leaving runs that cannot be stopped
(tests/trials/test_fault_helpers.py checks it against the installed Ray).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

__all__ = ["watch", "stop_runs", "stop_requested", "reset"]

_lock = threading.Lock()
_events: weakref.WeakSet = weakref.WeakSet()  # the interrupt event of each Tune run started since watch()
_state = {"stop": False}


def watch() -> None:
    """Keep the interrupt event of every Tune run started from now on in this process (idempotent)."""
    from ray.tune import tune as tune_module

    original = getattr(tune_module, "_setup_signal_catching", None)
    if original is None:
        raise RuntimeError("this Ray Tune has no ray.tune.tune._setup_signal_catching: mcrlab cannot stop its "
                           "runs gracefully (install the Ray version of constraints.txt)")
    if getattr(original, "_mcrlab_watch", False):
        return

    def setup_signal_catching(*args: Any, **kwargs: Any) -> threading.Event:
        event = original(*args, **kwargs)  # installs Tune's own handlers too, on the main thread
        with _lock:
            _events.add(event)
            if _state["stop"]:
                event.set()
        return event

    setup_signal_catching._mcrlab_watch = True  # type: ignore[attr-defined]
    tune_module._setup_signal_catching = setup_signal_catching


def stop_runs() -> None:
    """Ask every Tune run of this process to stop as Ctrl+C does (those running and those starting later)."""
    with _lock:
        _state["stop"] = True
        events = list(_events)
    for event in events:
        event.set()


def stop_requested() -> bool:
    return bool(_state["stop"])


def reset() -> None:
    """A new sweep or ablation starts: runs are no longer asked to stop (the events of old runs are dropped)."""
    with _lock:
        _state["stop"] = False
        _events.clear()

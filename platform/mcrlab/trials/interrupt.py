"""Stop every Ray Tune run of this driver process, from any thread, the way Ctrl+C stops one.

Tune ends a run gracefully only from its own SIGINT/SIGUSR1 handler: the controller loop stops, the
experiment state is saved one last time with the running trials still unfinished, and ``Tuner.restore``
(``--resume``) continues them from their last checkpoints. Tune installs that handler only when ``fit``
runs on the main thread. A sweep whose dataset studies run in threads (``scaling.concurrent_studies``)
needs the same stop from anywhere: a full disk seen by one study's recorder, or Ctrl+C caught by the main
thread, must stop every study. (A ``Stopper.stop_all`` is no substitute: it ends the trials as TERMINATED,
so a resume would never continue them.)

The handler only sets a ``threading.Event`` that Tune creates for each run in
``ray.tune.tune._setup_signal_catching`` and checks once per controller step. ``watch()`` has every run's
event kept here (``mcrlab.trials.session.on_tune_run_start``: the one module that touches Ray's private
code), and ``stop_runs()`` sets them all; a run that starts after a stop was asked for stops at once.
"""

from __future__ import annotations

import threading
import weakref

__all__ = ["watch", "stop_runs", "stop_requested", "reset"]

_lock = threading.Lock()
_events: weakref.WeakSet = weakref.WeakSet()  # the interrupt event of each Tune run started since watch()
_state = {"stop": False}


def watch() -> None:
    """Keep the interrupt event of every Tune run started from now on in this process (idempotent)."""
    from mcrlab.trials.session import on_tune_run_start

    on_tune_run_start(_keep)


def _keep(event: threading.Event) -> None:
    with _lock:
        _events.add(event)
        if _state["stop"]:
            event.set()


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

"""The one Ray session module: every entry point (sweep, ablate, reproduce, benchmarks) starts or joins Ray here.

``start_ray(address)`` joins a running cluster (``address`` = ``auto``, ``ray://...`` or ``HOST:PORT``) or
starts a local Ray, always in the ``mcrlab`` namespace, and is a no-op when Ray is already initialised in the
process (tests share one session Ray; ``ray job submit`` drivers join their cluster).

Start-up workaround (Ray 2.60 only, the one place Ray's private modules are touched): a starting raylet gets
a hard-coded 30 s to register with the GCS (``ray._private.node.Node``, ``raylet_start_wait_time_s = 30``),
checked only between calls of ``ray._private.services.get_node``. On a loaded 2-core machine that is missed
("The current node timed out during startup"). While a *local* Ray starts, ``get_node`` is wrapped so that one
call keeps asking for up to ``wait_s``; the start is also retried. The wrapper is applied only on the Ray
versions it was verified on (``PATCHED_RAY``); ``tests/trials/test_session.py`` fails when a Ray bump removes
the hard-coded wait (the workaround is then unnecessary) or changes ``get_node`` (it would be broken).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["NAMESPACE", "PATCHED_RAY", "start_ray", "patient_start_applies"]

NAMESPACE = "mcrlab"  # Ray namespace of the platform's named actors (rung boards)
PATCHED_RAY = ("2.60.",)  # Ray versions on which the start-up wrapper was verified
STARTUP_TIMEOUT_TEXT = "timed out during startup"  # Ray's message (a bare Exception) for the 30 s miss


def patient_start_applies(version: str | None = None) -> bool:
    """Whether the start-up wrapper is used with this Ray ``version`` (default: the installed one)."""
    if version is None:
        import ray

        version = ray.__version__
    return version.startswith(PATCHED_RAY)


def _patient(get_node: Callable[..., Any], wait_s: float) -> Callable[..., Any]:
    """``get_node`` that retries its RuntimeError ("node info not available yet") for up to ``wait_s``."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return get_node(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    return wrapper


@contextlib.contextmanager
def _patient_raylet_wait(wait_s: float) -> Iterator[None]:
    if not patient_start_applies():
        yield
        return
    from ray._private import services  # private: guarded by version above, checked by a test

    original = services.get_node
    services.get_node = _patient(original, wait_s)
    try:
        yield
    finally:
        services.get_node = original


def start_ray(address: str | None = None, *, verbose: bool = False, tries: int = 3, wait_s: float = 180.0,
              **init_kwargs: Any) -> None:
    """Join ``address`` or start a local Ray (patiently, retried ``tries`` times); no-op if already up.

    ``verbose`` forwards worker logs to the driver. Extra ``init_kwargs`` go to ``ray.init`` (for example
    ``num_cpus`` in benchmarks).
    """
    import os

    import ray

    # trials keep the working directory instead of moving into their trial folders, so relative paths (a
    # shard folder as data.name) mean the same in a trial as on the driver; jobs/runtime_env.yaml does the
    # same for submitted jobs. Tune passes this variable from the driver to every trial.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    if ray.is_initialized():
        return
    kwargs = {"namespace": NAMESPACE, "log_to_driver": verbose, "configure_logging": False, **init_kwargs}
    if address is not None:
        ray.init(address=address, **kwargs)
        return
    for attempt in range(tries):
        try:
            with _patient_raylet_wait(wait_s):
                ray.init(**kwargs)
            return
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception for the start-up timeout
            if attempt == tries - 1 or STARTUP_TIMEOUT_TEXT not in str(err):
                raise
            print(f"mcrlab: Ray start-up timed out ({attempt + 1}/{tries}); retrying", file=sys.stderr)
            ray.shutdown()

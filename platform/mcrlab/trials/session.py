"""The one Ray session module: every entry point (sweep, ablate, reproduce, benchmarks) starts or joins Ray here.

Ray is started under a 077 umask and the token file Ray >= 2.59 writes (``~/.ray/auth_token``, 0644 by
Ray's own ``open``) is made 0600 afterwards (``protect_token_files``), whoever created it.

``start_ray(address)`` joins a running cluster (``address`` = ``auto``, ``ray://...`` or ``HOST:PORT``) or
starts a local Ray, always in the ``mcrlab`` namespace, and is a no-op when Ray is already initialised in the
process (tests share one session Ray; ``ray job submit`` drivers join their cluster).

The one place Ray's private code is touched, in two guarded hooks. Start-up workaround (Ray 2.60 only): a starting raylet gets
a hard-coded 30 s to register with the GCS (``ray._private.node.Node``, ``raylet_start_wait_time_s = 30``),
checked only between calls of ``ray._private.services.get_node``. On a loaded 2-core machine that is missed
("The current node timed out during startup"). While a *local* Ray starts, ``get_node`` is wrapped so that one
call keeps asking for up to ``wait_s``; the start is also retried. The wrapper is applied only on the Ray
versions it was verified on (``PATCHED_RAY``); ``tests/trials/test_session.py`` fails when a Ray bump removes
the hard-coded wait (the workaround is then unnecessary) or changes ``get_node`` (it would be broken).

Tune-run hook (private ``ray.tune.tune._setup_signal_catching``, Ray 2.60): ``on_tune_run_start(hook)``
hands ``hook`` the interrupt event each Tune run creates and checks once per controller step, the event
Tune's own Ctrl+C handler sets. ``mcrlab.trials.interrupt`` uses it to stop runs whose ``fit`` is on a worker
thread, where Tune installs no handler. If a Ray upgrade removes the function, it fails loudly instead of
leaving runs that cannot be stopped (``tests/trials/test_fault_helpers.py`` checks it against the installed Ray).

A local Ray dies with its driver: Ray's kernel fate-sharing ends the head's own processes, and a watchdog
(``mcrlab.trials.reaper``, started after a local ``ray.init``) ends what the raylet started (agents, workers,
trial actors), which otherwise outlived a SIGKILLed driver by a minute or two.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mcrlab.trials.reaper import OWNER_VAR

__all__ = ["NAMESPACE", "PATCHED_RAY", "start_ray", "patient_start_applies", "protect_token_files",
           "ray_init_private", "TOKEN_FILE"]

NAMESPACE = "mcrlab"  # Ray namespace of the platform's named actors (rung boards)
PATCHED_RAY = ("2.60.",)  # Ray versions on which the start-up wrapper was verified
TOKEN_FILE = "auth_token"  # Ray's token file name under ~/.ray (and a local cluster's state folder)
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


def on_tune_run_start(hook: Callable[[Any], None]) -> None:
    """Call ``hook(event)`` with the interrupt ``threading.Event`` of every Tune run started from now on in
    this process (idempotent: one wrapper, the latest hook)."""
    from ray.tune import tune as tune_module  # private function of a public module: see the docstring

    current = getattr(tune_module, "_setup_signal_catching", None)
    if current is None:
        raise RuntimeError("this Ray Tune has no ray.tune.tune._setup_signal_catching: mcrlab cannot stop its "
                           "runs gracefully (install the Ray version of constraints.txt)")
    original = getattr(current, "_mcrlab_original", current)

    def setup_signal_catching(*args: Any, **kwargs: Any) -> Any:
        event = original(*args, **kwargs)  # installs Tune's own handlers too, on the main thread
        hook(event)
        return event

    setup_signal_catching._mcrlab_original = original  # type: ignore[attr-defined]
    tune_module._setup_signal_catching = setup_signal_catching


def protect_token_files(home: str | os.PathLike | None = None) -> list[str]:
    """Make the Ray token files of this user 0600 (and ``~/.ray`` 0700); returns the paths it fixed.

    Ray >= 2.59 turns token auth on for a local ``ray.init()`` and writes ``~/.ray/auth_token`` with a
    plain ``open(..., "w")``: mode 0644 under the usual umask, so every local user could read the token.
    Called after each ``ray.init``; files of other users are left alone (they are not ours to change).
    """
    fixed = []
    default = Path(home if home is not None else Path.home()) / ".ray" / TOKEN_FILE
    candidates = [default, default.parent]
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        candidates.append(Path(os.environ["RAY_AUTH_TOKEN_PATH"]))
    for path in candidates:
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_uid != os.getuid() or path.is_symlink():
            continue
        want = 0o700 if path.is_dir() else 0o600
        if st.st_mode & 0o777 & ~want:
            os.chmod(path, want)
            fixed.append(str(path))
    return fixed


def ray_init_private(**kwargs: Any) -> Any:
    """``ray.init(**kwargs)`` with a 077 umask (a local Ray's session files, and the token Ray may create,
    are the user's only), then ``protect_token_files`` for a token created or left readable before."""
    import ray

    old = os.umask(0o077)
    try:
        return ray.init(**kwargs)
    finally:
        os.umask(old)
        protect_token_files()


def start_ray(address: str | None = None, *, verbose: bool = False, tries: int = 3, wait_s: float = 180.0,
              **init_kwargs: Any) -> str | None:
    """Join ``address`` or start a local Ray (patiently, retried ``tries`` times); no-op if already up.

    ``verbose`` forwards worker logs to the driver. Extra ``init_kwargs`` go to ``ray.init`` (for example
    ``num_cpus`` in benchmarks). Returns the Ray dashboard's URL when this call started or joined Ray and
    the cluster has a dashboard (also printed on stderr), else None.
    """
    import os

    import ray

    # trials keep the working directory instead of moving into their trial folders, so relative paths (a
    # shard folder as data.name) mean the same in a trial as on the driver; jobs/runtime_env.yaml does the
    # same for submitted jobs. Tune passes this variable from the driver to every trial.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    if ray.is_initialized():
        return None
    kwargs = {"namespace": NAMESPACE, "log_to_driver": verbose, "configure_logging": False, **init_kwargs}
    if address is not None:
        return _announce(ray_init_private(address=address, **kwargs))
    token = _mark_local_ray()
    for attempt in range(tries):
        try:
            with _patient_raylet_wait(wait_s):
                context = ray_init_private(**kwargs)
            _start_reaper(token)
            return _announce(context)
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception for the start-up timeout
            if attempt == tries - 1 or STARTUP_TIMEOUT_TEXT not in str(err):
                raise
            print(f"mcrlab: Ray start-up timed out ({attempt + 1}/{tries}); retrying", file=sys.stderr)
            ray.shutdown()
        finally:
            if attempt == tries - 1 or ray.is_initialized():
                os.environ.pop(OWNER_VAR, None)  # the Ray processes have it; later subprocesses need not
    return None


def _mark_local_ray() -> str:
    """Put a token no other process has into the environment a local Ray inherits (``reaper.OWNER_VAR``)."""
    import secrets

    token = f"{os.getpid()}-{secrets.token_hex(8)}"
    os.environ[OWNER_VAR] = token
    return token


def _start_reaper(token: str) -> None:
    """Start the watchdog that ends this local Ray's processes when the driver dies (``trials.reaper``)."""
    import subprocess

    if not sys.platform.startswith("linux") or os.environ.get("MCRLAB_NO_REAPER") == "1":
        return
    env = {k: v for k, v in os.environ.items() if k != OWNER_VAR}  # it must not find itself
    subprocess.Popen([sys.executable, "-I", str(Path(__file__).with_name("reaper.py")), str(os.getpid()), token],
                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


def _announce(context: Any) -> str | None:
    """The dashboard URL of a ``ray.init`` context (``http://`` added), printed once; None without one."""
    url = str(getattr(context, "dashboard_url", "") or "")
    if not url:
        return None
    url = url if url.startswith(("http://", "https://")) else f"http://{url}"
    print(f"mcrlab: Ray dashboard: {url}", file=sys.stderr, flush=True)
    return url

"""The one live display of sweeps, ablations and ``mcrlab reproduce``, and the switch for library chatter.

``LiveDisplay`` is a driver-side Tune callback. It shows trials (sweeps) or cells (ablations) done/total,
each named by its plan's label (``arm/dataset/seed`` for an ablation cell), how many are running, the best
final objective so far (of the trials that ran to their end: the one the summary names), elapsed time and an ETA (mean duration of the trials finished in this driver x the number
left / the concurrency), with early-stopped (pruned) and errored trials marked. On a terminal it is a rich
live panel; otherwise (a log file, a pipe, ``ray job submit``) it prints plain lines: one per finished
trial, and a status line at most every ``every_s`` seconds.

Several displays at once (a sweep's dataset studies running concurrently, ``scaling.concurrent_studies``)
share one rich panel (rich draws one live display at a time): each study's part - its status line, named by
its dataset, and its running trials - is stacked in the order the studies started, and leaves the panel when
its study ends. Plain lines carry the study's name, so concurrent studies' lines can be told apart.

``quiet_libraries()`` turns off what Ray Tune, MLflow and Optuna print by default (Tune's experiment tables
and TensorBoard hint, MLflow's "View run" links and table-creation INFO lines, Optuna's per-trial INFO
logs); ``--verbose`` on the commands skips it.

The callback is pickled with the Tuner (``Tuner.restore``), so it keeps only plain data; the stream and
the rich objects are rebuilt lazily.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import sys
import threading
import time
from typing import Any

from mcrlab.trials.plan import TrialPlan

try:
    from ray.tune import Callback
except ImportError:  # pragma: no cover - ray is a dependency; keep the module importable for docs
    Callback = object

__all__ = ["LiveDisplay", "quiet_libraries", "format_duration", "eta_seconds", "use_rich"]

NOISY_LOGGERS = ("mlflow", "alembic", "optuna", "ray.tune", "ray.train")
RAY_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class _DropAuthEnabledNote(logging.Filter):
    """Drops Ray's "Token authentication is enabled for this Ray cluster" note, and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


def quiet_libraries(verbose: bool = False) -> None:
    """Silence the default output of Ray Tune, MLflow and Optuna in this process (unless ``verbose``).

    - ``RAY_AIR_NEW_OUTPUT=0``: Tune's new output engine prints its experiment table, the results folder
      and a TensorBoard hint even at ``verbose=0``; the classic engine prints nothing at ``verbose=0``.
    - ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT=1``: MLflow prints "View run ... / View experiment ..." on
      stdout whenever a run on a tracking server ends (every trial).
    - the ``mlflow``/``alembic`` loggers at WARNING: "Creating initial MLflow database tables..." and the
      migration lines of a new SQLite store; ``optuna`` at WARNING: "Trial N finished with value ...";
      ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false``: a progress bar per downloaded artifact (reports).
    - Ray's note that a local cluster has token authentication on (the safe default; its warning that
      authentication is OFF is kept).
    Explicit user settings of the environment variables win.
    """
    if verbose:
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "1")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow configures its loggers
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # "Downloading artifacts: 100%|..."
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    auth = logging.getLogger(RAY_AUTH_LOGGER)
    if not any(isinstance(f, _DropAuthEnabledNote) for f in auth.filters):
        auth.addFilter(_DropAuthEnabledNote())
    with contextlib.suppress(ImportError):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``1m15s``, ``3725`` -> ``1h02m``; ``None``/NaN -> ``?``."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def eta_seconds(durations: list[float], left: int, concurrency: int) -> float | None:
    """Time to finish ``left`` trials, ``concurrency`` at a time, each lasting the mean of ``durations``
    (seconds of the trials finished so far); None before any finished."""
    if left <= 0:
        return 0.0
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    return mean * math.ceil(left / max(1, concurrency))


def use_rich(stream: Any) -> bool:
    """A rich live panel only on an interactive terminal (never in CI logs, pipes or job drivers)."""
    # a `ray job submit` driver: its output is a log file, whatever the submitter's terminal is
    if os.environ.get("MCRLAB_PLAIN_PROGRESS") or os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


class LiveDisplay(Callback):
    """Live progress of one group of trials (a sweep's study or an ablation's cells).

    ``study`` prefixes every line (the dataset of a study, the ablation id); ``plan`` names the trials
    (``plan.label``) and tells a stopped-early trial (``plan.max_iterations``). ``total`` and
    ``concurrency`` default to what Tune says at setup (total samples) and 1.
    """

    def __init__(self, study: str, plan: TrialPlan, stream: Any = None, every_s: float = 5.0, *,
                 total: int | None = None, concurrency: int = 1, rich: bool | None = None,
                 noun: str = "trials"):
        self.study, self.plan = study, plan
        self.metric, self.mode = plan.metric, plan.mode
        self.every_s = every_s
        self.total = total
        self.concurrency = max(1, int(concurrency))
        self.noun = noun
        self.rich = rich
        self._stream = stream
        self._init_runtime()

    def _init_runtime(self) -> None:
        self._t0: float | None = None
        self._started: dict[str, float] = {}  # trial id -> monotonic start (this driver)
        self._durations: list[float] = []  # seconds of the trials finished in this driver
        self._outcome: dict[str, str] = {}  # trial id -> done | pruned | error
        self._best: tuple[float, str] | None = None  # (objective, label)
        self._last_print = 0.0
        self._live = False  # whether this display has a part in the shared rich panel
        self._ended = False

    def __getstate__(self) -> dict:
        keep = ("study", "plan", "metric", "mode", "every_s", "total", "concurrency", "noun", "rich")
        return {k: self.__dict__.get(k) for k in keep}

    def __setstate__(self, state: dict) -> None:
        # a ProgressPrinter pickled by an older version (Tuner.restore) has fewer fields
        self.__dict__.update({"total": None, "concurrency": 1, "noun": "trials", "rich": None,
                              "every_s": 5.0, **state})
        self._stream = None
        self._init_runtime()

    # ---- facts ---------------------------------------------------------------------------------
    @property
    def stream(self) -> Any:
        return self._stream or sys.stdout

    def _name(self, trial: Any) -> str:
        try:
            return self.plan.label(trial.trial_id, dict(trial.config))
        except Exception:  # noqa: BLE001 - a name for a progress line is never worth a failure
            return str(trial.trial_id)

    def _value(self, result: dict | None) -> float | None:
        result = result or {}
        v = result.get("objective", result.get(self.metric))
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    def _stopped_early(self, trial: Any) -> bool:
        last = trial.last_result or {}
        if last.get("early_stopped"):
            return True
        try:
            max_t = self.plan.max_iterations(dict(trial.config))
        except Exception:  # noqa: BLE001 - the config may not even build; the mark is informational
            return False
        return int(last.get("trial_iteration", max_t)) < max_t

    def _offer(self, value: float | None, label: str) -> None:
        if value is None:
            return
        sign = 1.0 if self.mode == "max" else -1.0
        if self._best is None or sign * value > sign * self._best[0]:
            self._best = (value, label)

    def counts(self, trials: list) -> dict[str, int]:
        """done (finished, pruned and errored together), pruned, errors, running, total."""
        # Tune calls on_trial_complete/on_trial_error before it sets the trial's status: count both
        ended = {t.trial_id: ("error" if t.status == "ERROR" else "done") for t in trials
                 if t.status in ("TERMINATED", "ERROR")}
        ended.update(self._outcome)
        done = len(ended)
        errors = sum(1 for o in ended.values() if o == "error")
        pruned = sum(1 for o in ended.values() if o == "pruned")
        running = sum(1 for t in trials if t.status == "RUNNING" and t.trial_id not in ended)
        total = max(self.total or 0, len(trials))
        return {"done": done, "pruned": pruned, "errors": errors, "running": running, "total": total}

    def status_line(self, trials: list) -> str:
        c = self.counts(trials)
        now = time.monotonic()
        elapsed = now - self._t0 if self._t0 is not None else 0.0
        eta = eta_seconds(self._durations, c["total"] - c["done"], self.concurrency)
        best = f"{self._best[0]:.4f} ({self._best[1]})" if self._best else "-"
        marks = "".join([f", {c['pruned']} pruned" if c["pruned"] else "",
                         f", {c['errors']} errored" if c["errors"] else ""])
        return (f"[{self.study}] {self.noun} {c['done']}/{c['total']} done{marks}, {c['running']} running | "
                f"best {best} | elapsed {format_duration(elapsed)}, ETA {format_duration(eta)}")

    # ---- Tune hooks ----------------------------------------------------------------------------
    def setup(self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None,
              **info: Any) -> None:
        if self.total is None and isinstance(total_num_samples, int) and total_num_samples < sys.maxsize:
            self.total = total_num_samples

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now
        self._started.setdefault(trial.trial_id, now)
        self._refresh(trials)

    on_trial_restore = on_trial_start

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        # "best" is the summary's: finished trials' final objectives only; an epoch's value that a trial
        # later lost, or a pruned trial's, would name a best trial the summary does not
        self._refresh(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._refresh(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trials, trial, "pruned" if self._stopped_early(trial) else "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trials, trial, "error")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if not self._ended:  # once, although Tune may call this again while it shuts down
            self._ended = True
            self._out(self.status_line(trials))
        self._stop_live()

    # ---- output --------------------------------------------------------------------------------
    def _finish(self, trials: list, trial: Any, outcome: str) -> None:
        tid = trial.trial_id
        self._outcome[tid] = outcome
        if tid in self._started:
            self._durations.append(time.monotonic() - self._started.pop(tid))
        r = trial.last_result or {}
        value = self._value(r)
        label = self._name(trial)
        if outcome == "done":
            self._offer(value, label)
        if outcome == "error":
            from mcrlab.trials.errors import last_error_line

            error_file = str(getattr(trial, "error_file", "") or "")
            reason = r.get("error_reason") or last_error_line(error_file) or error_file
            line = f"{label}  ERROR  {reason}".rstrip()
        else:
            params = " ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in sorted(trial.config.items())
                              if k != "cell")
            mark = "  [pruned]" if outcome == "pruned" else ""
            obj = f"{value:.4f}" if value is not None else "nan"
            line = f"{label:<24} it {r.get('trial_iteration', 0):>3}  objective {obj}{mark}  {params}".rstrip()
        c = self.counts(trials)
        self._out(f"[{self.study}] {c['done']:>{len(str(c['total']))}}/{c['total']} {line}")
        self._refresh(trials)

    def _rich_on(self) -> bool:
        return self.rich if self.rich is not None else use_rich(self.stream)

    def _out(self, line: str) -> None:
        if not _PANEL.print(line):  # above the rich panel while there is one (another study's, maybe)
            print(line, file=self.stream, flush=True)

    def _refresh(self, trials: list) -> None:
        now = time.monotonic()
        if self._rich_on():
            if not self._live or now - self._last_print >= 0.5:  # Tune's loop spins fast; rich redraws at 2/s
                self._last_print = now
                self._rich_update(trials)
            return
        if now - self._last_print < self.every_s:
            return
        self._last_print = now
        self._out(self.status_line(trials))

    def _rich_update(self, trials: list) -> None:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        running = [t for t in trials if t.status == "RUNNING"]
        table = Table(box=None, pad_edge=False, show_header=bool(running))
        for col in ("running", "iter", "objective"):
            table.add_column(col, justify="left" if col == "running" else "right")
        for t in running[:12]:
            r = t.last_result or {}
            v = self._value(r)
            table.add_row(self._name(t), str(r.get("trial_iteration", "-")), f"{v:.4f}" if v is not None else "-")
        _PANEL.show(id(self), Group(Text(self.status_line(trials), style="bold"), table), self.stream)
        self._live = True

    def _stop_live(self) -> None:
        if self._live:
            _PANEL.drop(id(self))
            self._live = False


class _SharedPanel:
    """The one rich ``Live`` panel of the process; each display shows its part in it (see the module doc).

    Tune calls a display's hooks from the thread that runs its ``fit``, so concurrent studies update the
    panel from several threads: one lock orders them."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._parts: dict[int, Any] = {}  # display id -> its renderable, in the order they joined
        self._live: Any = None

    def show(self, key: int, view: Any, stream: Any) -> None:
        from rich.console import Console, Group
        from rich.live import Live

        with self._lock:
            self._parts[key] = view
            group = Group(*self._parts.values())
            if self._live is None:
                self._live = Live(group, console=Console(file=stream), refresh_per_second=2, transient=True,
                                  redirect_stdout=False, redirect_stderr=False)
                self._live.start()
                atexit.register(self.close)
            else:
                self._live.update(group)

    def drop(self, key: int) -> None:
        from rich.console import Group

        with self._lock:
            self._parts.pop(key, None)
            if self._parts and self._live is not None:
                self._live.update(Group(*self._parts.values()))
            elif not self._parts:
                self.close()

    def print(self, line: str) -> bool:
        """Print ``line`` above the panel; False when no panel is shown (the caller prints it plainly)."""
        with self._lock:
            if self._live is None:
                return False
            self._live.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return True

    def close(self) -> None:
        with self._lock:
            if self._live is not None:
                with contextlib.suppress(Exception):
                    self._live.stop()
                self._live = None
            self._parts.clear()


_PANEL = _SharedPanel()


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)

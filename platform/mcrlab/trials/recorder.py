"""Driver-side Tune callback: MLflow trial runs (the one writer); the live display is ``trials.display``.

``TrialRecorder`` turns each Tune trial into an MLflow run as its plan says (``TrialPlan.identity``: name,
lineage tags, parent, params, artifacts - a sweep trial under its study run, an ablation cell under its
arm run), logs per-epoch metrics (step = ``trial_iteration``) and the trial's best checkpoint. Runs are
found again by their key tags, so a restarted trial or a resumed driver reopens them instead of writing
duplicates, and epochs already logged are skipped; a run already FINISHED is left as it is (a trial Tune
restored as unfinished replays its recorded result, see ``trials.finished``). Each finished trial is written
to the plan's finished-trial record before anything else, so a driver killed a moment later never trains it
again. While MLflow is unreachable, writes are queued in
order and replayed. Both callbacks are pickled with the Tuner (Tuner.restore), so they hold only plain
data and build their MLflow client lazily.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from mcrlab.tracking import TAG_PREFIX, Tracker
from mcrlab.trials.backends import NONFINITE
from mcrlab.trials.diskfull import is_disk_full, trigger, triggered
from mcrlab.trials.display import LiveDisplay
from mcrlab.trials.errors import last_error_line
from mcrlab.trials.plan import TrialPlan

__all__ = ["TrialRecorder", "ProgressPrinter", "fail_fast_on_outages"]

RETRY_EVERY_S = 5.0  # while MLflow is unreachable, retry the queued writes at most this often
FINAL_WAIT_S = 120.0  # at the end of a study, wait this long for MLflow before reporting lost writes


def fail_fast_on_outages(uri: str) -> None:
    """Make MLflow's HTTP client give up quickly, for a driver whose recorder rides out outages itself.

    The recorder queues and retries writes while a tracking server is down; MLflow's own retries (minutes
    of backoff per call) would only stall the driver, and with it every trial's reports. Call before the
    first MLflow request of a sweep or ablation; explicit user settings win.
    """
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def _warn(message: str) -> None:
    print(f"mcrlab: tracking: {message}", file=sys.stderr, flush=True)

try:
    from ray.tune import Callback
except ImportError:  # pragma: no cover - ray is a dependency; keep the module importable for docs
    Callback = object


class TrialRecorder(Callback):
    def __init__(self, plan: TrialPlan, *, uri: str, run_folder: str, experiment_id: str,
                 optuna: tuple[str, str] | None = None, tune_experiment: str | None = None):
        self.plan = plan
        self.tune_experiment = tune_experiment  # the Tune experiment's name, kept in the finished-trial record
        self.optuna = optuna  # (storage URL, study name) of a sweep's study: trials and runs are cross-linked
        self.uri, self.run_folder = uri, run_folder
        self.experiment_id = experiment_id
        self._tracker: Tracker | None = None
        self._study: Any = None
        self._datasets: dict[str, Any] = {}  # data config (JSON) -> loaded dataset, for log_input
        self.run_ids: dict[str, str] = {}
        self.last_step: dict[str, int] = {}
        self.best: dict[str, tuple[float, str]] = {}  # trial id -> (metric value, checkpoint path)
        self.reasons: dict[str, str] = {}  # trial id -> why it failed, as the trial reported it
        self.closed: set[str] = set()  # trials whose MLflow run was FINISHED when this driver found it
        self.pending: list[tuple[str, tuple]] = []  # hooks whose writes failed (store unreachable), in order
        self._last_try = 0.0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_tracker"] = None
        state["_study"] = None
        state["_datasets"] = {}
        state["pending"] = []  # live Trial objects; a resumed sweep re-reads what it needs from Tune
        return state

    def __setstate__(self, state: dict) -> None:
        # recorders pickled by an older version (Tuner.restore of an older sweep) lack the newer fields
        self.__dict__.update({"reasons": {}, "pending": [], "_last_try": 0.0, "optuna": None, "closed": set(),
                              "tune_experiment": None, **state})
        self._study = None
        self._datasets = {}

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.uri, self.run_folder)
        return self._tracker

    # ---- Tune hooks: every write goes through _guarded (an MLflow outage never stops the sweep) --
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guarded("_on_trial_start", iteration, trials, trial)

    def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._guarded("_on_trial_restore", iteration, trials, trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if result.get(NONFINITE):
            # a NaN/inf loss: the trial raises next; it is a result, not a lost worker, so no retry
            trial.max_failures = 0
            self.reasons[trial.trial_id] = str(result.get("error_reason", "non-finite loss"))
        self._guarded("_on_trial_result", iteration, trials, trial, dict(result))

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self._guarded("_on_checkpoint", iteration, trials, trial, checkpoint)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # first, and outside the MLflow queue: Tune's own snapshot of this may come seconds later
        if self.plan.finished_path:
            from mcrlab.trials.finished import record_finished

            try:
                record_finished(self.plan.finished_path, trial.trial_id, trial.last_result or {},
                                config=dict(trial.config), experiment=self.tune_experiment)
            except OSError as err:
                if is_disk_full(err):
                    trigger(self.plan.finished_path, err)
                _warn(f"cannot record trial {trial.trial_id} as finished in {self.plan.finished_path} "
                      f"({err.strerror or err}); a resume after a driver kill may train it again")
        self._guarded("_on_trial_complete", iteration, trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check_disk(trial)
        self._guarded("_on_trial_error", iteration, trials, trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._check_disk(trial)  # a trial about to be retried: pointless on a full disk

    def _check_disk(self, trial: Any) -> None:
        """A trial that failed on a full disk (its error file says so) stops the sweep (``trials.diskfull``)."""
        error_file = str(getattr(trial, "error_file", "") or "")
        with contextlib.suppress(OSError):
            text = Path(error_file).read_text(encoding="utf-8", errors="replace") if error_file else ""
            if is_disk_full(text):
                trigger(f"trial {trial.trial_id}", last_error_line(error_file) or "No space left on device")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Last chance to catch up: retry the backlog for up to ``FINAL_WAIT_S``, then say what is lost."""
        # a full disk stops the sweep: one more try (the reserve was freed), no waiting for space to come
        deadline = time.monotonic() + (0.0 if triggered() else FINAL_WAIT_S)
        if self.pending and triggered():
            self._flush(force=True)
        while self.pending and time.monotonic() < deadline:
            self._flush(force=True)
            if self.pending:
                time.sleep(RETRY_EVERY_S)
        if self.pending:
            _warn(f"MLflow at {self.uri} still unreachable at the end of the study: {len(self.pending)} "
                  "tracking writes of this study are LOST (training results are in the Tune experiment "
                  "folder); the sweep's final writes will fail too")

    # ---- outage handling ---------------------------------------------------------------------
    def _guarded(self, hook: str, *args: Any) -> None:
        """Run one hook's writes now, or queue them in order while the store is unreachable."""
        if self.pending:
            self._flush()
        if self.pending:
            self.pending.append((hook, args))
            return
        try:
            getattr(self, hook)(*args)
        except Exception as err:  # noqa: BLE001 - any failed write: keep training, queue, retry later
            self._down(err)
            self.pending.append((hook, args))

    def _flush(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_try < RETRY_EVERY_S:
            return
        self._last_try = time.monotonic()
        while self.pending:
            hook, args = self.pending[0]
            try:
                getattr(self, hook)(*args)
            except Exception as err:  # noqa: BLE001 - still down
                self._down(err)
                return
            self.pending.pop(0)
        _warn(f"MLflow at {self.uri} is reachable again: tracking caught up")

    def _down(self, err: Exception) -> None:
        self._last_try = time.monotonic()
        if is_disk_full(err):
            trigger(f"tracking store {self.uri}", err)
        if not self.pending:
            first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            _warn(f"MLflow at {self.uri} is unreachable ({type(err).__name__}: {first}); training goes on, "
                  f"tracking writes are queued and retried every {RETRY_EVERY_S:.0f} s")

    def _on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trial)

    def _on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._open(trial)

    def _on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self._open(trial)
        step = int(result.get("trial_iteration", result.get("training_iteration", 0)))
        if step <= self.last_step.get(trial.trial_id, -1):
            return  # already logged before a resume
        metrics = {k: v for k, v in result.items() if "/" in k or k in ("objective", "epoch", "seed")}
        self.tracker.log_metrics(run_id, metrics, step=step)
        self.last_step[trial.trial_id] = step  # only once written: a failed write is replayed in full
        # data-parallel trials: TuneReportCallback puts the persisted checkpoint's path in the result
        if result.get("checkpoint_path"):
            self._offer(trial.trial_id, result, result["checkpoint_path"])

    def _on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self._offer(trial.trial_id, trial.last_result or {}, checkpoint.path)

    def _on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._open(trial)
        if trial.trial_id in self.closed:
            return  # finished and fully recorded by an earlier driver; the trial only replayed its result
        last = trial.last_result or {}
        max_t = None
        with contextlib.suppress(Exception):  # the config may not even build; the tag is informational
            max_t = self.plan.max_iterations(dict(trial.config))
        stopped = bool(last.get("early_stopped")) or (max_t is not None and
                                                     int(last.get("trial_iteration", max_t)) < max_t)
        self.tracker.set_tags(run_id, {f"{TAG_PREFIX}early_stopped": str(stopped).lower()})
        best = self.best.get(trial.trial_id)
        path = best[1] if best and os.path.isdir(best[1]) else None
        if path is None and getattr(trial, "checkpoint", None) is not None and os.path.isdir(trial.checkpoint.path):
            path = trial.checkpoint.path
        if path is not None:
            self.tracker.log_artifacts(run_id, path, "best_checkpoint")
            if best:
                self.tracker.log_metrics(run_id, {"best_checkpoint/" + self.plan.metric: best[0]})
        self.tracker.end_run(run_id, "FINISHED")

    def _on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self._open(trial)
        error_file = str(getattr(trial, "error_file", "") or "")
        self.tracker.set_tags(run_id, {f"{TAG_PREFIX}error": error_file,
                                       f"{TAG_PREFIX}error_reason": self.reasons.get(trial.trial_id)
                                       or last_error_line(error_file)})
        self.tracker.end_run(run_id, "FAILED")

    # ---- helpers -----------------------------------------------------------------------------
    def _offer(self, trial_id: str, result: dict, path: str) -> None:
        value = result.get(self.plan.metric)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return
        sign = 1.0 if self.plan.mode == "max" else -1.0
        old = self.best.get(trial_id)
        if old is None or sign * value > sign * old[0]:
            self.best[trial_id] = (float(value), path)

    def _open(self, trial: Any) -> str:
        """The trial's MLflow run: found by its key tags, or created with the plan's params and artifacts."""
        tid = trial.trial_id
        if tid in self.run_ids:
            return self.run_ids[tid]
        ident = self.plan.identity(tid, dict(trial.config))
        key = {k: ident.tags[k] for k in ident.key_tags}
        existed = self.tracker.find_run(self.experiment_id, key)
        if existed is not None and self.tracker.client.get_run(existed).info.status == "FINISHED":
            self.closed.add(tid)  # never reopened: its results, artifacts and end time stay as they were
            run_id = existed
        else:
            run_id = self.tracker.start_run(self.experiment_id, ident.name, tags=ident.tags,
                                            parent_run_id=ident.parent_run_id, key_tags=ident.key_tags)
        if existed is None:
            self.tracker.log_params(run_id, ident.params)
            for name, obj in ident.artifacts.items():
                self.tracker.log_dict(run_id, obj, name)
            self._log_input(run_id, dict(trial.config))
            self.last_step[tid] = -1
        else:
            self.last_step[tid] = self.tracker.last_step(run_id, "objective")
        self.run_ids[tid] = run_id
        self._link_optuna(tid, run_id)
        return run_id

    def _log_input(self, run_id: str, point: dict) -> None:
        """The trial's training dataset as the run's MLflow dataset input (name, fingerprint, schema).

        Datasets are loaded once per data config on the driver (it loaded them for the fingerprints already);
        one that cannot be loaded here is skipped - the trial itself reports the real error.
        """
        import json

        from mcrlab.trials.conventions import log_dataset

        try:
            data = self.plan.configs(point)[0].data
            key = json.dumps(dataclasses.asdict(data), sort_keys=True, default=str)
            if key not in self._datasets:
                from mcrlab.data import load_dataset

                self._datasets[key] = load_dataset(data)
            dataset = self._datasets[key]
        except Exception:  # noqa: BLE001 - see above
            return
        log_dataset(self.tracker.client, run_id, dataset)

    def _link_optuna(self, trial_id: str, run_id: str) -> None:
        """Tag the run with its Optuna trial number and give the Optuna trial the run id (user attr).

        The searcher marked the Optuna trial with the Tune trial id when it suggested it; a link that cannot
        be made (no study, the trial already closed) is skipped: it is a convenience, never a failure.
        """
        if not self.optuna:
            return
        from mcrlab.trials.conventions import MLFLOW_RUN_ATTR, SWEEP_ATTR, TUNE_TRIAL_ATTR

        try:
            import optuna

            if self._study is None:
                storage, name = self.optuna
                self._study = optuna.load_study(study_name=name, storage=storage)
            sweep = getattr(self.plan, "sweep_id", None)  # a shared study holds other drivers' trials too
            found = [t for t in self._study.get_trials(deepcopy=False)
                     if t.user_attrs.get(TUNE_TRIAL_ATTR) == trial_id
                     and t.user_attrs.get(SWEEP_ATTR, sweep) == sweep]
        except Exception:  # noqa: BLE001 - see above
            return
        if not found:
            return
        ot = found[-1]
        self.tracker.set_tags(run_id, {f"{TAG_PREFIX}optuna_trial": ot.number,
                                       f"{TAG_PREFIX}optuna_study": self.optuna[1]})
        if ot.user_attrs.get(MLFLOW_RUN_ATTR) != run_id and not ot.state.is_finished():
            with contextlib.suppress(Exception):
                optuna.trial.Trial(self._study, ot._trial_id).set_user_attr(MLFLOW_RUN_ATTR, run_id)


# the live display replaced the progress table; the old name stays importable for Tuner states pickled by
# an older version (Tuner.restore unpickles callbacks by their class path)
ProgressPrinter = LiveDisplay

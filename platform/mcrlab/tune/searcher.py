"""The sweep's Optuna searcher: Ray Tune's OptunaSearch, made safe for resuming and true to Optuna's records.

- Resume: a driver killed just after a trial finished can be restored from a Tune experiment snapshot older
  than the Optuna study: Tune re-runs that trial, and plain OptunaSearch raises UpdateFinishedTrialError on
  its first result, which ends the sweep with a TuneError. Here the study keeps the value it already has
  and the re-run's results are ignored. A trial handed out and finished after that snapshot is missing from
  it altogether, and the restored searcher (its sampler's random state too) would hand its slot out again,
  with the same point: given the experiment's ``num_samples``, its name and the driver's finished-trial record
  (``mcrlab.trials.finished``), it counts those trials as handed out and ends the experiment that much sooner,
  and its sampler is reseeded (such a resume is not bit-reproducible; one with nothing missing still is).
- The objective is named (``study.set_metric_names``): Optuna's plots and dashboard show ``val/acc``, not
  "Objective 0"; a multi-objective study (``metric``/``mode`` lists: ``objective/0``, ``objective/1``, ...)
  names each of its objectives.
- A trial stopped early (ASHA: Tune's scheduler, or the in-trial rung board's ``early_stopped`` flag) is
  told PRUNED, not COMPLETE: its value is Optuna's (the last reported one), and samplers and importances
  treat it as the partial result it is.
- Each Optuna trial carries the Tune trial id (user attr ``tune_trial_id``), by which the trial recorder
  links it to the trial's MLflow run (``mlflow_run_id`` attr, ``mcrlab.optuna_trial`` tag), and the
  ``trial_attrs`` given (the sweep id: which driver ran it, in a study shared by several, tune/shared.py).

Also ``BudgetStopper``, the Tune stopper of ``--time-budget`` (see ``budget``).

A module of its own: it imports Ray, and the searcher and stopper are pickled by reference into the Tune
experiment state.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch
from ray.tune.stopper import Stopper

from mcrlab.trials.conventions import MLFLOW_RUN_ATTR, TUNE_TRIAL_ATTR
from mcrlab.tune import budget

__all__ = ["ResumableOptunaSearch", "BudgetStopper", "TUNE_TRIAL_ATTR", "MLFLOW_RUN_ATTR"]

logger = logging.getLogger(__name__)


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` plus ``metric_name`` (the objective's name in the study, or a list of names for a
    multi-objective study) and ``max_iterations`` (reports of a trial run to its end; a trial completed
    with fewer was stopped early)."""

    def __init__(self, *args: Any, metric_name: str | list[str] | None = None, max_iterations: int | None = None,
                 trial_attrs: dict[str, Any] | None = None, num_samples: int | None = None,
                 finished_path: str | None = None, experiment: str | None = None, **kwargs: Any):
        self.metric_name = metric_name
        self.max_iterations = max_iterations
        # the experiment's trial count, its finished-trial record and its name (see the module docstring)
        self.num_samples, self.finished_path, self.experiment = num_samples, finished_path, experiment
        self.finished_elsewhere = 0  # after a restore: finished_unknown(), the slots those trials took
        self.trial_attrs = dict(trial_attrs or {})  # user attrs of every trial it asks for (its sweep id)
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode: Any) -> None:
        super()._setup_study(mode)
        names = getattr(self, "metric_name", None)
        names = [names] if isinstance(names, str) else names
        if names and len(names) == len(self._ot_study.directions):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(list(names))

    def finished_unknown(self) -> int:
        """Trials of this experiment that the finished-trial record holds and this searcher never handed out:
        after ``Tuner.restore``, the ones handed out (and finished) after the snapshot it was restored from."""
        experiment = getattr(self, "experiment", None)  # absent in states pickled before
        if not experiment:
            return 0
        from mcrlab.trials.finished import finished_trials

        return sum(1 for tid, t in finished_trials(getattr(self, "finished_path", None)).items()
                   if t.experiment == experiment and tid not in self._ot_trials)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        # the sampler's random state is the snapshot's too: it would suggest the points it handed out after the
        # snapshot again (a startup trial of TPE, a random sample: exactly); those that finished are done
        # counted once: those trials are never handed out again, and a suggestion need not read the record
        self.finished_elsewhere = self.finished_unknown()
        if self.finished_elsewhere:
            self._ot_study.sampler.reseed_rng()

    def suggest(self, trial_id: str) -> dict | str | None:
        total = getattr(self, "num_samples", None)
        elsewhere = getattr(self, "finished_elsewhere", 0)  # set by restore; absent in states pickled before
        if total is not None and len(self._ot_trials) + elsewhere >= total:
            return self.FINISHED  # every slot is taken: handed out here, or finished after the snapshot
        params = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None:
            ot_trial.set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            for key, value in getattr(self, "trial_attrs", {}).items():  # absent in states pickled before
                ot_trial.set_user_attr(key, value)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            # already COMPLETE in the study: ignore this and the later results and completion of the re-run
            self._completed_trials.add(trial_id)

    def stopped_early(self, result: dict | None) -> bool:
        """Whether a completed trial's last ``result`` says it was stopped before its last iteration."""
        if not result:
            return False
        if isinstance(self.metric, list):
            # several objectives: no scheduler stops trials (ASHA is refused), and a PRUNED trial would have
            # no values and drop off the Pareto front; a trial ending early by patience is COMPLETE
            return False
        if result.get("early_stopped"):
            return True
        max_t = getattr(self, "max_iterations", None)
        step = result.get("trial_iteration", result.get("training_iteration"))
        return max_t is not None and isinstance(step, int) and step < max_t

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if (not error and trial_id not in self._completed_trials and trial_id in self._ot_trials
                and self.stopped_early(result)):
            try:
                self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
            except Exception as exc:  # noqa: BLE001 - as OptunaSearch: a failed tell never ends the sweep
                logger.warning(exc)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result=result, error=error)


class BudgetStopper(Stopper):
    """Stops the whole experiment once the sweep's deadline has passed; never one trial on its own.

    Pickled with the Tune experiment holding only the sweep id, so a restored experiment obeys the budget
    of the command that restores it (``budget.set_deadline``), not the one it was started with (Tune's own
    ``TimeoutStopper`` keeps the budget it had left, which a budget-ended sweep has spent).
    """

    def __init__(self, sweep_id: str):
        self.sweep_id = sweep_id

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        if budget.expired(self.sweep_id):
            budget.mark_fired(self.sweep_id)
            return True
        return False

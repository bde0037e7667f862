"""The sweep's Optuna searcher: Ray Tune's OptunaSearch, made safe for resuming a killed driver.

A driver killed just after a trial finished can be restored from a Tune experiment snapshot older than the
Optuna study: Tune re-runs that trial, and plain OptunaSearch raises UpdateFinishedTrialError on its first
result, which ends the sweep with a TuneError. Here the study keeps the value it already has and the
re-run's results are ignored. (A module of its own: it imports Ray, and the searcher is pickled by
reference into the Tune experiment state.)
"""

from __future__ import annotations

import optuna
from ray.tune.search.optuna import OptunaSearch

__all__ = ["ResumableOptunaSearch"]


class ResumableOptunaSearch(OptunaSearch):
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            super().on_trial_result(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            # already COMPLETE in the study: ignore this and the later results and completion of the re-run
            self._completed_trials.add(trial_id)

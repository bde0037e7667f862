"""The resumable searcher ignores results for trials its Optuna study has already closed."""

from __future__ import annotations

import optuna
import pytest
from ray.tune.search.optuna import OptunaSearch

from mcrlab.tune.searcher import ResumableOptunaSearch


def _space(trial: optuna.Trial) -> None:
    trial.suggest_float("x", 0.0, 1.0)


def test_result_for_a_finished_optuna_trial_is_ignored():
    searcher = ResumableOptunaSearch(space=_space, metric="objective", mode="max", sampler=optuna.samplers.RandomSampler(seed=0))
    assert searcher.suggest("t1") is not None
    searcher.on_trial_result("t1", {"objective": 0.5, "training_iteration": 1})
    ot_trial = searcher._ot_trials["t1"]
    searcher._ot_study.tell(ot_trial, 0.7)  # the study closed it (e.g. before the driver was killed)
    searcher._completed_trials.discard("t1")  # ... but the restored Tune snapshot still runs it
    searcher.on_trial_result("t1", {"objective": 0.1, "training_iteration": 1})  # plain OptunaSearch raises
    searcher.on_trial_complete("t1", {"objective": 0.1})
    done = searcher._ot_study.get_trials()
    assert len(done) == 1 and done[0].value == 0.7


def test_plain_optuna_search_raises_there():
    """Guards the premise: if Ray's OptunaSearch stops raising, the subclass can go."""
    searcher = OptunaSearch(space=_space, metric="objective", mode="max",
                            sampler=optuna.samplers.RandomSampler(seed=0))
    searcher.suggest("t1")
    searcher._ot_study.tell(searcher._ot_trials["t1"], 0.7)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        searcher.on_trial_result("t1", {"objective": 0.1, "training_iteration": 1})

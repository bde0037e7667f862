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


def test_a_restored_searcher_counts_its_trials_that_finished_after_the_snapshot(tmp_path):
    """A driver killed after its searcher handed out t2 and t2 finished, with Tune's last snapshot taken when
    only t1 was handed out: the restored searcher has one slot fewer to fill (t2's), not a second t2."""
    from mcrlab.trials.finished import record_finished

    record = str(tmp_path / "finished-x.json")

    def searcher() -> ResumableOptunaSearch:
        return ResumableOptunaSearch(space=_space, metric="objective", mode="max", num_samples=3,
                                     finished_path=record, experiment="ds",
                                     sampler=optuna.samplers.RandomSampler(seed=0))

    live = searcher()
    assert live.suggest("t1") is not None
    snapshot = tmp_path / "searcher.pkl"
    live.save(str(snapshot))  # Tune's last snapshot: t1 handed out
    t2 = None
    for tid in ("t1", "t2"):
        if tid == "t2":
            t2 = live.suggest("t2")
        live.on_trial_complete(tid, {"objective": 0.5})
        record_finished(record, tid, {"objective": 0.5}, config={"x": 0.5}, experiment="ds")
    record_finished(record, "other", {"objective": 0.9}, experiment="ds-topup-1")  # another experiment's

    restored = searcher()
    restored.restore(str(snapshot))
    assert restored.finished_unknown() == 1  # t2; t1 is its own, the top-up's trial is not
    t3 = restored.suggest("t3")
    assert t3 not in (None, ResumableOptunaSearch.FINISHED)
    assert t3 != t2, "the restored sampler suggested the finished t2's point again"
    assert restored.suggest("t4") == ResumableOptunaSearch.FINISHED  # t1, t2 and t3 fill the 3 slots
    del restored.experiment  # a state pickled by an older version: nothing counted, as before
    assert restored.finished_unknown() == 0


def test_plain_optuna_search_raises_there():
    """Guards the premise: if Ray's OptunaSearch stops raising, the subclass can go."""
    searcher = OptunaSearch(space=_space, metric="objective", mode="max",
                            sampler=optuna.samplers.RandomSampler(seed=0))
    searcher.suggest("t1")
    searcher._ot_study.tell(searcher._ot_trials["t1"], 0.7)
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        searcher.on_trial_result("t1", {"objective": 0.1, "training_iteration": 1})


def test_study_names_its_objective_and_a_trial_stopped_early_is_pruned():
    searcher = ResumableOptunaSearch(space=_space, metric="objective", mode="max", metric_name="val/acc",
                                     max_iterations=3, sampler=optuna.samplers.RandomSampler(seed=0))
    study = searcher._ot_study
    assert study.metric_names == ["val/acc"]
    for tid in ("full", "stopped", "flagged"):
        searcher.suggest(tid)
        searcher.on_trial_result(tid, {"objective": 0.4, "training_iteration": 1, "trial_iteration": 1})
    searcher.on_trial_result("full", {"objective": 0.6, "training_iteration": 3, "trial_iteration": 3})
    searcher.on_trial_complete("full", {"objective": 0.6, "trial_iteration": 3})
    searcher.on_trial_complete("stopped", {"objective": 0.4, "trial_iteration": 1})  # ASHA: 1 of 3
    searcher.on_trial_complete("flagged", {"objective": 0.4, "trial_iteration": 3, "early_stopped": True})
    by_tune_id = {t.user_attrs["tune_trial_id"]: t for t in study.get_trials()}
    S = optuna.trial.TrialState
    assert by_tune_id["full"].state == S.COMPLETE and by_tune_id["full"].value == 0.6
    assert by_tune_id["stopped"].state == S.PRUNED and by_tune_id["stopped"].value == 0.4  # its last report
    assert by_tune_id["flagged"].state == S.PRUNED
    searcher.on_trial_complete("stopped", {"objective": 0.4, "trial_iteration": 1})  # a second call: no-op
    assert len(study.get_trials()) == 3


def test_multi_objective_study_names_every_objective_and_a_short_trial_stays_complete():
    """Two objectives: both directions and names in the study; a trial that ended before max_iterations (a
    patience stop: no scheduler runs with several objectives) is COMPLETE with both values, on the front."""
    searcher = ResumableOptunaSearch(space=_space, metric=["objective/0", "objective/1"], mode=["max", "min"],
                                     metric_name=["val/acc", "val/head/m1"], max_iterations=3,
                                     sampler=optuna.samplers.RandomSampler(seed=0))
    study = searcher._ot_study
    assert study.metric_names == ["val/acc", "val/head/m1"]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    searcher.suggest("short")
    searcher.on_trial_result("short", {"objective/0": 0.5, "objective/1": 0.3, "training_iteration": 1})
    searcher.on_trial_complete("short", {"objective/0": 0.5, "objective/1": 0.3, "trial_iteration": 1})
    (t,) = study.get_trials()
    assert t.state == optuna.trial.TrialState.COMPLETE and t.values == [0.5, 0.3]
    assert [b.number for b in study.best_trials] == [t.number]

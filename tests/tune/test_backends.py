"""Trial backends: the seed loop (objective, resume state, in-trial early stop), the ASHA rule both
backends use, the rung board, backend choice and concurrency. Sweeps through Ray: test_runner.py."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from mcrlab.config import ConfigError, RunConfig
from mcrlab.trials.backends import DataParallel, RungBoard, SingleProcess, pick_backend
from mcrlab.trials.resources import max_concurrent
from mcrlab.trials.seeds import STATE_FILE, asha_keeps, asha_milestones, read_state, run_seeds
from mcrlab.tune.space import parse_space
from mcrlab.tune.study import StudyPlan, scaling_of

SPACE = {
    "name": "t", "datasets": ["synthetic:competition"],
    "base": {"data": {"n_train": 128}, "model": {"hidden": 8, "latent": 4, "depth": 1},
             "method": {"name": "joint"},
             "train": {"epochs": 2, "batch_size": 64, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}},
    "objective": {"seeds": 2, "aggregate": "lcb", "seed": 5},
    "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
}


def _spec(**over) -> StudyPlan:
    return StudyPlan(space=parse_space({**SPACE, **over}), dataset="synthetic:competition", sweep_id="s",
                     storage_path="/tmp/unused")


# ---- ASHA rule ------------------------------------------------------------------------------------


def test_milestones_are_geometric_up_to_max_t():
    assert asha_milestones(1, 3, 30) == [1, 3, 9, 27]
    assert asha_milestones(2, 2, 16) == [2, 4, 8, 16]
    assert asha_milestones(5, 3, 4) == []


@pytest.mark.parametrize("mode", ["max", "min"])
def test_asha_keeps_matches_numpy_percentile_cutoff(mode):
    rng = np.random.default_rng(0)
    for _ in range(200):
        recorded = list(rng.normal(size=rng.integers(1, 9)))
        value, eta = float(rng.normal()), float(rng.choice([2.0, 3.0, 4.0]))
        signed = np.array(recorded) * (1 if mode == "max" else -1)
        cutoff = np.percentile(signed, (1 - 1 / eta) * 100)  # Ray's ASHA bracket rule
        assert asha_keeps(recorded, value, eta, mode) == bool(value * (1 if mode == "max" else -1) >= cutoff)
    assert asha_keeps([], 0.1, 3, "max")  # the first at a rung goes on
    assert not asha_keeps([0.1], math.nan, 3, "max")


def test_rung_board_memoises_and_persists(tmp_path):
    path = tmp_path / "rungs.json"
    board = RungBoard(grace_period=1, reduction_factor=2, max_t=4, mode="max", path=str(path))
    assert board.keep("a", 1, 0.9)          # first at rung 1
    assert not board.keep("b", 1, 0.1)      # below the median of {0.9}
    assert not board.keep("b", 1, 0.99)     # memoised: every rank of trial b hears the same answer
    assert board.keep("c", 3, 0.0)          # 3 is no rung
    assert board.keep("a", 4, 0.0)          # max_t is the end, not a rung
    again = RungBoard(grace_period=1, reduction_factor=2, max_t=4, mode="max", path=str(path))
    assert again.state() == board.state() and not again.keep("b", 1, 0.99)


# ---- the seed loop (real fit, tiny) ---------------------------------------------------------------


def test_run_seeds_reports_objective_over_seeds_and_resumes(tmp_path):
    spec = _spec()
    cfgs = spec.configs({"train.lr": 3e-3})
    assert [c.train.seed for c in cfgs] == [5, 6]
    reports, ckpts = [], []

    def report(metrics, ckpt):
        reports.append(metrics)
        if ckpt:  # what Tune does: persist a copy of the directory
            dst = tmp_path / f"persist{len(reports)}"
            shutil.copytree(ckpt, dst)
            ckpts.append(str(dst))

    last = run_seeds(cfgs, metric="val/acc", score=spec.score, report=report,
                     checkpoint_dir=str(tmp_path / "ck"))
    assert [r["trial_iteration"] for r in reports] == [1, 2, 3, 4]
    assert [r["seed"] for r in reports] == [5, 5, 6, 6]
    assert reports[1]["objective"] == reports[1]["val/acc"]  # one seed so far: the metric itself
    finals = [reports[1]["val/acc"], reports[3]["val/acc"]]
    assert last["objective"] == pytest.approx(spec.score(finals))
    assert spec.score(finals) <= np.mean(finals)  # lcb is pessimistic for mode max
    assert read_state(ckpts[2]) == {"seed_index": 1, "done": [finals[0]], "iteration": 3}

    # resume from the checkpoint taken after iteration 3: one epoch of seed 6 left, same end
    resumed: list[dict] = []
    again = run_seeds(cfgs, metric="val/acc", score=spec.score,
                      report=lambda m, c: resumed.append(m), checkpoint_dir=str(tmp_path / "ck2"),
                      resume_from=ckpts[2])
    assert [r["trial_iteration"] for r in resumed] == [4]
    assert again["objective"] == pytest.approx(last["objective"], abs=1e-6)
    assert (tmp_path / "ck2" / STATE_FILE).is_file()


def test_run_seeds_stops_inside_the_trial(tmp_path):
    spec = _spec(objective={"seeds": 1})
    reports: list[dict] = []
    out = run_seeds(spec.configs({"train.lr": 3e-3}), metric="val/acc", score=spec.score,
                    report=lambda m, c: reports.append(m), should_stop=lambda it, v: it >= 1)
    assert len(reports) == 1 and out["early_stopped"] == 1.0


# ---- backend choice and concurrency ---------------------------------------------------------------


def test_backend_follows_scaling():
    single = pick_backend(scaling_of(parse_space({**SPACE, "scaling": {"workers": 1, "cpus_per_worker": 2}})))
    dp = pick_backend(scaling_of(parse_space({**SPACE, "scaling": {"workers": 4, "gpus_per_worker": 1}})))
    assert isinstance(single, SingleProcess) and not single.stops_inside_trial
    assert isinstance(dp, DataParallel) and dp.stops_inside_trial
    assert single.trial_resources() == {"CPU": 2.0, "GPU": 0.0}
    assert dp.trial_resources() == {"CPU": 4.0, "GPU": 4.0}


def test_concurrency_counts_nested_workers_and_gpus():
    assert max_concurrent({"CPU": 2, "GPU": 0}, {"CPU": 8}) == 4
    assert max_concurrent({"CPU": 4, "GPU": 4}, {"CPU": 64, "GPU": 8}) == 2
    assert max_concurrent({"CPU": 1, "GPU": 0}, {"CPU": 16}, cap=3) == 3
    with pytest.raises(ConfigError, match="needs 4 CPUs"):
        max_concurrent({"CPU": 4, "GPU": 0}, {"CPU": 2})
    with pytest.raises(ConfigError, match="GPUs"):
        max_concurrent({"CPU": 1, "GPU": 1}, {"CPU": 16})


def test_trial_spec_configs_are_valid_run_configs():
    cfgs = _spec().configs({"train.lr": 5e-3})
    assert all(isinstance(c, RunConfig) and c.train.lr == 5e-3 for c in cfgs)
    assert cfgs[0].data.name == "synthetic:competition"

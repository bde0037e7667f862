"""Two trial backends behind one interface, picked by the plan's ``scaling`` (workers == 1 or not).

- single-process: a Tune function trainable that calls ``fit`` in the trial's own process, reports
  with ``ray.tune.report`` (+ checkpoint) and resumes from ``ray.tune.get_checkpoint``. Tune's ASHA may
  stop it (safe: nothing nested to leak).
- data-parallel: a Tune function that builds a TorchTrainer (``data_parallel.make_trainer``) and calls
  ``.fit()``; ``TuneReportCallback`` forwards rank 0's reports to Tune. The Tune function holds no CPU
  (the Train workers hold the trial's resources), which is why Tune cannot count them and
  ``resources.max_concurrent`` caps concurrency instead. Early stopping happens *inside* the trial:
  workers ask a ``RungBoard`` actor (ASHA's rule) after each epoch and end the run cleanly - a Tune
  scheduler killing the nested trainer leaked its placement group and hung the sweep on Ray 2.60.

A trial in the driver's finished-trial record (``trials.finished``) reports its recorded result and trains
nothing: Tune's snapshot may restore it as unfinished after a driver kill. Both run ``seeds.run_seeds``: one ``fit`` per training seed of the plan, with ``objective`` in every
report. Sweeps and ablations differ only in their ``TrialPlan`` (``plan.py``). Data-parallel Train runs
are named by ``plan.train_run_name`` (resume keys): a restarted trial finds its Train run, and its latest
checkpoint, again.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from mcrlab.config import RunConfig
from mcrlab.trials.plan import Scaling, TrialPlan
from mcrlab.trials.resources import ZERO_CPU_REQUEST
from mcrlab.trials.seeds import asha_keeps, asha_milestones, run_seeds
from mcrlab.trials.session import NAMESPACE

__all__ = ["Backend", "SingleProcess", "DataParallel", "pick_backend", "RungBoard", "NAMESPACE", "NONFINITE"]

NONFINITE = "nonfinite_loss"  # result key of a trial stopped by a NaN/inf loss (never retried)


class Backend:
    """How a trial runs. ``trainable(plan)`` is what the Tuner gets."""

    name = ""
    stops_inside_trial = False  # True: early stopping via the RungBoard, no Tune scheduler

    def __init__(self, workers: int = 1, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0):
        self.workers, self.cpus, self.gpus = workers, cpus_per_worker, gpus_per_worker

    def trial_resources(self) -> dict[str, float]:
        """What one trial occupies on the cluster (Tune only sees part of it for data-parallel trials)."""
        return {"CPU": self.workers * self.cpus, "GPU": self.workers * self.gpus}

    def trainable(self, plan: TrialPlan):
        raise NotImplementedError


class SingleProcess(Backend):
    name = "single-process"

    def trainable(self, plan: TrialPlan):
        from ray import tune

        fn = tune.with_parameters(single_process_trial, plan=plan)
        return tune.with_resources(fn, {"cpu": self.cpus, "gpu": self.gpus})


class DataParallel(Backend):
    name = "data-parallel"
    stops_inside_trial = True

    def trainable(self, plan: TrialPlan):
        from ray import tune

        fn = tune.with_parameters(data_parallel_trial, plan=plan, workers=self.workers, cpus=self.cpus,
                                  gpus=self.gpus)
        # the driving function only waits on the TorchTrainer: it must not hold a CPU the workers need
        return tune.with_resources(fn, dict(ZERO_CPU_REQUEST))


def pick_backend(s: Scaling) -> Backend:
    """The single-process backend for one-worker trials, else the data-parallel one."""
    cls = SingleProcess if s.workers == 1 else DataParallel
    return cls(s.workers, s.cpus, s.gpus)


# --------------------------------------------------------------------------------------------------
# the trial functions (run in Tune's trial actors)


def _replay_if_finished(plan: TrialPlan) -> bool:
    """A trial the driver recorded as finished (``trials.finished``) but Tune restored as unfinished (its
    experiment snapshot predates the trial's end): report the recorded final result again, train nothing."""
    from ray import tune

    from mcrlab.trials.finished import finished_result

    done = finished_result(plan.finished_path, tune.get_context().get_trial_id())
    if done is None:
        return False
    tune.report(done)
    return True


def single_process_trial(config: dict, plan: TrialPlan) -> None:
    """Tune function trainable: ``config`` is the trial's point (Optuna's sample, or a cell index)."""
    import contextlib

    from ray import tune

    if _replay_if_finished(plan):
        return

    def report(metrics: dict[str, Any], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is not None:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))
        else:
            tune.report(metrics)

    from mcrlab.engine.fit import NonFiniteLoss

    checkpoint = tune.get_checkpoint()
    with (checkpoint.as_directory() if checkpoint else contextlib.nullcontext()) as resume_from:
        try:
            run_seeds(plan.configs(config), metric=plan.metric, score=plan.score, report=report,
                      checkpoint_dir=tempfile.mkdtemp(prefix="mcrlab-trial-"), resume_from=resume_from,
                      more=plan.more_objectives())
        except NonFiniteLoss as err:
            # tell the driver why before failing: the recorder tags the reason and keeps Tune from
            # retrying (a diverged run diverges again from its checkpoint; retries are for lost workers)
            tune.report({NONFINITE: 1.0, "objective": math.nan, "error_reason": f"NonFiniteLoss: {err}"})
            raise


def data_parallel_trial(config: dict, plan: TrialPlan, workers: int, cpus: float, gpus: float) -> None:
    """Tune function that drives one TorchTrainer run; metrics reach Tune via TuneReportCallback."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from mcrlab.trials.data_parallel import make_trainer

    if _replay_if_finished(plan):
        return
    trial_id = tune.get_context().get_trial_id()
    loop_config = {"runs": [c.to_dict() for c in plan.configs(config)], "plan": plan, "trial_id": trial_id}
    trainer = make_trainer(_data_parallel_worker, loop_config, name=plan.train_run_name(trial_id, config),
                           storage_path=plan.storage_path, workers=workers, cpus_per_worker=cpus,
                           gpus_per_worker=gpus, metric=plan.metric, mode=plan.mode,
                           callbacks=[TuneReportCallback()])
    trainer.fit()


def _data_parallel_worker(config: dict) -> None:
    """Ray Train worker loop: the seeds of one trial, with in-trial early stopping when a board is set."""
    import ray

    from mcrlab.trials.data_parallel import local_checkpoint_dir, worker_report, worker_resume

    plan: TrialPlan = config["plan"]
    should_stop = None
    if plan.board:
        board = ray.get_actor(plan.board, namespace=NAMESPACE)
        trial_id = config["trial_id"]

        def should_stop(iteration: int, value: float) -> bool:
            # memoised per (trial, iteration) by the board: every rank gets the same answer
            return not ray.get(board.keep.remote(trial_id, iteration, value))

    with worker_resume() as resume_from:
        run_seeds([RunConfig.from_dict(r) for r in config["runs"]], metric=plan.metric, score=plan.score,
                  report=worker_report(), checkpoint_dir=local_checkpoint_dir(), resume_from=resume_from,
                  should_stop=should_stop, more=plan.more_objectives())


# --------------------------------------------------------------------------------------------------
# in-trial ASHA


class RungBoard:
    """ASHA's bookkeeping as a small Ray actor: trials report at rungs and learn whether to go on.

    Decisions are memoised per (trial, iteration), so all ranks of a data-parallel trial - and a trial
    re-run after a restart - get the same answer. The state is saved to ``path`` (JSON) after each
    rung entry, so a resumed sweep keeps comparing against the trials that ran before it.
    """

    def __init__(self, grace_period: int, reduction_factor: float, max_t: int, mode: str,
                 path: str | None = None):
        self.milestones = set(asha_milestones(grace_period, reduction_factor, max_t))
        self.milestones.discard(max_t)  # reaching the end is not a rung: the trial is finished anyway
        self.eta, self.mode, self.path = reduction_factor, mode, path
        self.rungs: dict[str, dict[str, float]] = {}
        self.decisions: dict[str, bool] = {}
        if path and os.path.isfile(path):
            saved = json.loads(Path(path).read_text())
            self.rungs, self.decisions = saved["rungs"], saved["decisions"]

    def keep(self, trial_id: str, iteration: int, value: float) -> bool:
        key = f"{trial_id}@{iteration}"
        if key in self.decisions:
            return self.decisions[key]
        decision = True
        if iteration in self.milestones:
            rung = self.rungs.setdefault(str(iteration), {})
            others = [v for t, v in rung.items() if t != trial_id]
            decision = asha_keeps(others, float(value), self.eta, self.mode)
            rung[trial_id] = float(value)
            self.decisions[key] = decision
            self._save()
        return decision

    def state(self) -> dict:
        return {"rungs": self.rungs, "decisions": self.decisions}

    def _save(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        Path(tmp).write_text(json.dumps(self.state()))
        os.replace(tmp, self.path)

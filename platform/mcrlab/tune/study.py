"""A sweep's study as a ``TrialPlan``: Optuna's sampled point -> one RunConfig per objective seed.

Each trial becomes an MLflow run ``trial-<id>`` under its study run, tagged with the sweep id, the study
(dataset) and the Tune trial id (its key tags: a resumed sweep reopens the same run), the config hash and the
dataset fingerprint; params are the resolved config (without the seed) and the objective's seeds.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mcrlab.config import RunConfig
from mcrlab.engine.pretrain import init_lineage
from mcrlab.tracking import TAG_PREFIX, lineage_tags
from mcrlab.trials.plan import RunIdentity, Scaling, TrialPlan
from mcrlab.tune.space import SearchSpace, trial_config

__all__ = ["StudyPlan", "scaling_of"]


def scaling_of(space: SearchSpace) -> Scaling:
    s = space.scaling
    return Scaling(workers=s.workers, cpus=s.cpus_per_worker, gpus=s.gpus_per_worker,
                   max_concurrent=s.max_concurrent)


@dataclass(frozen=True)
class StudyPlan(TrialPlan):
    """The trials of one study (one dataset) of a sweep."""

    space: SearchSpace
    dataset: str
    sweep_id: str
    storage_path: str = ""  # absolute; data-parallel Train runs are stored under it
    board: str | None = None  # name of the RungBoard actor (in-trial early stopping), if any
    study_run_id: str | None = None  # MLflow parent of the trial runs
    fingerprint: str = "unknown"
    finished_path: str = ""  # trials.finished record of this study: a trial found there is never re-trained

    @property
    def metric(self) -> str:  # type: ignore[override]
        return self.space.metric

    @property
    def mode(self) -> str:  # type: ignore[override]
        return self.space.mode

    @property
    def scaling(self) -> Scaling:  # type: ignore[override]
        return scaling_of(self.space)

    @property
    def group_id(self) -> str:  # type: ignore[override]
        return self.sweep_id

    def configs(self, point: dict[str, Any]) -> list[RunConfig]:
        return [trial_config(self.space, self.dataset, point, s) for s in self.space.objective.seed_list()]

    def score(self, values: Sequence[float]) -> float:
        return self.space.objective.score(values, self.space.mode)

    def more_objectives(self) -> list[tuple[str, Any]]:
        # each objective is aggregated over the seeds in its own direction (lcb: pessimistic per mode)
        return [(metric, functools.partial(self.space.objective.score, mode=mode))
                for metric, mode in self.space.objectives[1:]]

    def identity(self, trial_id: str, point: dict[str, Any]) -> RunIdentity:
        cfgs = self.configs(point)
        cfg = cfgs[0]
        tags = lineage_tags("trial", sweep_id=self.sweep_id, study=self.dataset, trial_id=trial_id,
                            config_hash=cfg.hash(), dataset_fingerprint=self.fingerprint,
                            backend="single-process" if self.space.scaling.workers == 1 else "data-parallel",
                            **init_lineage(cfg, self.fingerprint))
        params = {**{k: v for k, v in cfg.flat().items() if k != "train.seed"},
                  "objective.seeds": [c.train.seed for c in cfgs]}
        return RunIdentity(name=f"trial-{trial_id}", tags=tags,
                           key_tags=tuple(f"{TAG_PREFIX}{k}" for k in ("sweep_id", "study", "trial_id")),
                           parent_run_id=self.study_run_id, params=params,
                           artifacts={"config.yaml": cfg.to_dict(), "sampled.json": dict(point)})

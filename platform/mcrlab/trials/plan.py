"""What a group of trials shares, whoever runs them: the one interface between the trial layer and its users.

A ``TrialPlan`` turns a Tune trial's point (``trial.config``: Optuna's sampled values for a sweep, a cell
index for an ablation) into the ``RunConfig`` of each of its training seeds, scores the seeds' metric values,
and says how the trial's MLflow run is named, tagged and nested. Backends (``backends``) and the recorder
(``recorder``) only ever talk to a plan, so sweeps (``mcrlab.tune.study.StudyPlan``) and ablations
(``mcrlab.ablate.runner.CellPlan``) run through the same trainables, resources, recorder and resume logic.

Plans are pickled into every trial process (``tune.with_parameters``) and with the Tuner's state: they hold
plain data only (no clients, no open files).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mcrlab.config import RunConfig

__all__ = ["Scaling", "RunIdentity", "TrialPlan"]


@dataclass(frozen=True)
class Scaling:
    """Resources of one trial: ``workers`` Ray Train workers (1 = the single-process backend), each with
    ``cpus`` CPUs and ``gpus`` GPUs (a fraction < 1 packs several trials on one GPU)."""

    workers: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    max_concurrent: int = 0  # 0 = as many as the cluster fits


@dataclass(frozen=True)
class RunIdentity:
    """How one trial appears in MLflow.

    ``key_tags`` name the tags that identify the run: a trial restarted after a lost worker or a resumed
    driver finds its run by them and reopens it instead of writing a duplicate.
    """

    name: str
    tags: dict[str, str]
    key_tags: tuple[str, ...]
    parent_run_id: str | None
    params: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)  # file name -> JSON/YAML-able object


class TrialPlan:
    """Base class: subclasses set the fields below and implement ``configs`` and ``identity``."""

    metric: str = "val/acc"  # what fit reports and the trial is ranked by
    mode: str = "max"
    scaling: Scaling = Scaling()
    storage_path: str = ""  # absolute folder for data-parallel Train runs (their checkpoints)
    group_id: str = ""  # sweep or ablation id: with the trial id it names Train runs (resume keys)
    board: str | None = None  # name of the in-trial ASHA actor, if any (data-parallel backend)
    finished_path: str = ""  # the study's finished-trial record (trials.finished), if any: never re-trained

    def configs(self, point: dict[str, Any]) -> list[RunConfig]:
        """One validated RunConfig per training seed of the trial at ``point``."""
        raise NotImplementedError

    def score(self, values: Sequence[float]) -> float:
        """The trial's score from its seeds' metric values (default: their mean)."""
        vals = [float(v) for v in values]
        return sum(vals) / len(vals)

    def more_objectives(self) -> list[tuple[str, Any]]:
        """The objectives after the first of a multi-objective plan: ``(metric, score(values) -> float)``
        each; reported as ``objective/1``, ... (``seeds.run_seeds``). Default: none."""
        return []

    def identity(self, trial_id: str, point: dict[str, Any]) -> RunIdentity:
        """The trial's MLflow run: name, tags, key tags, parent, params and artifacts."""
        raise NotImplementedError

    def train_run_name(self, trial_id: str, point: dict[str, Any]) -> str:
        """The Ray Train run name of a data-parallel trial: its resume key (same trial, same name)."""
        return f"{self.group_id}-{trial_id}"

    def label(self, trial_id: str, point: dict[str, Any]) -> str:
        """A short human name for progress lines (default: the trial id)."""
        return trial_id

    def max_iterations(self, point: dict[str, Any]) -> int:
        """Reports of the trial at ``point`` when it runs to the end (epochs summed over its seeds): a
        trial that ended with fewer was stopped early."""
        return sum(c.train.epochs for c in self.configs(point))

"""The record of a study's finished trials: what a resumed driver trusts over Tune's experiment snapshot.

Tune saves its experiment state (which trials are TERMINATED) at most every 10 s, and more rarely on a slow
disk (``_ExperimentCheckpointManager``: the period grows to 19 times the time a save took). A driver killed
between a trial's end and the next save leaves a snapshot in which that trial is still RUNNING, with an early
checkpoint or none: ``Tuner.restore(resume_unfinished=True)`` then trains it again, from epoch 1 when the
snapshot predates its first checkpoint.

So the driver's recorder writes each trial's final result here the moment Tune reports it complete
(``record_finished``: one JSON file per study, replaced atomically, fsynced), and the trial functions
(``mcrlab.trials.backends``) look it up before they train (``finished_result``): a trial found here reports its
recorded final result again and returns at once, without training. The file is JSON (never unpickled) in the
sweep's private folder; a record that cannot be read is treated as empty (the trial then runs, as before).

Tune's snapshot may also predate a trial altogether: one the searcher handed out, and that finished, after the
last save. The restored experiment never hears of it, and its restored searcher would hand that slot out again
(to the same point: the sampler's random state is restored too). So each entry also keeps the trial's point
(``config``) and the name of the Tune experiment that ran it (``experiment``): the searcher of that experiment
counts its finished trials it does not know (``mcrlab.tune.searcher``), and the study's summary counts them
with the trials Tune returns (``finished_trials``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["record_finished", "finished_result", "finished_ids", "finished_trials", "replayable", "FinishedTrial"]

# an entry's keys besides the result; never reported to Tune again
_CONFIG, _EXPERIMENT = "mcrlab.config", "mcrlab.experiment"

# Tune fills these in itself; a result reported again must not carry the old values
_TUNE_KEYS = {"training_iteration", "time_total_s", "time_this_iter_s", "time_since_restore", "timestamp",
              "date", "pid", "hostname", "node_ip", "done", "iterations_since_restore",
              "timesteps_since_restore", "timesteps_total", "episodes_total", "trial_id", "experiment_id",
              "experiment_tag", "config", "checkpoint_dir_name", "should_checkpoint"}


def replayable(result: dict[str, Any]) -> dict[str, Any]:
    """The part of a Tune result that a trial can report again: the trial's own scalar metrics."""
    out: dict[str, Any] = {}
    for key, value in result.items():
        if key in _TUNE_KEYS or not isinstance(key, str):
            continue
        if isinstance(value, (bool, str)) or (isinstance(value, (int, float)) and math.isfinite(value)):
            out[key] = value
    return out


def _read(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def finished_ids(path: str | os.PathLike | None) -> set[str]:
    """The trial ids recorded as finished in ``path`` (empty without a path or a readable record)."""
    return set(_read(path)) if path else set()


@dataclass(frozen=True)
class FinishedTrial:
    """One entry of the record: the trial's final result (``replayable`` part), its point (None in records of
    an older version) and the Tune experiment that ran it (None: unknown)."""

    result: dict[str, Any]
    config: dict[str, Any] | None
    experiment: str | None


def finished_trials(path: str | os.PathLike | None) -> dict[str, FinishedTrial]:
    """Every trial recorded as finished in ``path``: trial id -> its entry (empty without a readable record)."""
    out: dict[str, FinishedTrial] = {}
    for tid, entry in (_read(path) if path else {}).items():
        if not isinstance(entry, dict) or not entry:
            continue
        config, experiment = entry.get(_CONFIG), entry.get(_EXPERIMENT)
        result = {k: v for k, v in entry.items() if k not in (_CONFIG, _EXPERIMENT)}
        out[tid] = FinishedTrial(result, config if isinstance(config, dict) else None,
                                 experiment if isinstance(experiment, str) else None)
    return out


def finished_result(path: str | os.PathLike | None, trial_id: str) -> dict[str, Any] | None:
    """The recorded final result of ``trial_id``, or None when it is not recorded as finished."""
    found = finished_trials(path).get(trial_id)
    return dict(found.result) if found is not None and found.result else None


def record_finished(path: str | os.PathLike, trial_id: str, result: dict[str, Any],
                    config: dict[str, Any] | None = None, experiment: str | None = None) -> None:
    """Add ``trial_id`` with its final ``result`` (``replayable`` part), its point ``config`` (kept when it is
    JSON) and the name of the Tune ``experiment`` that ran it to the record at ``path``.

    Read, update, write to a temporary sibling, fsync, rename: a driver killed at any point leaves the old
    record or the new one, never half a file. The driver is the only writer. Raises OSError (a full disk):
    the caller warns and goes on, the trial is then only as safe as Tune's snapshot.
    """
    path = Path(path)
    data = _read(path)
    entry: dict[str, Any] = replayable(result)
    if config is not None:
        # a point that is not plain JSON is left out: the trial is counted, never the study's best
        with contextlib.suppress(TypeError, ValueError):
            entry[_CONFIG] = json.loads(json.dumps(dict(config), allow_nan=False))
    if experiment:
        entry[_EXPERIMENT] = experiment
    data[trial_id] = entry
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

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
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["record_finished", "finished_result", "finished_ids", "replayable"]

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


def finished_result(path: str | os.PathLike | None, trial_id: str) -> dict[str, Any] | None:
    """The recorded final result of ``trial_id``, or None when it is not recorded as finished."""
    if not path:
        return None
    found = _read(path).get(trial_id)
    return dict(found) if isinstance(found, dict) and found else None


def record_finished(path: str | os.PathLike, trial_id: str, result: dict[str, Any]) -> None:
    """Add ``trial_id`` with its final ``result`` (``replayable`` part) to the record at ``path``.

    Read, update, write to a temporary sibling, fsync, rename: a driver killed at any point leaves the old
    record or the new one, never half a file. The driver is the only writer. Raises OSError (a full disk):
    the caller warns and goes on, the trial is then only as safe as Tune's snapshot.
    """
    path = Path(path)
    data = _read(path)
    data[trial_id] = replayable(result)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=1, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

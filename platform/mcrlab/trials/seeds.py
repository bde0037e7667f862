"""What one sweep trial does, whichever backend runs it: fit once per objective seed, report every epoch.

``run_seeds`` is shared by the single-process backend (called in the Tune function) and the
data-parallel backend (called on every Ray Train worker). It imports no Ray: the backend passes
``report(metrics, checkpoint_dir)`` and the checkpoint directory to resume from.

Each report carries fit's metrics plus
- ``objective``: the trial's score so far - ``Objective.score`` over every seed's latest value of the
  space's metric (finished seeds' final values, the running seed's current one). With one seed it is
  just the metric. The searcher and the schedulers rank trials by it; the last report holds the score.
- ``objective/0``, ``objective/1``, ... in a multi-objective search (``more`` objectives given): each
  objective's score as above (``objective/0`` = ``objective``). Each is read from the same report, so a
  trial's values are those of its last report, as for one objective.
- ``seed``, ``seed_index`` and ``trial_iteration`` (epochs done over all seeds; the ASHA clock).
Resume state (seed index, finished seeds' values, iteration) is written as ``trial_state.json`` into
fit's checkpoint directory before each report, so a checkpoint says where in the seed loop it was.

Early stopping inside the trial (used by the data-parallel backend, where Tune's scheduler must not
kill the trial, see architecture.md): ``should_stop(iteration, objective)`` is asked after each report;
True ends the trial cleanly, so Ray Train shuts its workers and placement group down itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcrlab.config import RunConfig

if TYPE_CHECKING:  # fit imports torch; this module is imported by the CLI's help
    from mcrlab.engine.fit import ReportFn

__all__ = ["STATE_FILE", "objective_key", "run_seeds", "asha_milestones", "asha_keeps", "read_state"]

STATE_FILE = "trial_state.json"


class _StopTrial(Exception):
    """Raised from inside ``report`` to leave fit's loop after an early-stop decision."""


def objective_key(index: int) -> str:
    """The result key of objective ``index`` of a multi-objective trial (``objective/0`` = ``objective``)."""
    return f"objective/{index}"


def read_state(checkpoint_dir: str | Path | None) -> dict[str, Any] | None:
    if checkpoint_dir is None:
        return None
    path = Path(checkpoint_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def run_seeds(cfgs: Sequence[RunConfig], *, metric: str, score: Callable[[Sequence[float]], float],
              report: ReportFn, checkpoint_dir: str | None = None, resume_from: str | None = None,
              should_stop: Callable[[int, float], bool] | None = None,
              fit: Callable[..., dict] | None = None,
              more: Sequence[tuple[str, Callable[[Sequence[float]], float]]] = ()) -> dict[str, Any]:
    """Train ``cfgs`` (one per objective seed, same data) in order; return the last report's metrics.

    ``score(values) -> float`` aggregates per-seed values of ``metric``. ``more``: the further objectives
    of a multi-objective trial, ``(metric, score)`` each. ``resume_from`` is a checkpoint directory written
    by an earlier call (it holds fit's state and ``trial_state.json``).
    """
    if fit is None:
        from mcrlab.engine.fit import fit as engine_fit

        fit = engine_fit
    from mcrlab.data import load_dataset

    state = read_state(resume_from) or {"seed_index": 0, "done": [], "iteration": 0}
    done: list[float] = list(state["done"])
    done_more: list[list[float]] = [list(v) for v in state.get("done_more", [[] for _ in more])]
    if len(done_more) != len(more):  # a checkpoint of another space; the backends never mix them
        raise ValueError(f"trial state has {len(done_more)} further objectives, the plan {len(more)}")

    def scores(metrics: dict[str, Any] | None) -> dict[str, float]:
        """objective/k of every objective: finished seeds' values plus this report's (None: finished only)."""
        if not more:
            return {}
        out = {}
        for k, (name, fn) in enumerate([(metric, score), *more]):
            prior = done if k == 0 else done_more[k - 1]
            vals = prior if metrics is None else [*prior, float(metrics.get(name, math.nan))]
            out[objective_key(k)] = fn(vals)
        return out
    iteration = int(state["iteration"])
    dataset = load_dataset(cfgs[0].data)  # the seeds differ in train.seed only: load the data once
    last: dict[str, Any] = {}

    for index in range(int(state["seed_index"]), len(cfgs)):
        cfg = cfgs[index]
        resume = resume_from if (resume_from is not None and index == state["seed_index"]) else None

        def seed_report(metrics: dict[str, Any], ckpt: str | None, _index: int = index,
                        _seed: int = cfg.train.seed) -> None:
            nonlocal iteration, last
            iteration += 1
            value = float(metrics.get(metric, math.nan))
            out = {**metrics, "objective": score([*done, value]), **scores(metrics), "seed": _seed,
                   "seed_index": _index, "trial_iteration": iteration}
            if ckpt is not None and Path(ckpt).is_dir():
                state_now = {"seed_index": _index, "done": done, "iteration": iteration,
                             **({"done_more": done_more} if more else {})}
                (Path(ckpt) / STATE_FILE).write_text(json.dumps(state_now))
            report(out, ckpt)
            last = out
            if should_stop is not None and should_stop(iteration, out["objective"]):
                raise _StopTrial

        try:
            final = fit(cfg, seed_report, checkpoint_dir=checkpoint_dir, resume_from=resume, dataset=dataset)
        except _StopTrial:
            return {**last, "early_stopped": 1.0}
        done.append(float(final.get(metric, last.get(metric, math.nan))))
        for k, (name, _) in enumerate(more):
            done_more[k].append(float(final.get(name, last.get(name, math.nan))))
    if last and done:
        last = {**last, "objective": score(done), **scores(None)}
    return last


# --------------------------------------------------------------------------------------------------
# asynchronous successive halving, as a pure rule (Ray Tune's ASHAScheduler applies the same one)


def asha_milestones(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """Rungs ``grace * eta^k <= max_t``, k = 0, 1, ... (iterations at which trials are compared)."""
    out: list[int] = []
    k = 0
    while True:
        m = int(round(grace_period * reduction_factor ** k))
        if m > max_t:
            return out
        if not out or m > out[-1]:
            out.append(m)
        k += 1


def asha_keeps(recorded: Sequence[float], value: float, reduction_factor: float, mode: str) -> bool:
    """Whether a trial reaching a rung with ``value`` continues, given the values ``recorded`` there before.

    It continues unless it is below the (1 - 1/eta) quantile of the earlier trials (above, for mode
    min); the first trial at a rung always continues. NaN values are never kept.
    """
    if not math.isfinite(value):
        return False
    vals = sorted((v if mode == "max" else -v) for v in recorded if math.isfinite(v))
    if not vals:
        return True
    cutoff = _percentile(vals, 1.0 - 1.0 / reduction_factor)
    return (value if mode == "max" else -value) >= cutoff


def _percentile(sorted_vals: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), q in [0, 1]."""
    pos = q * (len(sorted_vals) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)

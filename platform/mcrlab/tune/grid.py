"""The grid sampler of a sweep (``sampler: grid``), apart because it imports Optuna (space.py imports it lazily)."""

from __future__ import annotations

import contextlib
from typing import Any

import optuna

__all__ = ["QuietGridSampler"]


class QuietGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler without its ``study.stop()`` once the grid is exhausted.

    That call is meant for ``study.optimize`` and raises RuntimeError under ask-and-tell (Ray Tune's
    searcher), after the trial's state is stored; the sweep's num_samples, never more than the grid, ends
    the study instead.
    """

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        with contextlib.suppress(RuntimeError):
            super().after_trial(study, trial, state, values)

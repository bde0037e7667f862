"""A sweep's time budget (``mcrlab sweep --time-budget 2h``): a deadline that lives in the driver process.

Tune pickles a run's stopper with the experiment, and its own ``TimeoutStopper`` keeps the budget it had left,
so a sweep stopped by its budget would stop again at once when resumed. ``tune.searcher.BudgetStopper``
pickles only the sweep id; the deadline is looked up in this process's registry, set by ``run_sweep`` from
the command running now. A resumed sweep therefore gets the budget its own command gives (none: no limit).

When the deadline passes, Tune ends the experiment: running trials are stopped (Tune calls no completion hook
for them) and no new trial starts. The runner then records those trials (``runner._record_budget_stops``).
This module imports no Ray (the CLI parses ``--time-budget`` with it).
"""

from __future__ import annotations

import re
import time

from mcrlab.config import ConfigError

__all__ = ["parse_duration", "set_deadline", "expired", "fired", "mark_fired", "format_duration"]

_DEADLINES: dict[str, float] = {}  # sweep id -> time.time() deadline, for this driver process
_FIRED: set[str] = set()  # sweep ids whose stopper ended an experiment in this process
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_BUDGET_S = 366 * 24 * 3600.0


def parse_duration(text: str, flag: str = "--time-budget") -> float:
    """``90s``, ``30m``, ``2h``, ``1.5h`` or plain seconds (``600``) -> seconds (> 0, at most a year)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text))
    if m is None:
        raise ConfigError(f"{flag}: '{str(text)[:40]}' is not a duration like 90s, 30m or 2h")
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not 0 < seconds <= MAX_BUDGET_S:
        raise ConfigError(f"{flag}: must be more than 0 and at most 366 days, got {text}")
    return seconds


def format_duration(seconds: float) -> str:
    """``7200`` -> ``2h``, ``90`` -> ``1m30s``: the budget as the summary shows it."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (sec, "s")) if v) or "0s"


def set_deadline(sweep_id: str, budget_s: float | None) -> None:
    """Start (or, with None, clear) the budget of ``sweep_id`` in this driver process."""
    _FIRED.discard(sweep_id)
    if budget_s is None:
        _DEADLINES.pop(sweep_id, None)
    else:
        _DEADLINES[sweep_id] = time.time() + budget_s


def expired(sweep_id: str) -> bool:
    deadline = _DEADLINES.get(sweep_id)
    return deadline is not None and time.time() >= deadline


def mark_fired(sweep_id: str) -> None:
    _FIRED.add(sweep_id)


def fired(sweep_id: str) -> bool:
    """Whether the budget of ``sweep_id`` has run out during this command (a stopper saw it, or it is past)."""
    return sweep_id in _FIRED or expired(sweep_id)


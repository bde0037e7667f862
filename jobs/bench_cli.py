# OMP_NUM_THREADS=1 python jobs/bench_cli.py            (about 30 s: 5 timed runs of every --help)
# OMP_NUM_THREADS=1 python jobs/bench_cli.py --smoke    (one run each)
"""Start-up time of the command line: ``mcrlab --help`` and ``mcrlab CMD --help``, median wall time of fresh
processes, printed as JSON (``{"mcrlab --help": seconds, ...}``) with the load average.

The target is under 1 s for each; ``tests/test_architecture.py`` checks what keeps it there (no torch, Ray,
MLflow, Optuna or pandas imported to build the parser), this script measures the time itself.
``train --help`` lists every method's keys, so it imports the method registry (torch) and is reported apart.

Also measured: ``unreachable tracking server``, the time ``mcrlab sweep`` takes to refuse a tracking URI on a
closed port (exit 2 before Ray or MLflow start; the tests assert the behaviour, this is its speed).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ["", "sweep", "check", "ablate", "compare", "data", "submit", "cluster", "reproduce", "report",
            "schema", "train"]


def time_help(command: str, runs: int) -> float:
    exe = Path(sys.executable).parent / "mcrlab"
    argv = [str(exe), *([command] if command else []), "--help"]
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_unreachable(runs: int) -> float:
    """Median time of ``mcrlab sweep SPACE --tracking-uri http://127.0.0.1:9`` to exit 2 (nothing listens)."""
    import tempfile

    exe = Path(sys.executable).parent / "mcrlab"
    space = Path(__file__).resolve().parent.parent / "search_spaces" / "default.yaml"
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            done = subprocess.run([str(exe), "sweep", str(space), "--tracking-uri", "http://127.0.0.1:9",
                                   "--storage", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - t0)
        if done.returncode != 2:
            raise SystemExit(f"bench_cli: expected exit 2 for an unreachable tracking server, got {done.returncode}")
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="one run per command")
    ap.add_argument("--json", metavar="PATH", help="also write the figures there")
    a = ap.parse_args()
    runs = 1 if a.smoke else 5
    out = {f"mcrlab {c + ' ' if c else ''}--help": round(time_help(c, runs), 3) for c in COMMANDS}
    out["unreachable tracking server"] = round(time_unreachable(runs), 3)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    out["runs_per_command"] = runs
    text = json.dumps(out, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

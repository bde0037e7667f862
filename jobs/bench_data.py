# OMP_NUM_THREADS=1 python jobs/bench_data.py            (seconds: 5 generations of each synthetic preset)
# OMP_NUM_THREADS=1 python jobs/bench_data.py --smoke    (one generation each)
"""Cost of making synthetic data: CPU seconds per ``make_synthetic(preset, seed)`` (after the first call, which
also computes and caches the preset's ceilings), printed as JSON. It was a timed test once (< 0.2 s per
dataset for ``competition``); speed lives here now, as a figure, not as a test that fails under load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from mcrlab.data.synthetic import PRESETS, make_synthetic


def seconds_per_dataset(preset: str, runs: int) -> float:
    make_synthetic(preset, seed=0)  # ceilings computed and cached on the first call
    t0 = time.process_time()
    for seed in range(1, runs + 1):
        make_synthetic(preset, seed=seed)
    return (time.process_time() - t0) / runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="one generation per preset")
    a = ap.parse_args()
    runs = 1 if a.smoke else 5
    print(json.dumps({f"synthetic_{p}_s_per_dataset": round(seconds_per_dataset(p, runs), 4) for p in PRESETS},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

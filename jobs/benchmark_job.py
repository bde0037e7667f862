r"""A benchmark as a Ray job, so it measures the cluster's hardware (e.g. a GPU node) rather than a laptop's.

    ray job submit --address "$RAY_API_SERVER_ADDRESS" --runtime-env jobs/runtime_env.yaml \
        --entrypoint-num-gpus 1 -- python jobs/benchmark_job.py step --device cuda

    mcrlab submit benchmark --entrypoint-num-gpus 1 step --device cuda   # the same

BENCHMARK is one of the names below; every further argument goes to that script unchanged
(`python jobs/benchmark_job.py step --help` shows its options).
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "step": "bench_step.py",                      # time per training step, per method
    "sweep-overhead": "bench_sweep_overhead.py",  # Ray Tune per-trial overhead against plain fit()
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nbenchmarks:")
        for name, script in BENCHMARKS.items():
            print(f"  {name:<16} jobs/{script}" + ("" if (HERE / script).is_file() else "  (not in this checkout)"))
        return 0
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS or not (HERE / BENCHMARKS[name]).is_file():
        known = [n for n, s in BENCHMARKS.items() if (HERE / s).is_file()]
        print(f"benchmark_job: error: unknown benchmark '{name}'; available: {', '.join(known) or 'none'}",
              file=sys.stderr)
        return 2
    script = HERE / BENCHMARKS[name]
    sys.argv = [str(script), *rest]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:  # the script's own exit status is the job's
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

# python jobs/mutation.py                       (mutmut over mcr/ and methods/mcr.py; resumable; ~1 h on 2 cores)
# python jobs/mutation.py --report-only         (score and survivors of the last run, no testing)
# python jobs/mutation.py '*x__core_forward__*'  (only the mutants whose names match these globs)
"""Mutation testing of the MCR maths (``mcrlab/mcr/``) and its plug-in (``mcrlab/methods/mcr.py``) with mutmut.

mutmut 3 imports the mutated code only from ``./``, ``src/`` or ``source/``, and this repository keeps the
package under ``platform/``. So the run happens in a work folder (default ``build/mutation``): the tracked
``platform/``, ``tests/`` and ``pyproject.toml`` are copied there with ``platform/`` renamed ``src/`` and a
``[tool.mutmut]`` section appended; nothing in the repository changes. The work folder is kept, so a second
run re-tests only the functions that changed since (mutmut's own bookkeeping).

Only the tests of these modules run against each mutant (tests/mcr/, tests/methods/test_mcr_method.py,
``-m "not slow"``). Printed at the end and written to ``<work>/mutation-summary.json``: the counts per status,
the score killed / (killed + survived + timeout + suspicious), and the name of every surviving mutant (see its
diff with ``cd build/mutation && mutmut show NAME``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTATE = ["src/mcrlab/mcr/*", "src/mcrlab/methods/mcr.py"]
TESTS = ["tests/mcr/", "tests/methods/test_mcr_method.py"]
CONFIG = f"""

[tool.mutmut]
source_paths = ["src/"]
only_mutate = {json.dumps(MUTATE)}
pytest_add_cli_args_test_selection = {json.dumps(TESTS)}
pytest_add_cli_args = ["-m", "not slow", "-p", "no:cacheprovider", "-x", "-q"]
"""


def prepare(work: Path) -> None:
    """Copy the tracked sources into ``work`` in mutmut's layout (platform/ -> src/)."""
    files = subprocess.run(["git", "ls-files", "platform", "tests", "pyproject.toml"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        dest = work / ("src" + rel[len("platform"):] if rel.startswith("platform/") else rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists() or dest.read_bytes() != (ROOT / rel).read_bytes():
            shutil.copy2(ROOT / rel, dest)  # unchanged files keep their mtime: mutmut re-tests only changes
    (work / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + CONFIG)


def mutmut(work: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mutmut")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([str(exe), *args], cwd=work, env=env, text=True, capture_output=True)


def summary(work: Path) -> dict:
    res = mutmut(work, "results", "--all", "true")
    status = {}
    for line in res.stdout.splitlines():
        name, _, st = line.strip().rpartition(": ")
        if name:
            status[name] = st
    counts = Counter(status.values())
    tested = sum(counts[k] for k in ("killed", "survived", "timeout", "suspicious"))
    return {"counts": dict(counts), "score": counts["killed"] / tested if tested else float("nan"),
            "survived": sorted(n for n, s in status.items() if s == "survived"),
            "no_tests": sorted(n for n, s in status.items() if s == "no tests")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=ROOT / "build" / "mutation", help="work folder (kept)")
    ap.add_argument("--max-children", type=int, default=2, help="parallel test processes")
    ap.add_argument("--report-only", action="store_true", help="summarise the last run without testing")
    ap.add_argument("--retest-survivors", action="store_true",
                    help="re-run only the mutants that survived the last run (after adding tests)")
    ap.add_argument("only", nargs="*", metavar="GLOB",
                    help="test only the mutants whose names match (fnmatch, e.g. 'mcrlab.mcr.game.x_*')")
    args = ap.parse_args(argv)
    if shutil.which("mutmut", path=str(Path(sys.executable).parent)) is None:
        print("mutation: mutmut is not installed in this environment (pip install -e '.[dev]')", file=sys.stderr)
        return 2
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        names: list[str] = []
        last = args.work / "mutation-summary.json"
        if args.retest_survivors and last.is_file():
            names = json.loads(last.read_text())["survived"]
        names += args.only
        prepare(args.work)
        run = mutmut(args.work, "run", "--max-children", str(args.max_children), *names)
        if run.returncode != 0:
            print(run.stdout[-3000:], run.stderr[-3000:], sep="\n", file=sys.stderr)
            return 1
    out = summary(args.work)
    (args.work / "mutation-summary.json").write_text(json.dumps(out, indent=1))
    print(f"mutants: {out['counts']}")
    print(f"score (killed / tested): {out['score']:.3f}")
    print("survivors:", *out["survived"], sep="\n  ")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

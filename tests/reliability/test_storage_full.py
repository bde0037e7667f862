"""A sweep's disk fills up in the middle of a study; after space is freed, ``--resume`` runs only what is missing.

A real full disk: a 48 MiB tmpfs holds ``--storage`` (Tune's experiment, Optuna's study and the default MLflow
store), and the test fills it with a ballast file once the first trial has finished. Mounting needs root (or
CAP_SYS_ADMIN): without it the test is skipped and says so (the helpers it relies on are tested without a
mount in tests/trials/test_fault_helpers.py).

Before the fix the sweep burned every retry of the running trial on ENOSPC, waited two minutes for MLflow,
ended in a traceback, and its half-written Tune state was refused by ``--resume`` as unsigned. Now: exit 1 and
one final line that names the full disk and the resume command; the resume ends the study with exactly the
requested trials, the trial finished before the fill is not trained again, and no metric point is doubled.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mcrlab.tracking import find_runs
from mcrlab.tune.runner import run_sweep
from mcrlab.tune.space import load_space

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS, TRIALS = 6, 2
BASE = {"data": {"n_train": 4096}, "model": {"hidden": 8, "latent": 4, "depth": 1}, "method": {"name": "joint"},
        "train": {"epochs": EPOCHS, "batch_size": 32, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}}
SPACE = {"name": "fulldisk", "datasets": ["synthetic:competition"], "base": BASE,
         "sampler": {"name": "tpe", "seed": 3}, "num_samples": TRIALS,
         "scaling": {"workers": 1, "cpus_per_worker": 1, "max_concurrent": 1},
         "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}}


@contextlib.contextmanager
def small_disk(path: Path, size: str = "48m"):
    path.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs (a real small disk) needs root or CAP_SYS_ADMIN")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: Path) -> Path:
    ballast = disk / f"ballast-{uuid.uuid4().hex}"
    with contextlib.suppress(OSError), open(ballast, "wb") as f:  # until ENOSPC (closing may fail too)
        while True:
            f.write(b"\0" * (1 << 20))
            f.flush()
    return ballast


def _checkpoints(exp: Path, trial_id: str) -> dict[str, int]:
    """name -> modification time (ns) of each persisted checkpoint: a trial trained again rewrites them."""
    folder = next(d for d in exp.iterdir() if d.is_dir() and f"_{trial_id}_" in d.name)
    return {d.name: max(f.stat().st_mtime_ns for f in d.iterdir()) for d in folder.glob("checkpoint_*")}


def _duplicate_points(db: Path) -> list:
    with contextlib.closing(sqlite3.connect(db)) as con:
        return con.execute("select run_uuid, key, step, count(*) from metrics group by run_uuid, key, step "
                           "having count(*) > 1").fetchall()


def _fill_once_one_finished(argv: list[str], env: dict, cwd: Path, disk: Path, finished) -> tuple:
    """Run the CLI with ``argv``; fill ``disk`` as soon as ``finished()`` (what has finished, read from the
    store) is non-empty. Returns (ballast file, what had finished then, stderr lines, exit code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "mcrlab.cli.app", *argv], env=env, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    ballast, done = None, None
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(Exception):  # the store may not exist yet, or be mid-migration
                if finished():
                    ballast = _fill(disk)
                    break
            time.sleep(0.25)
        assert ballast is not None, "nothing finished before the deadline (or the command ended first)"
        done = finished()
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    return ballast, done, [ln for ln in err.splitlines() if ln.strip()], proc.returncode, err


# two studies at once (scaling.concurrent_studies): the full disk is seen in a study's thread, where Tune has
# no stop handler of its own (SIGUSR1 there would have killed the driver); every study stops and resumes
CONCURRENT = {**SPACE, "datasets": ["synthetic:competition", "synthetic:balanced"],
              "scaling": {**SPACE["scaling"], "concurrent_studies": 2}}


@pytest.mark.parametrize("space", [SPACE, CONCURRENT], ids=["one-study", "two-studies-at-once"])
def test_full_disk_stops_the_sweep_with_one_line_and_resume_runs_only_what_is_missing(ray_local, tmp_path, space):
    datasets = space["datasets"]
    with small_disk(tmp_path / "disk") as disk:
        space_file = tmp_path / "fulldisk.yaml"
        space_file.write_text(yaml.safe_dump(space))
        runs = disk / "runs"
        uri = f"sqlite:///{runs / 'mlflow.db'}"
        env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "OMP_NUM_THREADS": "1",
               "RAY_AUTH_MODE": "disabled"}
        env.pop("MLFLOW_TRACKING_URI", None)

        def finished_trials() -> dict:
            if not any(runs.glob("sweeps/*/sweep.json")):
                return {}
            return {r["tags"]["mcrlab.trial_id"]: r for r in find_runs(uri, kind="trial") if r["status"] == "FINISHED"}

        ballast, finished, lines, rc, err = _fill_once_one_finished(
            ["sweep", str(space_file), "--storage", str(runs)], env, tmp_path, disk, finished_trials)
        assert len(finished) < TRIALS * len(datasets), "the disk filled only after the last trial"
        assert rc == 1, err[-3000:]
        assert lines[-1].startswith("mcrlab: error: sweep ") and "a disk is full" in lines[-1], lines[-5:]
        assert "--resume" in lines[-1] and str(runs) in lines[-1]
        assert sum(ln.startswith("mcrlab: error:") for ln in lines) == 1
        assert not lines[-1].startswith("Traceback") and "Traceback" not in "\n".join(lines[-3:])
        assert not list(runs.glob("sweeps/*/.reserve"))  # the reserve is not left behind

        ballast.unlink()  # space is back
        sweep_dir = next(runs.glob("sweeps/*/sweep.json")).parent
        exps = [sweep_dir / "ray" / d.replace(":", "-") for d in datasets]

        def checkpoints(tid: str) -> dict[str, int]:
            return next(_checkpoints(exp, tid) for exp in exps if any(f"_{tid}_" in p.name for p in exp.iterdir()))

        ckpts = {tid: checkpoints(tid) for tid in finished}
        assert all(len(c) == EPOCHS for c in ckpts.values()), ckpts
        result = run_sweep(load_space(space_file), storage_path=runs, resume=True, progress=False)
        assert list(result.studies) == datasets
        for study in result.studies.values():
            assert study.num_trials == TRIALS and study.num_errors == 0
            ostudy = optuna.load_study(study_name=study.optuna_study, storage=result.optuna_storage)
            states = [t.state for t in ostudy.trials]
            # no study re-run: TRIALS complete. A trial the searcher handed out as the disk filled can be missing
            # from the study's last Tune snapshot (Tune's own save of it hit the full disk first): the resume
            # then tops the study up, and the lost trial, which never reported, is told FAIL (seen once in CI
            # with two studies at once). Nothing else may be left over.
            assert states.count(optuna.trial.TrialState.COMPLETE) == TRIALS, states
            assert all(s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL) for s in states), states
        runs_all = find_runs(uri, kind="trial")
        trials = [r for r in runs_all if r["status"] == "FINISHED"]
        assert len(trials) == TRIALS * len(datasets), [(r["status"], r["tags"]) for r in runs_all]
        lost = [r for r in runs_all if r["status"] != "FINISHED"]  # such a lost trial's run, if it had one
        assert all(r["status"] == "KILLED" and r["tags"].get("mcrlab.stale") == "true" for r in lost), lost
        client = MlflowClient(uri)
        for r in trials:
            steps = [m.step for m in client.get_metric_history(r["run_id"], "objective")]
            assert steps == list(range(1, EPOCHS + 1)), (r["tags"]["mcrlab.trial_id"], steps)
        assert _duplicate_points(runs / "mlflow.db") == []  # trial, study and sweep runs alike
        for tid in finished:  # trained once, before the disk filled: no checkpoint rewritten by the resume
            assert checkpoints(tid) == ckpts[tid], tid


SPEC = {"name": "fulldisk-abl", "experiment": "fulldisk", "base": BASE, "arms": {"mcr": {"method.name": "mcr"}},
        "datasets": ["synthetic:competition"], "seeds": [0, 1], "resources": {"max_concurrent": 1}}


def test_full_disk_stops_an_ablation_with_one_line_and_resume_runs_only_missing_cells(ray_local, tmp_path):
    from mcrlab.ablate.runner import run_ablation
    from mcrlab.ablate.spec import load_spec

    with small_disk(tmp_path / "disk") as disk:
        spec_file = tmp_path / "fulldisk_abl.yaml"
        spec_file.write_text(yaml.safe_dump(SPEC))
        runs = disk / "runs"
        runs.mkdir()
        uri = f"sqlite:///{runs / 'mlflow.db'}"
        env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "OMP_NUM_THREADS": "1",
               "RAY_AUTH_MODE": "disabled", "MLFLOW_TRACKING_URI": uri}

        def finished_cells() -> set:
            return {r["run_id"] for r in find_runs(uri, kind="cell") if r["status"] == "FINISHED"}

        ballast, finished, lines, rc, err = _fill_once_one_finished(["ablate", str(spec_file)], env, runs, disk,
                                                                    finished_cells)
        assert len(finished) < 4, "the disk filled only after the last cell"
        assert rc == 1, err[-3000:]
        assert lines[-1].startswith("mcrlab: error: ablation fulldisk-abl stopped: a disk is full"), lines[-5:]
        assert "--resume" in lines[-1] and sum(ln.startswith("mcrlab: error:") for ln in lines) == 1
        assert not list((runs / "runs").glob("ablations/*/.reserve"))

        ballast.unlink()
        cwd = os.getcwd()
        os.chdir(runs)  # the ablation's default storage folder is ./runs relative to where it ran
        try:
            outcome = run_ablation(load_spec(spec_file), uri, resume=True, storage_path="runs")
        finally:
            os.chdir(cwd)
        assert not outcome.failed and len(outcome.ran) + len(outcome.skipped) == 4
        assert len(outcome.skipped) >= len(finished)  # a cell finished before the fill is not run again
        cells = [r for r in find_runs(uri, kind="cell") if r["status"] == "FINISHED"
                 and r["tags"].get("mcrlab.stale") != "true"]
        assert len(cells) == 4 and finished <= {r["run_id"] for r in cells}
        assert _duplicate_points(runs / "mlflow.db") == []

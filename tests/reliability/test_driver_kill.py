"""The sweep or ablation driver SIGKILLed at different moments; ``--resume`` finishes the work.

tests/tune/test_runner.py kills a sweep after its first trial finished and tests/test_ablation.py an
ablation after two cells finished; these add the other moments: a sweep killed right after it started
(before any trial reported) and in the middle of its first trial, an ablation in the middle of its first
cell. After the resume: every trial/cell is finished exactly once, nothing that finished before the kill
ran again, and MLflow holds no duplicate and no orphaned (still RUNNING) run.

``test_trial_finished_after_the_last_tune_snapshot_is_not_trained_again`` makes Tune's experiment snapshot lag
for certain (``TUNE_GLOBAL_CHECKPOINT_S``: one save at the start) and kills the driver right after a trial
finished: Tune restores that trial as unfinished, and only the driver's finished-trial record
(``mcrlab.trials.finished``) keeps it from training again.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mcrlab.tracking import find_runs
from mcrlab.tune.runner import run_sweep
from mcrlab.tune.space import load_space

pytestmark = [pytest.mark.ray, pytest.mark.slow]

EPOCHS, TRIALS = 10, 3  # trials of several seconds (2048 rows: with 512 a fast step let a whole sweep end
#                          between two polls once): the mid-trial kill point must not be missed on a fast machine
BASE = {"data": {"n_train": 2048}, "model": {"hidden": 8, "latent": 4, "depth": 1}, "method": {"name": "joint"},
        "train": {"epochs": EPOCHS, "batch_size": 32, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}}
SPACE = {"name": "killme", "datasets": ["synthetic:competition"], "base": BASE, "sampler": {"name": "tpe", "seed": 3},
         "num_samples": TRIALS, "scaling": {"workers": 1, "cpus_per_worker": 1, "max_concurrent": 1},
         "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}}
SWEEP_DRIVER = """
import sys, ray
from mcrlab.tune.runner import run_sweep
from mcrlab.tune.space import load_space
ray.init(address=sys.argv[1], log_to_driver=False)
run_sweep(load_space(sys.argv[2]), storage_path=sys.argv[3], progress=False)
"""


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 400) -> None:
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the driver ended before it could be killed"
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - the store may not exist yet, or be mid-migration
                pass
            time.sleep(0.3)
        raise AssertionError("the kill point was never reached")
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone: the assertion above says why
            os.killpg(proc.pid, signal.SIGKILL)  # the driver we started, and only its group
        proc.wait()


def _sweep_started(uri: str, sweeps: Path) -> Callable[[], bool]:
    return lambda: any(sweeps.glob("*/sweep.json")) and len(find_runs(uri, kind="sweep")) == 1


def _first_trial_mid_way(uri: str) -> Callable[[], bool]:
    def ready() -> bool:
        trials = find_runs(uri, kind="trial")
        return any(0 < r["metrics"].get("epoch", 0) < EPOCHS for r in trials) and not any(
            r["status"] == "FINISHED" for r in trials)
    return ready


def _save_after_the_last_signature(sweep_dir: Path) -> None:
    """What a driver killed while Tune saved leaves: the experiment state rewritten after its last signature
    (the same content, other bytes) and a newer searcher state that was never signed."""
    exp = sweep_dir / "ray" / "synthetic-competition"
    state = next(exp.glob("experiment_state-*.json"))
    state.write_text(json.dumps(json.loads(state.read_text()), indent=2))
    searcher = next(exp.glob("searcher-state-*.pkl"))
    (exp / "searcher-state-9999-12-31_23-59-59.pkl").write_bytes(searcher.read_bytes())


@pytest.mark.parametrize("moment", ["just-started", "mid-trial", "mid-save"])
def test_sweep_driver_killed_then_resumed(moment, ray_local, tmp_path, capfd):
    """mid-save: killed mid-trial, with Tune's last save unsigned; the resume rolls it back to the signed
    snapshot. just-started: the kill may land before Tune's first snapshot was signed; then the resume sets
    it aside and starts the study afresh, closing the killed driver's runs (stale), and says so."""
    space_file = tmp_path / "killme.yaml"
    space_file.write_text(yaml.safe_dump(SPACE))
    runs = tmp_path / "runs"
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-c", SWEEP_DRIVER, ray_local.get_runtime_context().gcs_address,
                             str(space_file), str(runs)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_when(proc, _sweep_started(uri, runs / "sweeps") if moment == "just-started" else _first_trial_mid_way(uri))
    time.sleep(1.0)
    before = {r["run_id"]: r for r in find_runs(uri, kind="trial")}
    finished_before = {rid for rid, r in before.items() if r["status"] == "FINISHED"}
    assert not finished_before
    if moment != "just-started":
        assert before, "the kill was meant to land inside a trial"
    (sweep_dir,) = (runs / "sweeps").iterdir()
    if moment == "mid-save":
        _save_after_the_last_signature(sweep_dir)
    capfd.readouterr()

    result = run_sweep(load_space(space_file), storage_path=runs, resume=True, progress=False)
    err = capfd.readouterr().err
    study = result.studies["synthetic:competition"]
    assert study.num_trials == TRIALS and study.num_errors == 0
    set_aside = (sweep_dir / "unverified").exists()
    if moment == "mid-save":
        assert "experiment_state-" in err and "resuming from its last signed version" in err, err
        assert "searcher-state-9999-12-31_23-59-59.pkl: written but never signed" in err, err
        assert (sweep_dir / "unverified" / "synthetic-competition" / "searcher-state-9999-12-31_23-59-59.pkl").is_file()
    elif set_aside:  # just-started, with the first snapshot unsigned
        assert "written but never signed" in err, err
    else:
        assert "never signed" not in err and "last signed version" not in err, err

    everything = find_runs(uri)
    assert not [r for r in everything if r["status"] == "RUNNING"], "orphaned RUNNING runs"
    assert len([r for r in everything if r["tags"].get("mcrlab.kind") == "sweep"]) == 1
    assert len([r for r in everything if r["tags"].get("mcrlab.kind") == "study"]) == 1
    trials = [r for r in everything if r["tags"].get("mcrlab.kind") == "trial"]
    finished = [r for r in trials if r["status"] == "FINISHED"]
    tids = [r["tags"]["mcrlab.trial_id"] for r in finished]
    assert len(finished) == TRIALS and len(set(tids)) == TRIALS, tids  # one run per trial, no duplicate
    client = MlflowClient(uri)
    for r in finished:
        steps = [m.step for m in client.get_metric_history(r["run_id"], "objective")]
        assert steps == list(range(1, EPOCHS + 1)), (r["run_id"], steps)  # no epoch logged twice
    others = [r for r in trials if r["status"] != "FINISHED"]
    if moment == "just-started" and set_aside:  # the killed driver's trials were in no signed snapshot
        assert {r["run_id"] for r in others} == set(before)
        assert all(r["status"] == "KILLED" and r["tags"].get("mcrlab.stale") == "true" for r in others)
    else:
        assert not others
        for rid in before:  # a trial interrupted mid-way continued in its own run
            assert rid in {t["run_id"] for t in finished}, f"run {rid} of the killed driver was abandoned"
    ostudy = optuna.load_study(study_name=study.optuna_study, storage=result.optuna_storage)
    done = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == TRIALS
    assert not [t for t in ostudy.trials if t.state == optuna.trial.TrialState.RUNNING]


ABLATION = {"name": "killcell", "experiment": "abl-kill", "base": BASE,  # cells of several seconds, as above
            "arms": {"mlp": {"model.fusion": "mlp"}}, "datasets": ["synthetic:competition"], "seeds": [0, 1]}


def test_ablation_driver_killed_mid_cell_then_resumed(ray_local, tmp_path):
    from mcrlab.ablate.runner import run_ablation
    from mcrlab.ablate.spec import load_spec

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(ABLATION))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "OMP_NUM_THREADS": "1",
           "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "mcrlab.cli.app", "ablate", str(spec_file), "--tracking-uri", uri,
                             "--verbose", "0"], env=env, cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def mid_cell() -> bool:
        cells = find_runs(uri, "abl-kill", kind="cell")
        return any(r["status"] == "RUNNING" and r["metrics"] for r in cells) and not any(
            r["status"] == "FINISHED" for r in cells)

    _kill_when(proc, mid_cell)
    spec = load_spec(spec_file)
    out = run_ablation(spec, uri, resume=True, storage_path=tmp_path)
    assert out.skipped == [] and sorted(out.ran) == sorted(c.key for c in spec.cells) and not out.failed

    cells = find_runs(uri, "abl-kill", kind="cell")
    assert not [r for r in find_runs(uri, "abl-kill") if r["status"] == "RUNNING"], "orphaned RUNNING runs"
    finished = [r for r in cells if r["status"] == "FINISHED"]
    keys = [(r["tags"]["mcrlab.arm"], r["tags"]["mcrlab.seed"]) for r in finished]
    assert len(finished) == len(spec.cells) and len(set(keys)) == len(keys)  # each cell once
    leftovers = [r for r in cells if r["status"] != "FINISHED"]
    assert leftovers and all(r["status"] == "KILLED" and r["tags"].get("mcrlab.stale") == "true"
                             for r in leftovers)  # the interrupted attempt: closed and hidden from compare
    assert len(find_runs(uri, "abl-kill", kind="ablation")) == 1
    assert len(find_runs(uri, "abl-kill", kind="arm")) == len(spec.arms)


def _checkpoints(exp: Path, trial_id: str) -> dict[str, int]:
    """The checkpoints ``trial_id`` has persisted to storage: name -> modification time (ns) of its files.
    A trial trained again writes them anew (Tune restarts the numbering of a trial restored without its
    checkpoint history, so the names alone would not tell)."""
    folders = [d for d in exp.iterdir() if d.is_dir() and f"_{trial_id}_" in d.name]
    assert len(folders) == 1, (trial_id, [d.name for d in exp.iterdir()])
    return {d.name: max(f.stat().st_mtime_ns for f in d.iterdir()) for d in folders[0].glob("checkpoint_*")}


def _epochs_logged(exp: Path, trial_id: str) -> list[int]:
    """The ``epoch`` column of the trial's progress.csv, as Tune synced it to storage."""
    import csv

    folder = next(d for d in exp.iterdir() if d.is_dir() and f"_{trial_id}_" in d.name)
    with open(folder / "progress.csv", newline="") as f:
        return [int(float(row["epoch"])) for row in csv.DictReader(f) if row.get("epoch")]


def test_trial_finished_after_the_last_tune_snapshot_is_not_trained_again(ray_local, tmp_path):
    n = TRIALS + 1  # the kill lands once two trials finished: at least one trial is still to come
    space = {**SPACE, "name": "lagging", "num_samples": n, "base": {**BASE, "train": {**BASE["train"], "epochs": 4}}}
    space_file = tmp_path / "lagging.yaml"
    space_file.write_text(yaml.safe_dump(space))
    runs = tmp_path / "runs"
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    # one experiment snapshot at the start and none after (unless forced): it holds the first trial, PENDING
    # (Tune asks the searcher for it before its first save), and no later trial (one at a time: the next one
    # is asked for once the one before has finished)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "TUNE_GLOBAL_CHECKPOINT_S": "3600"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-c", SWEEP_DRIVER, ray_local.get_runtime_context().gcs_address,
                             str(space_file), str(runs)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def two_trials_finished() -> bool:
        return any(runs.glob("sweeps/*/sweep.json")) and sum(
            r["status"] == "FINISHED" for r in find_runs(uri, kind="trial")) >= 2

    _kill_when(proc, two_trials_finished)
    finished = {r["tags"]["mcrlab.trial_id"]: r for r in find_runs(uri, kind="trial") if r["status"] == "FINISHED"}
    assert 2 <= len(finished) < n, "the kill was meant to land between the second and the last trial"
    sweep_dir = next(runs.glob("sweeps/*/sweep.json")).parent
    exp = sweep_dir / "ray" / "synthetic-competition"
    states = list(exp.glob("experiment_state-*.json"))
    assert len(states) == 1, states  # the one snapshot, made at the start
    snapshot = {json.loads(t)["trial_id"]: json.loads(t)["status"]
                for t, _ in json.loads(states[0].read_text())["trial_data"]}
    # both ways a finished trial can be lost to Tune: in the snapshot but unfinished there (the first trial,
    # which the resume restores and continues), and not in it at all (the second: the restored searcher
    # believes that slot is still free and fills it with a new trial)
    assert [s for tid, s in snapshot.items() if tid in finished] == ["PENDING"], (snapshot, set(finished))
    assert len(set(finished) - set(snapshot)) == len(finished) - 1, (snapshot, set(finished))
    record = json.loads((sweep_dir / "finished-synthetic-competition.json").read_text())
    assert set(finished) <= set(record), "a trial MLflow shows FINISHED is missing from the driver's record"
    ckpts_before = {tid: _checkpoints(exp, tid) for tid in finished}
    assert all(len(c) == 4 for c in ckpts_before.values()), ckpts_before  # one per epoch
    client = MlflowClient(uri)
    end_times = {tid: client.get_run(r["run_id"]).info.end_time for tid, r in finished.items()}

    result = run_sweep(load_space(space_file), storage_path=runs, resume=True, progress=False)
    study = result.studies["synthetic:competition"]
    assert study.num_trials == n and study.num_errors == 0
    for tid in finished:  # not trained again: no checkpoint rewritten, epoch 1 logged once
        assert _checkpoints(exp, tid) == ckpts_before[tid], tid
        assert _epochs_logged(exp, tid).count(1) == 1, (tid, _epochs_logged(exp, tid))
    trials = find_runs(uri, kind="trial")
    # a trial the killed driver had handed out after the (only) snapshot is never resumed; the study is
    # topped up instead and its run is closed KILLED, tagged stale (see test_sweep_driver_killed_then_resumed)
    stale = [r for r in trials if r["tags"].get("mcrlab.stale") == "true"]
    assert all(r["status"] == "KILLED" and r["tags"]["mcrlab.trial_id"] not in finished for r in stale)
    trials = [r for r in trials if r not in stale]
    assert len(trials) == n and all(r["status"] == "FINISHED" for r in trials)
    for r in trials:
        steps = [m.step for m in client.get_metric_history(r["run_id"], "objective")]
        assert steps == [1, 2, 3, 4], (r["run_id"], steps)
        if r["tags"]["mcrlab.trial_id"] in finished:  # left as it was: not reopened, not closed again
            assert client.get_run(r["run_id"]).info.end_time == end_times[r["tags"]["mcrlab.trial_id"]]
    ostudy = optuna.load_study(study_name=study.optuna_study, storage=result.optuna_storage)
    complete = [t for t in ostudy.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == n
    # nor was a finished trial's point trained again under another trial id (the restored sampler, left as
    # it was, suggests the points it handed out after the snapshot again)
    points = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(points)) == n, points


def _descendants(root: int) -> dict[int, str]:
    """Live descendants of ``root`` (pid -> command line), read from /proc."""
    table: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
                cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:100]
            except OSError:
                continue
            table[int(name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, cmd) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = cmd
                todo.append(pid)
    return {pid: cmd for pid, cmd in found.items() if _alive(pid)}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_local_ray_of_a_killed_sweep_driver_dies_with_it(tmp_path):
    """`mcrlab sweep` with no cluster starts its own Ray. SIGKILL of the driver (its pid only, as `kill -9`
    does) used to leave the raylet's agents (DashboardAgent, RuntimeEnvAgent) alive for about a minute
    (measured: 63 and 64 s); now every process of that Ray is gone within the poll."""
    space = {**SPACE, "name": "orphans", "base": {**BASE, "data": {"n_train": 8192},
                                                  "train": {**BASE["train"], "epochs": 50}}}
    space_file = tmp_path / "orphans.yaml"
    space_file.write_text(yaml.safe_dump(space))
    runs = tmp_path / "runs"
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled", "HOME": str(tmp_path)}
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    proc = subprocess.Popen([sys.executable, "-m", "mcrlab.cli.app", "sweep", str(space_file), "--storage", str(runs)],
                            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ray_procs: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(Exception):  # the store may not exist yet
                if any(runs.glob("sweeps/*/sweep.json")) and any(
                        r["metrics"].get("epoch", 0) >= 1 for r in find_runs(uri, kind="trial")):
                    ray_procs = _descendants(proc.pid)
                    break
            time.sleep(0.3)
        assert proc.poll() is None, "the driver ended before it could be killed"
        assert any("raylet" in c for c in ray_procs.values()), ray_procs  # its own local Ray is up
        assert any("ray::" in c for c in ray_procs.values()), ray_procs  # with raylet-started processes
        os.kill(proc.pid, signal.SIGKILL)  # the driver only, not its process group
        proc.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(pid) for pid in ray_procs):
            time.sleep(0.25)
        left = {pid: cmd for pid, cmd in ray_procs.items() if _alive(pid)}
        assert not left, f"outlived the driver by 20 s: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in ray_procs:  # never leave this test's own Ray behind, whatever happened
            if _alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)

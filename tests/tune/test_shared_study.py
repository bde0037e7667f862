"""Several sweep drivers sharing one Optuna study through an RDB storage (``--optuna-storage``, tune/shared.py).

- Two sweeps (two "laptops": separate run folders, one MLflow store) on one SQLite study file, one after the
  other, on real Ray, Optuna and MLflow (and two driver processes at once, each with its own MLflow store): the study ends with both drivers' trials, trial numbers unique,
  the starting point run once, no point proposed twice; every MLflow run carries its study and trial number
  and each Optuna trial its run id and the sweep that ran it; the database is each sweep run's artifact.
- Refusals: a malformed, unsupported, password-holding, unreachable or non-database URL, and --study
  without a storage, end with one line and exit code 2 before anything is created or started.
"""

from __future__ import annotations

import contextlib
import io
import sys

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from mcrlab.cli import main
from mcrlab.tracking import find_runs
from mcrlab.tune.runner import run_sweep
from mcrlab.tune.shared import SWEEP_ATTR, check_optuna_storage, driver_seed
from mcrlab.tune.space import parse_space

BASE = {"data": {"n_train": 128}, "model": {"hidden": 8, "latent": 4, "depth": 1},
        "method": {"name": "mcr", "num_perms": 2},
        "train": {"epochs": 1, "batch_size": 64, "probe_epochs": 0, "eval_perms": 1, "device": "cpu"}}
START = {"train.lr": 1e-2, "method.lambda_m": 1e-2}


def _space(**over) -> dict:
    return {"name": "shared", "datasets": ["synthetic:competition"], "base": BASE, "metric": "val/acc",
            "mode": "max", "sampler": {"name": "random", "seed": 0}, "num_samples": 2,
            "scaling": {"workers": 1, "cpus_per_worker": 1}, "points_to_evaluate": [START],
            "params": {"train.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
                       "method.lambda_m": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
            **over}


@pytest.mark.ray
@pytest.mark.slow
def test_two_drivers_add_their_trials_to_one_study(ray_local, tmp_path, mlflow_uri):
    url = f"sqlite:///{tmp_path / 'shared' / 'optuna.db'}"
    (tmp_path / "shared").mkdir()
    space = parse_space(_space())
    first = run_sweep(space, storage_path=tmp_path / "laptop1", tracking_uri=mlflow_uri, optuna_storage=url,
                      progress=False)
    second = run_sweep(space, storage_path=tmp_path / "laptop2", tracking_uri=mlflow_uri, optuna_storage=url,
                       progress=False)
    name = "shared/synthetic-competition"
    assert first.optuna_storage == second.optuna_storage == url
    assert first.studies["synthetic:competition"].optuna_study == name
    assert second.studies["synthetic:competition"].optuna_study == name
    assert first.sweep_id != second.sweep_id
    assert not (tmp_path / "laptop1" / "sweeps" / first.sweep_id / "optuna.db").exists()  # not a private file

    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    by_sweep = {s: [t for t in trials if t.user_attrs.get(SWEEP_ATTR) == s] for s in (first.sweep_id, second.sweep_id)}
    assert [len(v) for v in by_sweep.values()] == [2, 2]
    points = [(t.params["train.lr"], t.params["method.lambda_m"]) for t in trials]
    # the starting point is run once (the second driver does not enqueue it again), and the two drivers'
    # seeded samplers draw different points (with one seed they would draw the same ones)
    assert points.count((START["train.lr"], START["method.lambda_m"])) == 1
    assert len(set(points)) == 4

    runs = find_runs(mlflow_uri, kind="trial")
    assert len(runs) == 4
    client = MlflowClient(mlflow_uri)
    numbers = []
    for run in runs:
        tags = run["tags"]
        assert tags["mcrlab.optuna_study"] == name
        ot = trials[[t.number for t in trials].index(int(tags["mcrlab.optuna_trial"]))]
        numbers.append(ot.number)
        assert ot.user_attrs["mlflow_run_id"] == run["run_id"]
        assert ot.user_attrs[SWEEP_ATTR] == tags["mcrlab.sweep_id"]
        assert float(run["params"]["train.lr"]) == pytest.approx(ot.params["train.lr"])
    assert sorted(numbers) == [0, 1, 2, 3]
    studies = find_runs(mlflow_uri, kind="study")
    assert {r["tags"]["mcrlab.optuna_study"] for r in studies} == {name}
    for result in (first, second):
        # the study database survives the run folders: each sweep run holds a snapshot of it
        assert [a.path for a in client.list_artifacts(result.run_id, "optuna")] == ["optuna/optuna.db"]
        assert client.get_run(result.run_id).data.params["optuna_storage"] == url
    seeds = [client.get_run(r.run_id).data.params["driver_seed"] for r in (first, second)]
    assert seeds[0] != seeds[1]
    snap = client.download_artifacts(second.run_id, "optuna/optuna.db", str(tmp_path / "dl"))
    assert len(optuna.load_study(study_name=name, storage=f"sqlite:///{snap}").trials) == 4


def test_each_driver_gets_its_own_sampler_seed():
    assert driver_seed(0, "a-1") != driver_seed(0, "a-2")
    assert driver_seed(0, "a-1") == driver_seed(0, "a-1")  # stable within one process (recorded as a param)
    assert 0 <= driver_seed(None, "x") < 2**31


def _refused(tmp_path, argv: list[str]) -> str:
    good = tmp_path / "space.yaml"
    good.write_text(yaml.safe_dump(_space()))
    err = io.StringIO()
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["sweep", str(good), "--storage", str(tmp_path / "runs"),
                     "--tracking-uri", f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}", *argv])
    text = err.getvalue()
    assert code == 2, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mcrlab: error:") and "Traceback" not in text, text
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ml").exists(), "something was created"
    ray = sys.modules.get("ray")
    assert ray_before or ray is None or not ray.is_initialized(), "Ray was started"
    return lines[0]


@pytest.mark.parametrize("url, fragments", [
    ("not a url", ["--optuna-storage", "is not a database URL"]),
    ("oracle://u@h/db", ["--optuna-storage", "backend 'oracle' is not supported"]),
    ("postgresql+psycopg2://u:hunter2@127.0.0.1:9/db", ["--optuna-storage", "holds a password", "PGPASSWORD"]),
    ("postgresql+psycopg2://u@127.0.0.1:9/db", ["--optuna-storage", "cannot connect to", "127.0.0.1:9"]),
    ("postgresql+psycopg2://u@no-such-host.invalid/db", ["--optuna-storage", "cannot resolve"]),
    ("sqlite://", ["--optuna-storage", "in-memory"]),
    ("sqlite:///{tmp}/no/such/folder/optuna.db", ["--optuna-storage", "no folder"]),
    ("sqlite:///{tmp}/space.yaml", ["--optuna-storage", "is not a SQLite database"]),
])
def test_bad_storage_urls_are_refused_before_anything_starts(tmp_path, url, fragments):
    message = _refused(tmp_path, ["--optuna-storage", url.replace("{tmp}", str(tmp_path))])
    for fragment in fragments:
        assert fragment in message, message
    assert "hunter2" not in message


def test_study_without_storage_and_a_path_as_study_name_are_refused(tmp_path):
    assert "--study" in _refused(tmp_path, ["--study", "team"])
    message = _refused(tmp_path, ["--study", "../x", "--optuna-storage", f"sqlite:///{tmp_path / 'o.db'}"])
    assert "--study" in message and not (tmp_path / "o.db").exists()


def test_form_only_check_does_not_contact_the_server():
    # `mcrlab submit` checks the form on the laptop; the server may be reachable from the cluster only
    url = "postgresql+psycopg2://mlflow@mlflow-postgres.mcrlab.svc.cluster.local:5432/optuna"
    assert check_optuna_storage(url, connect=False) == url


def test_the_report_of_a_sweep_on_a_shared_storage_covers_its_own_studies_only(tmp_path):
    import json

    from mcrlab.analysis.sweep_report import find_sweep, sweep_report

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    for name in ("team/synthetic-competition", "other-space/synthetic-competition"):
        study = optuna.create_study(study_name=name, storage=url, direction="maximize")
        for x in (0.1, 0.5, 0.9):
            study.enqueue_trial({"x": x})
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    folder = tmp_path / "sweeps" / "team-1"
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({
        "sweep_id": "team-1", "optuna_storage": url, "study_prefix": "team", "tracking_uri": None,
        "studies": {"synthetic:competition": {"done": True, "optuna_study": "team/synthetic-competition"}}}))
    info = find_sweep(str(folder))  # no optuna.db of its own: the shared storage is read from sweep.json
    assert info.optuna_storage == url and info.studies == ["team/synthetic-competition"]
    reports = sweep_report(info)
    assert list(reports) == ["team/synthetic-competition"]
    assert reports["team/synthetic-competition"].counts.get("COMPLETE") == 3


DRIVER = """
import sys
import ray
from mcrlab.tune.runner import run_sweep
from mcrlab.tune.space import load_space
ray.init(address=sys.argv[1], log_to_driver=False)
r = run_sweep(load_space(sys.argv[2]), storage_path=sys.argv[3], tracking_uri=sys.argv[4], optuna_storage=sys.argv[5],
              progress=False)
print("SWEEP", r.sweep_id)
"""


@pytest.mark.ray
@pytest.mark.slow
def test_two_driver_processes_at_once_share_the_study(ray_local, tmp_path):
    import os
    import subprocess

    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump(_space(num_samples=3)))
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    address = ray_local.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    logs = {i: (tmp_path / f"out{i}.txt", tmp_path / f"err{i}.txt") for i in (1, 2)}
    procs = {}
    for i, (out, err) in logs.items():  # files, not pipes: a full pipe would block one driver
        with open(out, "w") as fo, open(err, "w") as fe:
            procs[i] = subprocess.Popen([sys.executable, "-c", DRIVER, address, str(space_file),
                                         str(tmp_path / f"laptop{i}"), f"sqlite:///{tmp_path / f'mlflow{i}.db'}", url],
                                        env=env, stdout=fo, stderr=fe)
    for i, proc in procs.items():
        assert proc.wait(timeout=900) == 0, logs[i][1].read_text()[-3000:]
    sweeps = {line.split()[1] for out, _ in logs.values() for line in out.read_text().splitlines()
              if line.startswith("SWEEP ")}
    assert len(sweeps) == 2
    trials = optuna.load_study(study_name="shared/synthetic-competition", storage=url).get_trials(deepcopy=False)
    assert len(trials) == 6 and sorted(t.number for t in trials) == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(sum(t.user_attrs[SWEEP_ATTR] == s for t in trials) for s in sweeps) == [3, 3]
    spans = [(min(t.datetime_start for t in trials if t.user_attrs[SWEEP_ATTR] == s),
              max(t.datetime_complete for t in trials if t.user_attrs[SWEEP_ATTR] == s)) for s in sweeps]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], f"the drivers did not overlap: {spans}"
    # each driver's MLflow store holds its own three runs, each tagged with its own trial's number
    for i in (1, 2):
        runs = find_runs(f"sqlite:///{tmp_path / f'mlflow{i}.db'}", kind="trial")
        assert len(runs) == 3
        for run in runs:
            ot = next(t for t in trials if t.number == int(run["tags"]["mcrlab.optuna_trial"]))
            assert ot.user_attrs["mlflow_run_id"] == run["run_id"]
            assert ot.user_attrs[SWEEP_ATTR] == run["tags"]["mcrlab.sweep_id"]


def test_resume_keeps_the_sweeps_storage_and_refuses_another(tmp_path, capsys):
    import json
    import os

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    sweep = tmp_path / "runs" / "sweeps" / "shared-1"
    sweep.mkdir(parents=True)
    for folder in (tmp_path / "runs" / "sweeps", sweep):
        os.chmod(folder, 0o700)
    (sweep / "sweep.json").write_text(json.dumps({"sweep_id": "shared-1", "space_name": "shared", "studies": {},
                                                  "optuna_storage": url, "study_prefix": "shared"}))
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(_space()))
    base = ["sweep", str(space), "--storage", str(tmp_path / "runs"), "--resume", "shared-1",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert main([*base, "--optuna-storage", f"sqlite:///{tmp_path / 'other.db'}"]) == 2
    assert f"keeps its studies in {url}" in capsys.readouterr().err
    assert main([*base, "--optuna-storage", url, "--study", "another"]) == 2
    assert "runs study 'shared'" in capsys.readouterr().err
    (tmp_path / "shared.db").write_text("not a database")  # the saved storage is checked again on resume
    assert main(base) == 2
    assert "is not a SQLite database" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "other.db").exists()

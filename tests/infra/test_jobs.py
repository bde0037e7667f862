"""jobs/: every entry script documents the exact `ray job submit` command and dry-runs (--help); the
runtime env is accepted by Ray, ships the package and leaves local state and secrets out."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys

import pytest
from ray.runtime_env import RuntimeEnv

from mcrlab.cli.cluster import JOB_SCRIPTS, RUNTIME_ENV, SECRET_NAME, build_runtime_env
from mcrlab.config import ConfigError, read_yaml
from tests.infra.conftest import ROOT


@pytest.mark.parametrize("kind", sorted(JOB_SCRIPTS))
def test_job_script_starts_with_its_ray_job_submit_command(kind):
    script = JOB_SCRIPTS[kind]
    head = (ROOT / script).read_text().split('"""')[1]
    command = " ".join(head.replace("\\\n", " ").split())
    assert re.search(rf"ray job submit --address \S+ --runtime-env {RUNTIME_ENV} .*-- python {script}\b", command)
    assert f"mcrlab submit {kind}" in command


@pytest.mark.parametrize("kind", sorted(JOB_SCRIPTS))
def test_job_script_help_dry_runs(kind, monkeypatch, capsys):
    script = ROOT / JOB_SCRIPTS[kind]
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(script), run_name="__main__")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.strip()
    if kind != "benchmark":  # the others forward to `mcrlab <kind>`, whose usage names the sub-command
        assert f"mcrlab {kind}" in out


def test_benchmark_job_rejects_an_unknown_benchmark(monkeypatch, capsys):
    script = ROOT / JOB_SCRIPTS["benchmark"]
    monkeypatch.setattr(sys, "argv", [str(script), "no-such-bench"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(script), run_name="__main__")
    assert exc.value.code == 2
    assert "unknown benchmark 'no-such-bench'" in capsys.readouterr().err


def test_job_script_runs_as_a_standalone_process_and_reports_user_errors_with_exit_2():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, JOB_SCRIPTS["train"], "train.no_such_key=1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "train.no_such_key" in proc.stderr and "Traceback" not in proc.stderr


def test_runtime_env_is_accepted_by_ray_and_ships_the_package():
    raw = read_yaml(ROOT / RUNTIME_ENV)
    assert raw["working_dir"] == "." and raw["py_modules"] == ["platform/mcrlab"]
    env = build_runtime_env(ROOT / RUNTIME_ENV, ROOT)
    RuntimeEnv(**env)  # Ray's own validation of every field
    assert env["working_dir"] == str(ROOT)
    (pkg,) = env["py_modules"]
    assert (ROOT / "platform" / "mcrlab" / "cli" / "app.py").samefile(os.path.join(pkg, "cli", "app.py"))
    for pattern in (".git", ".venv", "runs", "mlruns", "*.db", "__pycache__"):
        assert pattern in raw["excludes"], pattern
    assert not [k for k in raw.get("env_vars", {}) if SECRET_NAME.search(k)]
    assert "MLFLOW_TRACKING_URI" not in raw.get("env_vars", {}), "the cluster's or the client's, never fixed here"


def test_runtime_env_gets_the_tracking_uri_and_refuses_secrets(tmp_path):
    env = build_runtime_env(ROOT / RUNTIME_ENV, ROOT, "http://mlflow.example:5000", {"MCR_FLAG": "1"})
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"
    assert env["env_vars"]["MCR_FLAG"] == "1"
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY.*looks like a secret"):
        build_runtime_env(ROOT / RUNTIME_ENV, ROOT, None, {"AWS_SECRET_ACCESS_KEY": "x"})
    with pytest.raises(ConfigError, match="password"):
        build_runtime_env(ROOT / RUNTIME_ENV, ROOT, "http://bob:hunter2@mlflow.example:5000")
    bad = tmp_path / "env.yaml"
    bad.write_text("env_vars:\n  MLFLOW_TRACKING_TOKEN: abc\n")
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_TOKEN"):
        build_runtime_env(bad, ROOT)
    bad.write_text("working_dir: .\nconda: base\n")
    with pytest.raises(ConfigError, match="unknown runtime env field"):
        build_runtime_env(bad, ROOT)

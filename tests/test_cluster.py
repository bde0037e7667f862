"""The local cluster and job submission.

Fast tests (default suite): token discovery, process-group stop, refusal of secrets and of a second
cluster, CLI exit codes. The integration test (marked integration + slow, run in CI) starts a real Ray
head, a second Ray node and a real `mlflow server` as separate processes on 127.0.0.1 with token authentication ON, submits a
smoke sweep from separate client processes (`mcrlab submit` and the documented `ray job submit`), and checks
the job status, the runs in the MLflow server, a bad spec's FAILED job with its clear error, that the
runtime env ships the package, that a client without the token is refused, and that the dashboard and
MLflow listen on 127.0.0.1 only. Everything is stopped at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mcrlab.cli import main
from mcrlab.cli.cluster import RUNTIME_ENV, submit_command
from mcrlab.config import ConfigError
from mcrlab.ops import cluster

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------------
# fast


def _fake_state(state_dir: Path, pid: int, token: str | None = None) -> cluster.LocalCluster:
    state_dir.mkdir(parents=True, exist_ok=True)
    token_path = None
    if token is not None:
        token_path = state_dir / "auth_token"
        token_path.write_text(token)
    c = cluster.LocalCluster(state_dir=str(state_dir), address="http://127.0.0.1:1234", gcs_address="127.0.0.1:1",
                             ray_temp_dir=str(state_dir / "raytmp"), token_path=str(token_path) if token_path else None,
                             tracking_uri=None, services=[cluster.Service("ray-head", pid, str(state_dir / "x.log"))])
    c.save()
    return c


def test_token_discovery_follows_rays_order_then_the_local_cluster_then_the_default_file(tmp_path):
    home, state = tmp_path / "home", tmp_path / "state"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("home-token")
    _fake_state(state, pid=999999, token="local-token")
    path_file = tmp_path / "tok"
    path_file.write_text("path-token")

    def find(environ, address="http://127.0.0.1:1234"):
        return cluster.discover_token(address, state, environ=environ, home=home)

    src = find({"RAY_AUTH_TOKEN": "env-token", "RAY_AUTH_TOKEN_PATH": str(path_file)})
    assert src.origin == "RAY_AUTH_TOKEN" and src.headers() == {"Authorization": "Bearer env-token"}
    src = find({"RAY_AUTH_TOKEN_PATH": str(path_file)})
    assert src.env == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path_file)}
    assert src.headers() == {"Authorization": "Bearer path-token"}
    src = find({"RAY_AUTH_MODE": "disabled"})  # the local cluster's token wins over a stray env setting
    assert src.headers() == {"Authorization": "Bearer local-token"} and src.env["RAY_AUTH_MODE"] == "token"
    src = find({}, address="http://10.0.0.5:8265")  # another cluster: Ray's default file
    assert src.token_path == str(home / ".ray" / "auth_token") and src.headers()["Authorization"].endswith("home-token")
    assert find({"RAY_AUTH_MODE": "disabled"}, address="http://10.0.0.5:8265").env == {"RAY_AUTH_MODE": "disabled"}
    (home / ".ray" / "auth_token").unlink()
    assert find({}, address="http://10.0.0.5:8265").origin == "none"
    with pytest.raises(ConfigError, match="RAY_AUTH_TOKEN_PATH: no token file"):
        find({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})


def test_token_file_is_private_and_never_on_the_command_line(tmp_path):
    path = tmp_path / "auth_token"
    cluster._write_token(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text()
    assert len(token) == 64
    argv = submit_command("ray", "http://127.0.0.1:8265", "sid", tmp_path / "env.json", "jobs/sweep.py", ["x.yaml"])
    assert token not in " ".join(argv)
    assert argv[-3:] == ["python", "jobs/sweep.py", "x.yaml"] and argv[argv.index("--") - 1] != "--no-wait"


def test_stop_ends_the_whole_process_group_and_only_it(tmp_path):
    # A leader that ignores nothing and a child that would outlive it: both must go.
    svc, proc = cluster._spawn("dummy", ["sh", "-c", "sleep 300 & exec sleep 300"], dict(os.environ), tmp_path)
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        c = cluster.LocalCluster(state_dir=str(tmp_path), address="http://127.0.0.1:1", gcs_address="",
                                 ray_temp_dir=str(tmp_path / "raytmp"), token_path=None, tracking_uri=None,
                                 services=[svc])
        c.save()
        time.sleep(0.5)
        assert cluster._group_alive(svc.pid)
        assert cluster.stop(tmp_path, grace=1.0) == ["dummy"]
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while cluster._group_alive(svc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not cluster._group_alive(svc.pid)
        assert bystander.poll() is None, "a process outside the group was touched"
        assert cluster.load(tmp_path) is None and cluster.stop(tmp_path) == []
    finally:
        bystander.kill()
        bystander.wait()


def test_a_second_cluster_in_the_same_state_dir_is_refused_before_anything_starts(tmp_path):
    _fake_state(tmp_path, pid=os.getpid())  # this test process: certainly alive
    with pytest.raises(ConfigError, match="already running"):
        cluster.start(tmp_path, mlflow=False)
    assert cluster.load(tmp_path).services[0].pid == os.getpid()


def test_cli_status_down_and_submit_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    empty = str(tmp_path / "none")
    assert main(["cluster", "status", "--state-dir", empty, "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["running"] is False
    assert main(["cluster", "status", "--state-dir", empty]) == 1
    assert "no local cluster recorded" in capsys.readouterr().out
    assert main(["cluster", "env", "--state-dir", empty]) == 2
    assert "no local cluster recorded" in capsys.readouterr().err
    assert main(["cluster", "down", "--state-dir", empty]) == 0
    assert main(["submit", "sweep", "--state-dir", empty, "search_spaces/default.yaml"]) == 2
    assert "no cluster given" in capsys.readouterr().err
    assert main(["submit", "sweep", "--address", "http://127.0.0.1:9", "--env", "MY_API_KEY=abc",
                 "search_spaces/default.yaml"]) == 2
    err = capsys.readouterr().err
    assert "MY_API_KEY" in err and "abc" not in err
    assert main(["submit", "train", "--address", "127.0.0.1:6379", "train.epochs=1"]) == 2
    assert "not a job API address" in capsys.readouterr().err


def test_submit_dry_run_prints_the_equivalent_ray_job_submit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "s3cr3t-token-value")
    monkeypatch.chdir(ROOT / "jobs")  # any directory of the checkout
    monkeypatch.setenv("DB_URL", "postgres://u:hunter2@db/x")
    assert main(["submit", "sweep", "--address", "http://10.1.2.3:8265", "--dry-run", "--submission-id", "s1",
                 "--env", "DB_URL", "--env", "MODE=fast-9f2e", "search_spaces/default.yaml", "--storage",
                 "/mnt/shared/x", "--", "--smoke"]) == 0
    argv = shlex.split(capsys.readouterr().out)
    assert argv[1:9] == ["job", "submit", "--address", "http://10.1.2.3:8265", "--submission-id", "s1",
                         "--runtime-env", argv[8]]
    # the runtime env travels in a private file: no value of it is on the command line
    env_file = Path(argv[8])
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    env = json.loads(env_file.read_text())
    env_file.unlink()
    assert env["env_vars"]["DB_URL"] == "postgres://u:hunter2@db/x" and env["env_vars"]["MODE"] == "fast-9f2e"
    assert "hunter2" not in " ".join(argv) and "fast-9f2e" not in " ".join(argv)
    assert "mlflow.example" not in " ".join(argv)
    assert env["working_dir"] == str(ROOT) and env["py_modules"] == [str(ROOT / "platform" / "mcrlab")]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"
    assert argv[argv.index("--") + 1:] == ["python", "jobs/sweep.py", "search_spaces/default.yaml", "--storage",
                                           "/mnt/shared/x", "--smoke"]
    assert "s3cr3t" not in " ".join(argv)
    assert "warning" not in capsys.readouterr().err  # --storage on the shared mount: nothing to warn about


def test_cluster_env_exports_what_ray_job_submit_reads_and_status_is_readable(tmp_path, capsys):
    local = _fake_state(tmp_path / "c", pid=os.getpid(), token="t0k")
    assert main(["cluster", "env", "--state-dir", str(tmp_path / "c")]) == 0
    exports = capsys.readouterr().out
    # the lines are shell: eval'd by bash they give the variables `ray job submit` reads (no --address needed)
    shown = subprocess.run(["bash", "-c", f'{exports}\nprintf "%s|%s|%s" "$RAY_API_SERVER_ADDRESS" '
                                          '"$RAY_AUTH_MODE" "$RAY_AUTH_TOKEN_PATH"'],
                           capture_output=True, text=True, check=True).stdout
    assert shown == f"{local.address}|token|{local.token_path}"
    assert "t0k" not in exports  # a path to the token, never the token
    assert main(["cluster", "status", "--state-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert f"dashboard / job API  {local.address}" in out and "mlflow               (not started)" in out
    assert f"ray-head    pid {os.getpid()}" in out and "running, not answering" in out  # nothing on port 1234
    assert "nodes: 0 alive" in out and "jobs: 0 pending or running" in out
    assert f"export RAY_API_SERVER_ADDRESS={local.address}" in out


def test_status_lists_nodes_with_their_cpus_and_gpus_and_the_unfinished_jobs():
    info = {"running": True, "state_dir": "/s", "address": "http://127.0.0.1:5", "tracking_uri": "http://127.0.0.1:6",
            "services": {"ray-head": {"pid": 7, "alive": True, "answers": True, "log": "/s/h.log"}},
            "nodes": [{"ip": "127.0.0.1", "head": True, "CPU": 2.0, "GPU": 0.0},
                      {"ip": "127.0.0.1", "head": False, "CPU": 4.0, "GPU": 1.0}],
            "jobs": [{"id": "mcrlab-sweep-1", "status": "RUNNING", "entrypoint": "python jobs/sweep.py x.yaml"}],
            "client_env": {"RAY_API_SERVER_ADDRESS": "http://127.0.0.1:5"}}
    out = cluster.format_status(info)
    assert "nodes: 2 alive, 6 CPUs, 1 GPUs" in out
    assert "worker 4 CPU  1 GPU" in out and "head   2 CPU  0 GPU" in out
    assert "jobs: 1 pending or running:" in out and "mcrlab-sweep-1" in out and "RUNNING" in out
    assert "mlflow               http://127.0.0.1:6" in out and "ray-head    pid 7        up" in out


def test_storage_warning_names_a_run_folder_that_would_not_outlive_the_job():
    from mcrlab.cli.cluster import _parse_job, storage_warning

    def warn(*job, remote=True, env=None):
        return storage_warning(_parse_job("sweep", ["s.yaml", *job]), "sweep", remote=remote, environ=env or {})

    assert "no --storage" in warn() and "the Optuna study" in warn()
    assert "the Optuna study" not in warn("--optuna-storage", "postgresql+psycopg2://u@db/optuna")  # a server keeps it
    assert "is relative" in warn("--storage", "runs", remote=False)
    assert warn("--storage", "/home/me/runs", remote=False) is None  # the local cluster shares this disk
    assert warn("--storage", "/mnt/shared/mcrlab/runs") is None
    assert "under none of the shared mounts (/mnt/shared" in warn("--storage", "/mnt/sharedx/runs")
    assert warn("--storage", "/efs/runs", env={"MCRLAB_SHARED_STORAGE": "/nfs:/efs"}) is None
    assert storage_warning(_parse_job("train", ["train.epochs=1"]), "train", remote=True) is None


def test_submit_checks_the_job_locally_and_sends_nothing_on_a_mistake(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "search_spaces" / "default.yaml").read_text().replace("method.lambda_m:", "method.lamda_m:"))
    # the address is never contacted (port 9: discard) and no runtime env file is written
    before = set(Path(tempfile.gettempdir()).glob("mcrlab-runtime-env-*"))
    assert main(["submit", "sweep", "--address", "http://127.0.0.1:9", str(bad), "--smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(bad) in err and "lamda_m" in err
    assert main(["submit", "sweep", "--address", "http://127.0.0.1:9", str(bad), "--bogus-flag"]) == 2
    assert "job arguments of sweep: unrecognized arguments: --bogus-flag" in capsys.readouterr().err
    assert main(["submit", "sweep", "--address", "http://127.0.0.1:9", str(bad), "--optuna-storage",
                 "postgresql+psycopg2://u:pw@db/x"]) == 2
    assert "holds a password" in capsys.readouterr().err
    assert set(Path(tempfile.gettempdir()).glob("mcrlab-runtime-env-*")) == before
    # --no-check submits it as it is (here: a dry run), and without --storage it warns in one line
    assert main(["submit", "sweep", "--address", "http://127.0.0.1:9", "--no-check", "--dry-run", str(bad)]) == 0
    out, err = capsys.readouterr()
    Path(shlex.split(out)[8]).unlink()
    warnings = [ln for ln in err.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "no --storage" in warnings[0]


# --------------------------------------------------------------------------------------------------
# integration: real Ray head + real MLflow server, jobs submitted from separate client processes


def _listeners(port: int) -> dict[str, set[int]]:
    """Listening TCP sockets on ``port``: local address (hex, as in /proc/net/tcp*) -> owning pids."""
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            host, hport = fields[1].split(":")
            if fields[3] == "0A" and int(hport, 16) == port:
                inodes[fields[9]] = host
    out: dict[str, set[int]] = {host: set() for host in inodes.values()}
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # process gone or not ours to read
        if target.startswith("socket:[") and target[8:-1] in inodes:
            out[inodes[target[8:-1]]].add(int(fd.parts[2]))
    return out


def _ray_env(local: cluster.LocalCluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(local.client_env(), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("cluster")
    # Auth stays ON here (conftest's RAY_AUTH_MODE=disabled is for the in-process fixture only); no worker
    # prestart keeps start-up light on 2 cores.
    # A head and a second node with one CPU each: trials may land on either, as on a real cluster.
    local = cluster.start(state, num_cpus=1, worker_cpus=1, timeout=240,
                          extra_env={"RAY_enable_worker_prestart": "0", "OMP_NUM_THREADS": "1"})
    try:
        yield local
    finally:
        cluster.stop(state, grace=5.0)


def _job_status_and_logs(local: cluster.LocalCluster, sid: str) -> tuple[str, str]:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(local.address, headers=cluster.auth_headers(local.token_path))
    return str(client.get_job_status(sid).value), client.get_job_logs(sid)


@pytest.mark.integration
@pytest.mark.slow
def test_services_bind_loopback_and_refuse_clients_without_the_token(local_cluster):
    assert cluster._alive_nodes(local_cluster.address, cluster.auth_headers(local_cluster.token_path)) == 2
    # `cluster status` reads the nodes and their CPUs from the real dashboard (head and second node: 1 CPU each)
    info = cluster.status(local_cluster.state_dir)
    assert [(n["head"], n["CPU"], n["GPU"]) for n in info["nodes"]] == [(True, 1.0, 0.0), (False, 1.0, 0.0)]
    assert info["jobs"] == [] and info["services"]["ray-head"]["answers"] and info["services"]["mlflow"]["answers"]
    text = cluster.format_status(info)
    assert "nodes: 2 alive, 2 CPUs, 0 GPUs" in text and local_cluster.address in text
    assert {s.name for s in local_cluster.services} == {"mlflow", "ray-head", "ray-worker"}
    for url in (local_cluster.address, local_cluster.tracking_uri):
        listeners = _listeners(int(url.rsplit(":", 1)[1]))
        ours = listeners.get("0100007F", set())
        assert ours, f"nothing listens on {url}"
        # The service's own process listens on loopback only (other processes may hold the same port number
        # on another address; Ray's agents bind the machine's address, see cluster.py's docstring).
        beyond = {host for host, pids in listeners.items() if pids & ours and host != "0100007F"}
        assert not beyond, f"{url} listens beyond 127.0.0.1: {beyond}"
    with pytest.raises(urllib.error.HTTPError) as no_token:
        urllib.request.urlopen(f"{local_cluster.address}/api/jobs/", timeout=10)
    assert no_token.value.code == 401
    req = urllib.request.Request(f"{local_cluster.address}/api/jobs/", headers={"Authorization": "Bearer wrong"})
    with pytest.raises(urllib.error.HTTPError) as bad_token:
        urllib.request.urlopen(req, timeout=10)
    assert bad_token.value.code in (401, 403)


@pytest.mark.integration
@pytest.mark.slow
def test_submitted_sweep_succeeds_and_its_runs_are_in_the_mlflow_server(local_cluster, tmp_path):
    import mlflow
    import yaml

    # The shipped default space, cut to one dataset and a small training set (the smoke switch does the rest).
    space = yaml.safe_load((ROOT / "search_spaces" / "default.yaml").read_text())
    space["datasets"] = space["datasets"][:1]
    space["base"].setdefault("data", {})["n_train"] = 512
    space_file = tmp_path / "tiny.yaml"
    space_file.write_text(yaml.safe_dump(space))
    sid = f"it-sweep-{os.getpid()}"
    env = _ray_env(local_cluster)
    env.pop("RAY_AUTH_TOKEN_PATH")  # `mcrlab submit` must find the token itself (from the state dir)
    env.pop("RAY_AUTH_MODE")
    cmd = [sys.executable, "-m", "mcrlab.cli", "submit", "sweep", "--state-dir", local_cluster.state_dir,
           "--submission-id", sid, "--tracking-uri", local_cluster.tracking_uri,
           str(space_file), "--smoke", "--num-samples", "1", "--storage", str(tmp_path / "runs")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    status, logs = _job_status_and_logs(local_cluster, sid)
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n--- job logs ---\n{logs[-3000:]}"
    assert status == "SUCCEEDED"
    assert "SUCCEEDED" in proc.stderr and sid in proc.stderr
    # The token is in no argument, runtime env or log of the job.
    from ray.job_submission import JobSubmissionClient

    token = Path(local_cluster.token_path).read_text().strip()
    info = JobSubmissionClient(local_cluster.address, headers=cluster.auth_headers(local_cluster.token_path)) \
        .get_job_info(sid)
    assert token not in json.dumps(info.runtime_env) + info.entrypoint + logs + proc.stdout + proc.stderr
    assert info.runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == local_cluster.tracking_uri
    client = mlflow.MlflowClient(tracking_uri=local_cluster.tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`mcrlab.kind` = 'trial'")
    assert len(runs) == 1, "one smoke trial"
    assert all(r.info.status == "FINISHED" and "val/acc" in r.data.metrics for r in runs)
    assert {r.data.tags.get("mcrlab.sweep_id") for r in runs} != {None}


@pytest.mark.integration
@pytest.mark.slow
def test_bad_spec_job_fails_with_the_clear_error_and_the_package_comes_from_the_runtime_env(local_cluster, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "search_spaces" / "default.yaml").read_text().replace("method.lambda_m:", "method.lamda_m:"))
    env = _ray_env(local_cluster)
    sid = f"it-bad-{os.getpid()}"
    # The documented command, as a user types it from the repository root.
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", local_cluster.address,
           "--submission-id", sid, "--runtime-env", RUNTIME_ENV, "--", "python", "jobs/sweep.py", str(bad), "--smoke"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    status, logs = _job_status_and_logs(local_cluster, sid)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert status == "FAILED"
    assert "mcrlab: error:" in logs and "lamda_m" in logs and str(bad) in logs
    assert "Traceback" not in logs

    # The same runtime env puts the shipped copy of platform/mcrlab first on the job's path, and the
    # uploaded checkout (without the excluded local state) is the job's working directory.
    sid = f"it-pkg-{os.getpid()}"
    probe = ("import mcrlab.cli.app, os; print('MCRLAB_FROM', os.path.dirname(mcrlab.cli.app.__file__)); "
             "print('CWD_HAS', os.path.isfile('jobs/sweep.py'), os.path.isfile('search_spaces/default.yaml'), "
             "os.path.isdir('.git'), os.path.isdir('.venv'))")
    cmd = [*cmd[:cmd.index("--")], "--", "python", "-c", probe]
    cmd[cmd.index("--submission-id") + 1] = sid
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    status, logs = _job_status_and_logs(local_cluster, sid)
    assert proc.returncode == 0 and status == "SUCCEEDED", logs[-2000:]
    where = next(line.split(" ", 1)[1] for line in logs.splitlines() if line.startswith("MCRLAB_FROM"))
    assert "runtime_resources" in where and not where.startswith(str(ROOT)), where
    assert "CWD_HAS True True False False" in logs, logs[-2000:]


def _readme_raw_command() -> str:
    """The raw submission block of jobs/README.md, as printed (``eval ...`` then ``ray job submit ...``)."""
    text = (ROOT / "jobs" / "README.md").read_text()
    block = text.split("```bash\n# the raw command", 1)[1].split("```", 1)[0]
    lines = [ln for ln in block.splitlines()[1:] if ln.strip() and not ln.startswith("#")]
    cut = next(i for i, ln in enumerate(lines) if ln.startswith("mcrlab submit"))
    return "\n".join(lines[:cut])


@pytest.mark.integration
@pytest.mark.slow
def test_the_documented_raw_ray_job_submit_runs_as_printed(local_cluster, tmp_path):
    import yaml

    raw = _readme_raw_command()
    assert raw.startswith('eval "$(mcrlab cluster env)"') and "ray job submit" in raw
    space = yaml.safe_load((ROOT / "search_spaces" / "default.yaml").read_text())
    space["datasets"], space["base"].setdefault("data", {})["n_train"] = space["datasets"][:1], 256
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(space))
    # as printed, but for the job's own arguments (a one-trial space: the address and token are under test)
    # and the --state-dir of this test's cluster; no RAY_* or MLFLOW_* in the shell beforehand
    command = raw.replace("mcrlab cluster env", f"mcrlab cluster env --state-dir {local_cluster.state_dir}")
    command = command.replace("search_spaces/default.yaml --smoke",
                              f"{tmp_path / 'tiny.yaml'} --smoke --num-samples 1 --storage {tmp_path / 'runs'}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "-ec", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    assert list((tmp_path / "runs" / "sweeps").glob("*/sweep.json")), "the job ran the sweep"

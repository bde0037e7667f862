"""A local development cluster (Ray head, optional second node, MLflow server) and Ray token discovery.

Everything binds to 127.0.0.1 where the service lets us choose (Ray dashboard + job API, MLflow). Ray's
internal gRPC servers (GCS, raylet, object manager) listen on all interfaces in Ray 2.60 whatever
``--node-ip-address`` says, so token authentication stays on outside tests: the cluster gets its own
random token in ``<state_dir>/auth_token`` (mode 0600) and every Ray process and client reads it through
``RAY_AUTH_TOKEN_PATH``. The user's ``~/.ray/auth_token`` is neither read nor written by ``start``.

Each service runs as ``ray start --block`` / ``mlflow server`` in its own session (process group), so
``stop`` ends exactly the processes this module started, never other Ray clusters on the same machine
(``ray stop`` would kill all of them). The state (pids, ports, token path) lives in
``<state_dir>/cluster.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mcrlab.config import ConfigError
from mcrlab.trials.session import TOKEN_FILE, protect_token_files

__all__ = ["ClusterError", "LocalCluster", "Service", "start", "stop", "load", "status", "format_status", "discover_token",
           "TokenSource", "auth_headers", "free_port", "DEFAULT_STATE_DIR"]

DEFAULT_STATE_DIR = "runs/cluster"
STATE_FILE = "cluster.json"
LOOPBACK = "127.0.0.1"


class ClusterError(RuntimeError):
    """A service of the local cluster failed to start or to answer; the message holds its log tail."""


@dataclass
class Service:
    """One process group started by ``start``: the leader's pid is also the group id."""

    name: str
    pid: int
    log: str
    url: str = ""


@dataclass
class LocalCluster:
    """What a client needs to reach the local cluster (persisted as JSON in the state dir)."""

    state_dir: str
    address: str                      # job submission / dashboard address, http://127.0.0.1:PORT
    gcs_address: str                  # 127.0.0.1:PORT, for `ray start --address` of more nodes
    ray_temp_dir: str
    token_path: str | None            # None: token auth disabled (tests only)
    tracking_uri: str | None          # http://127.0.0.1:PORT of the MLflow server, if started
    services: list[Service] = field(default_factory=list)

    def client_env(self) -> dict[str, str]:
        """Environment a client process (``ray job submit``) needs to talk to this cluster."""
        env = {"RAY_API_SERVER_ADDRESS": self.address}
        if self.token_path:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=self.token_path)
        else:
            env["RAY_AUTH_MODE"] = "disabled"
        if self.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        return env

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2))


# --------------------------------------------------------------------------------------------------
# helpers


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port free on every local address right now, not handed out before by this process.

    Racy by nature (callers retry on a failed start). Probing on all interfaces, not only 127.0.0.1, matters:
    some Ray agents bind the machine's own address, and a port they hold there is still free on 127.0.0.1,
    so a loopback-only probe could hand it to a service of ours (seen in CI: MLflow and Ray's runtime-env
    agent on the same port number, one on each address). Nothing binds the probe's socket beyond the probe.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free TCP port found in 100 tries")


def _executable(name: str) -> str:
    """The console script next to this interpreter (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise ConfigError(f"'{name}' is not installed (needed by the local cluster)")
    return found


def _write_token(path: Path) -> None:
    """A fresh random token, readable by the owner only (created 0600, never widened)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))


def auth_headers(token_path: str | None) -> dict[str, str]:
    """HTTP headers for the dashboard / job API (empty when auth is off)."""
    if not token_path:
        return {}
    return {"Authorization": f"Bearer {Path(token_path).read_text().strip()}"}


def _http_ok(url: str, headers: dict[str, str] | None = None, timeout: float = 3.0) -> bytes | None:
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (loopback URLs we built)
            return resp.read() if resp.status == 200 else None
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


def _log_tail(path: str, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) still answers kill(0); /proc tells them apart on Linux.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return True
    return True


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _spawn(name: str, cmd: list[str], env: dict[str, str], state_dir: Path) -> tuple[Service, subprocess.Popen]:
    log = state_dir / f"{name}.log"
    with open(log, "ab") as out:
        # Own session: survives the `mcrlab cluster up` process and is stopped as one group.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    return Service(name=name, pid=proc.pid, log=str(log)), proc


def _wait_until(what: str, check, proc: subprocess.Popen, log: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise ClusterError(f"{what} exited with code {proc.returncode} while starting; log {log}:\n"
                               f"{_log_tail(log)}")
        time.sleep(0.5)
    raise ClusterError(f"{what} did not become ready within {timeout:.0f} s; log {log}:\n{_log_tail(log)}")


def _ray_ports() -> list[str]:
    """Free ports for every Ray service that otherwise takes a fixed default (52365, 10001, ...), so a
    second cluster on the same machine never talks to another cluster's agent."""
    return ["--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]


def _alive_nodes(address: str, headers: dict[str, str]) -> int:
    body = _http_ok(f"{address}/api/v0/nodes?detail=false&limit=100", headers)
    if not body:
        return 0
    try:
        nodes = json.loads(body)["data"]["result"]["result"]
    except (ValueError, KeyError, TypeError):
        return 0
    return sum(1 for n in nodes if n.get("state") == "ALIVE")


# --------------------------------------------------------------------------------------------------
# start / stop / status


def start(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, *, num_cpus: int | None = None,
          worker_cpus: int = 0, mlflow: bool = True, auth: bool = True, timeout: float = 180.0,
          extra_env: dict[str, str] | None = None, head_attempts: int = 3) -> LocalCluster:
    """Start a Ray head (+ a second node with ``worker_cpus`` > 0) and an MLflow server on 127.0.0.1.

    ``auth=False`` is for tests only. The MLflow server stores runs in ``<state_dir>/mlflow.db`` and
    artifacts in ``<state_dir>/mlartifacts``; its URI is exported to every Ray process as
    MLFLOW_TRACKING_URI, so jobs log there by default (as on a real cluster, see infra/). MLflow and the
    head start in parallel (each takes tens of seconds on a busy machine). ``ray start`` gives its raylet
    a fixed 30 s to register, which an overloaded machine can miss: the head and the second node are
    each tried ``head_attempts`` times. On any failure everything started so far is stopped again.
    """
    sdir = Path(state_dir).resolve()
    sdir.mkdir(parents=True, exist_ok=True)
    os.chmod(sdir, 0o700)  # it holds the cluster's token and its MLflow store
    running = load(sdir)
    if running is not None and any(_alive(s.pid) for s in running.services):
        raise ConfigError(f"{sdir / STATE_FILE}: a local cluster is already running at {running.address}; "
                          "stop it first with `mcrlab cluster down`")
    token_path = sdir / TOKEN_FILE if auth else None
    if token_path is not None:
        _write_token(token_path)
    # Unix socket paths are limited to ~107 bytes: keep Ray's temp dir short, under /tmp.
    ray_tmp = tempfile.mkdtemp(prefix="mcrray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    cluster = LocalCluster(state_dir=str(sdir), address="", gcs_address="", ray_temp_dir=ray_tmp,
                           token_path=str(token_path) if token_path else None, tracking_uri=None)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    # Job entrypoints run `python ...` with the raylet's PATH: make it this interpreter's (the venv's).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(RAY_USAGE_STATS_ENABLED="0", **(extra_env or {}))
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)} if token_path
               else {"RAY_AUTH_MODE": "disabled"})
    headers = auth_headers(cluster.token_path)
    try:
        ml_proc = None
        if mlflow:
            ml_port = free_port()
            cluster.tracking_uri = f"http://{LOOPBACK}:{ml_port}"
            (sdir / "mlartifacts").mkdir(exist_ok=True)
            cmd = [_executable("mlflow"), "server", "--host", LOOPBACK, "--port", str(ml_port),
                   "--workers", "1", "--backend-store-uri", f"sqlite:///{sdir / 'mlflow.db'}",
                   "--artifacts-destination", str(sdir / "mlartifacts")]
            ml_svc, ml_proc = _spawn("mlflow", cmd, env, sdir)
            ml_svc.url = cluster.tracking_uri
            cluster.services.append(ml_svc)
            env["MLFLOW_TRACKING_URI"] = cluster.tracking_uri
        _retry(head_attempts, lambda: _start_head(cluster, env, headers, num_cpus, timeout))
        if ml_proc is not None:
            _wait_until("mlflow server", lambda: _http_ok(f"{cluster.tracking_uri}/health") is not None,
                        ml_proc, ml_svc.log, timeout)
        if worker_cpus > 0:
            _retry(head_attempts, lambda: _start_worker(cluster, env, headers, worker_cpus, timeout))
    except BaseException as err:
        cluster.save()
        stop(sdir, remove_logs=False)
        if isinstance(err, ClusterError):
            raise ClusterError(f"{err}\n(Ray's own logs kept in {ray_tmp}/*/session_latest/logs)") from None
        raise
    protect_token_files()  # a `ray` client run meanwhile may have left ~/.ray/auth_token readable
    return cluster


def _retry(attempts: int, fn) -> None:
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except ClusterError:
            if attempt == attempts:
                raise


def _start_worker(cluster: LocalCluster, env: dict[str, str], headers: dict[str, str], cpus: int,
                  timeout: float) -> None:
    """One attempt at a second node on this machine, joining the head's GCS."""
    # Its own temp dir: nodes sharing one would share runtime_resources/, and one node's runtime-env
    # garbage collection would delete a working_dir another node's job driver still runs in.
    node = [_executable("ray"), "start", "--block", "--address", cluster.gcs_address, "--node-ip-address",
            LOOPBACK, "--num-cpus", str(cpus), "--temp-dir", os.path.join(cluster.ray_temp_dir, "w"),
            "--disable-usage-stats", *_ray_ports()]
    cluster.services = [s for s in cluster.services if s.name != "ray-worker"]
    svc, proc = _spawn("ray-worker", node, env, Path(cluster.state_dir))
    cluster.services.append(svc)
    cluster.save()
    try:
        _wait_until("second ray node", lambda: _alive_nodes(cluster.address, headers) >= 2,
                    proc, svc.log, timeout)
    except ClusterError:
        _stop_service(svc, grace=5.0)
        raise


def _start_head(cluster: LocalCluster, env: dict[str, str], headers: dict[str, str],
                num_cpus: int | None, timeout: float) -> None:
    """One attempt at the head on fresh ports; a failed attempt's processes are stopped here."""
    gcs_port, dash_port = free_port(), free_port()
    cluster.address, cluster.gcs_address = f"http://{LOOPBACK}:{dash_port}", f"{LOOPBACK}:{gcs_port}"
    head = [_executable("ray"), "start", "--head", "--block", "--node-ip-address", LOOPBACK,
            "--port", str(gcs_port), "--dashboard-host", LOOPBACK, "--dashboard-port", str(dash_port),
            "--ray-client-server-port", str(free_port()), "--temp-dir", os.path.join(cluster.ray_temp_dir, "h"),
            "--disable-usage-stats", *_ray_ports(), *(["--num-cpus", str(num_cpus)] if num_cpus is not None else [])]
    cluster.services = [s for s in cluster.services if s.name != "ray-head"]
    svc, proc = _spawn("ray-head", head, env, Path(cluster.state_dir))
    svc.url = cluster.address
    cluster.services.append(svc)
    cluster.save()
    # The job API answers before the head's raylet has registered; both are needed for `ray job submit`.
    try:
        _wait_until("ray head", lambda: _http_ok(f"{cluster.address}/api/jobs/", headers) is not None
                    and _alive_nodes(cluster.address, headers) >= 1, proc, svc.log, timeout)
    except ClusterError:
        _stop_service(svc, grace=5.0)
        raise


def load(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> LocalCluster | None:
    """The cluster recorded in ``state_dir`` (None when there is none)."""
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        raw["services"] = [Service(**s) for s in raw.get("services", [])]
        return LocalCluster(**raw)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path}: unreadable cluster state ({err}); remove the file") from None


def _stop_service(svc: Service, grace: float) -> None:
    if not _group_alive(svc.pid):
        return
    # The leader (`ray start --block`, `mlflow server`) shuts its children down on SIGTERM ...
    with contextlib.suppress(ProcessLookupError):
        os.kill(svc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(svc.pid):
        time.sleep(0.2)
    # ... and whatever is left of the group after the grace period is killed.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(svc.pid, signal.SIGKILL)


def stop(state_dir: str | os.PathLike = DEFAULT_STATE_DIR, grace: float = 10.0,
         remove_logs: bool = True) -> list[str]:
    """Stop every service recorded in ``state_dir`` (newest first); returns their names.

    ``remove_logs=False`` keeps Ray's temp dir (its logs) for a post-mortem.
    """
    cluster = load(state_dir)
    if cluster is None:
        return []
    stopped = []
    for svc in reversed(cluster.services):
        _stop_service(svc, grace)
        stopped.append(svc.name)
    for _ in range(5 if remove_logs else 0):  # killed processes may still be flushing their logs
        shutil.rmtree(cluster.ray_temp_dir, ignore_errors=True)
        if not os.path.exists(cluster.ray_temp_dir):
            break
        time.sleep(0.5)
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    if cluster.token_path:
        Path(cluster.token_path).unlink(missing_ok=True)
    return stopped


def _nodes(address: str, headers: dict[str, str]) -> list[dict]:
    """The cluster's alive nodes from the dashboard's state API: ``[{"ip", "head", "CPU", "GPU"}]``."""
    body = _http_ok(f"{address}/api/v0/nodes?detail=true&limit=100", headers)
    try:
        nodes = json.loads(body)["data"]["result"]["result"] if body else []
    except (ValueError, KeyError, TypeError):
        return []
    out = []
    for n in nodes:
        if not isinstance(n, dict) or n.get("state") != "ALIVE":
            continue
        res = n.get("resources_total") or {}
        out.append({"ip": n.get("node_ip", "?"), "head": bool(n.get("is_head_node")),
                    "CPU": float(res.get("CPU", 0)), "GPU": float(res.get("GPU", 0))})
    return sorted(out, key=lambda n: (not n["head"], n["ip"]))


def _jobs(address: str, headers: dict[str, str]) -> list[dict]:
    """Jobs not yet finished (PENDING, RUNNING): ``[{"id", "status", "entrypoint"}]``."""
    body = _http_ok(f"{address}/api/jobs/", headers)
    try:
        jobs = json.loads(body) if body else []
    except ValueError:
        return []
    return [{"id": j.get("submission_id") or j.get("job_id") or "?", "status": j.get("status", "?"),
             "entrypoint": str(j.get("entrypoint", ""))}
            for j in jobs if isinstance(j, dict) and j.get("status") in ("PENDING", "RUNNING")]


def status(state_dir: str | os.PathLike = DEFAULT_STATE_DIR) -> dict:
    """Per service: pid, whether it runs, whether it answers on its URL; the alive nodes with their CPUs and
    GPUs and the unfinished jobs (when the head answers); plus the client settings (``client_env``)."""
    cluster = load(state_dir)
    if cluster is None:
        return {"running": False, "state_dir": str(Path(state_dir).resolve())}
    headers = auth_headers(cluster.token_path) if cluster.token_path and Path(cluster.token_path).exists() else {}
    services = {}
    for svc in cluster.services:
        probe = {"ray-head": f"{svc.url}/api/version", "mlflow": f"{svc.url}/health"}.get(svc.name) if svc.url else None
        services[svc.name] = {"pid": svc.pid, "alive": _alive(svc.pid), "log": svc.log,
                              "answers": bool(probe and _http_ok(probe, headers) is not None)}
    head_up = services.get("ray-head", {}).get("answers", False)
    return {"running": any(s["alive"] for s in services.values()), "state_dir": cluster.state_dir,
            "address": cluster.address, "tracking_uri": cluster.tracking_uri,
            "token_path": cluster.token_path, "services": services,
            "nodes": _nodes(cluster.address, headers) if head_up else [],
            "jobs": _jobs(cluster.address, headers) if head_up else [],
            "client_env": cluster.client_env()}


def format_status(info: dict) -> str:
    """``status()`` for people: services, nodes with CPUs/GPUs, unfinished jobs, the URLs and the exports."""
    if "address" not in info:
        return f"no local cluster recorded in {info['state_dir']} (start one with `mcrlab cluster up`)"
    lines = [f"dashboard / job API  {info['address']}",
             f"mlflow               {info['tracking_uri'] or '(not started)'}",
             f"state                {info['state_dir']}", "", "services:"]
    for name, svc in info["services"].items():
        state = ("up" if svc["answers"] else "running, not answering") if svc["alive"] else "stopped"
        lines.append(f"  {name:<11} pid {svc['pid']:<8} {state}   log {svc['log']}")
    nodes = info.get("nodes") or []
    lines.append(f"nodes: {len(nodes)} alive, {sum(n['CPU'] for n in nodes):g} CPUs, "
                 f"{sum(n['GPU'] for n in nodes):g} GPUs")
    for n in nodes:
        lines.append(f"  {n['ip']:<15} {'head  ' if n['head'] else 'worker'} {n['CPU']:g} CPU  {n['GPU']:g} GPU")
    jobs = info.get("jobs") or []
    lines.append(f"jobs: {len(jobs)} pending or running" + (":" if jobs else ""))
    for j in jobs:
        entry = j["entrypoint"] if len(j["entrypoint"]) <= 70 else j["entrypoint"][:67] + "..."
        lines.append(f"  {j['id']:<32} {j['status']:<8} {entry}")
    lines += ["", "clients in other shells (or: eval \"$(mcrlab cluster env)\"):"]
    lines += [f"  export {k}={v}" for k, v in info.get("client_env", {}).items()]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# token discovery for clients (`ray job submit`, `mcrlab submit`)


@dataclass
class TokenSource:
    """Where a client's Ray token comes from; ``env`` is what to add to the client's environment."""

    origin: str                  # human-readable: "RAY_AUTH_TOKEN", "local cluster ...", "none", ...
    env: dict[str, str]
    token_path: str | None = None

    def headers(self) -> dict[str, str]:
        if "RAY_AUTH_TOKEN" in self.env:
            return {"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}
        return auth_headers(self.token_path)


def discover_token(address: str, state_dir: str | os.PathLike = DEFAULT_STATE_DIR,
                   environ: dict[str, str] | None = None, home: str | os.PathLike | None = None) -> TokenSource:
    """Find the token for ``address``, in Ray's own order plus the local dev cluster:

    1. RAY_AUTH_TOKEN, 2. RAY_AUTH_TOKEN_PATH (Ray's precedence), 3. the local cluster recorded in
    ``state_dir`` when ``address`` is its address, 4. ``~/.ray/auth_token`` (Ray's default file; where
    ``ray get-auth-token`` and the infra/README put a team cluster's token) unless RAY_AUTH_MODE=disabled.
    The token itself never goes on a command line: clients get a path or inherit the variable.
    """
    environ = dict(os.environ if environ is None else environ)
    if environ.get("RAY_AUTH_TOKEN"):
        return TokenSource("RAY_AUTH_TOKEN", {"RAY_AUTH_MODE": "token",
                                              "RAY_AUTH_TOKEN": environ["RAY_AUTH_TOKEN"]})
    if environ.get("RAY_AUTH_TOKEN_PATH"):
        path = environ["RAY_AUTH_TOKEN_PATH"]
        if not Path(path).is_file():
            raise ConfigError(f"RAY_AUTH_TOKEN_PATH: no token file at {path}")
        return TokenSource("RAY_AUTH_TOKEN_PATH", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": path}, path)
    local = load(state_dir) if Path(state_dir, STATE_FILE).exists() else None
    if local is not None and local.address.rstrip("/") == address.rstrip("/"):
        if local.token_path is None:
            return TokenSource(f"local cluster {local.state_dir} (auth disabled)", {"RAY_AUTH_MODE": "disabled"})
        return TokenSource(f"local cluster {local.state_dir}",
                           {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": local.token_path}, local.token_path)
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return TokenSource("RAY_AUTH_MODE=disabled", {"RAY_AUTH_MODE": "disabled"})
    default = Path(home if home is not None else Path.home()) / ".ray" / "auth_token"
    if default.is_file():
        return TokenSource(str(default), {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(default)},
                           str(default))
    return TokenSource("none", {})

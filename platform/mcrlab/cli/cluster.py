"""``mcrlab cluster up|down|status`` (local dev cluster) and ``mcrlab submit <kind>`` (``ray job submit``).

``mcrlab submit sweep search_spaces/default.yaml --storage s3://bucket/ray`` runs, from the repository root
of any machine with the Ray client installed::

    ray job submit --address URL --submission-id mcrlab-sweep-... --runtime-env-json '{...}' \\
        -- python jobs/sweep.py search_spaces/default.yaml --storage s3://bucket/ray

with the runtime env of jobs/runtime_env.yaml (paths resolved against the repository root, the tracking
URI added), streams the job's logs, and exits with the job's status: 0 SUCCEEDED, 1 FAILED or STOPPED.
Before anything is uploaded, the job's arguments and the files they name (search space, ablation spec,
config) get the checks of ``mcrlab check`` / ``ablate --dry-run`` / ``train --print-config`` here: a
mistake ends with one line and exit code 2, nothing sent (``--no-check`` skips this, e.g. for data that
exists on the cluster only). A sweep without ``--storage`` on shared storage gets a one-line warning.
The options of ``submit`` (below) come right after KIND; the first other word starts the job's own
arguments, which go to jobs/<kind>.py unchanged (a ``--`` also ends the submit options).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from mcrlab.config import ConfigError, read_yaml
from mcrlab.ops import cluster

__all__ = ["register", "JOB_SCRIPTS", "build_runtime_env", "submit_command", "resolve_address",
           "write_runtime_env", "check_job", "storage_warning", "SHARED_STORAGE_ENV"]

JOB_SCRIPTS = {"sweep": "jobs/sweep.py", "ablate": "jobs/ablate.py", "train": "jobs/train.py",
               "benchmark": "jobs/benchmark_job.py"}
RUNTIME_ENV = "jobs/runtime_env.yaml"
RUNTIME_ENV_KEYS = {"working_dir", "py_modules", "excludes", "env_vars", "pip", "uv", "config"}
# Mount points of storage every node of the team's cluster sees (os.pathsep-separated; infra/: /mnt/shared).
SHARED_STORAGE_ENV = "MCRLAB_SHARED_STORAGE"
DEFAULT_SHARED = "/mnt/shared"
# A runtime env is stored in the GCS and shown by the dashboard: no credentials in it, ever.
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|ACCESS_KEY|PRIVATE_KEY|API_KEY", re.I)


# --------------------------------------------------------------------------------------------------
# runtime env and command


def repo_root(start: Path | None = None) -> Path:
    """The directory holding jobs/runtime_env.yaml: the current one or one above it (never the package's
    own location: an installed package knows no checkout)."""
    here = (start or Path.cwd()).resolve()
    for cand in (here, *here.parents):
        if (cand / RUNTIME_ENV).is_file():
            return cand
    raise ConfigError(f"{RUNTIME_ENV}: not found; run from the repository root or pass --runtime-env")


def _check_env_name(key: str, where: str) -> None:
    if SECRET_NAME.search(key):
        raise ConfigError(f"{where}: '{key}' looks like a secret; runtime envs are visible in the dashboard, "
                          "give secrets to the cluster nodes instead (Kubernetes Secret, see infra/README.md)")


def build_runtime_env(path: str | os.PathLike, root: Path, tracking_uri: str | None = None,
                      extra_env: dict[str, str] | None = None) -> dict:
    """Load the runtime env YAML (safely), resolve its local paths against ``root`` and add env vars.

    Local paths in the file are relative to the repository root (where the documented ``ray job
    submit --runtime-env jobs/runtime_env.yaml`` is run from); remote URIs (s3://, gs://, https://)
    are kept as they are.
    """
    env = read_yaml(path)
    if env is None:
        raise ConfigError(f"{path}: runtime env file is empty")
    if not isinstance(env, dict):
        raise ConfigError(f"{path}: expected a mapping of runtime env fields, got {type(env).__name__}")
    unknown = sorted(set(env) - RUNTIME_ENV_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown runtime env field(s) {unknown}; allowed: {sorted(RUNTIME_ENV_KEYS)}")

    def local(p: str) -> str:
        return p if "://" in p else str((root / p).resolve())

    if "working_dir" in env:
        env["working_dir"] = local(str(env["working_dir"]))
    if "py_modules" in env:
        env["py_modules"] = [local(str(m)) for m in env["py_modules"]]
    env_vars = {str(k): str(v) for k, v in (env.get("env_vars") or {}).items()}
    for key in env_vars:
        _check_env_name(key, f"{path}: env_vars")
    for key, value in (extra_env or {}).items():
        _check_env_name(key, "--env")
        env_vars[key] = value
    if tracking_uri:
        if urllib.parse.urlsplit(tracking_uri).password:
            raise ConfigError("MLFLOW_TRACKING_URI: holds a password; give credentials to the cluster nodes "
                              "(MLFLOW_TRACKING_USERNAME/PASSWORD from a Secret), not to the job")
        env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    if env_vars:
        env["env_vars"] = env_vars
    return env


def resolve_address(address: str | None, state_dir: str) -> str:
    """--address, else RAY_API_SERVER_ADDRESS / RAY_ADDRESS (http), else the local dev cluster."""
    for cand in (address, os.environ.get("RAY_API_SERVER_ADDRESS"), os.environ.get("RAY_ADDRESS")):
        if cand and cand.startswith(("http://", "https://")):
            return cand.rstrip("/")
        if cand and address is cand:
            raise ConfigError(f"--address: '{cand}' is not a job API address (expected http://HOST:8265)")
    local = cluster.load(state_dir)
    if local is not None:
        return local.address
    raise ConfigError("--address: no cluster given; pass --address http://HOST:8265, set "
                      "RAY_API_SERVER_ADDRESS, or start a local one with `mcrlab cluster up`")


def write_runtime_env(runtime_env: dict) -> Path:
    """The runtime env as a private file (0600, created by mkstemp) for ``ray job submit --runtime-env``:
    its values (``--env``, the tracking URI) never appear in a process list, as ``--runtime-env-json``
    would put them."""
    fd, name = tempfile.mkstemp(prefix="mcrlab-runtime-env-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(runtime_env, f, sort_keys=True)
    return Path(name)


def submit_command(ray: str, address: str, submission_id: str, runtime_env_file: str | os.PathLike, script: str,
                   job_args: list[str], no_wait: bool = False, entrypoint_num_gpus: float | None = None) -> list[str]:
    """The exact ``ray job submit`` argv: no secrets and no environment values in it (the token travels in
    the environment, the runtime env in a 0600 file, see ``write_runtime_env``)."""
    cmd = [ray, "job", "submit", "--address", address, "--submission-id", submission_id,
           "--runtime-env", str(runtime_env_file)]
    if entrypoint_num_gpus:
        cmd += ["--entrypoint-num-gpus", str(entrypoint_num_gpus)]
    if no_wait:
        cmd.append("--no-wait")
    return [*cmd, "--", "python", script, *job_args]


def _job_status(address: str, submission_id: str, headers: dict[str, str]) -> str | None:
    from ray.job_submission import JobSubmissionClient

    try:
        return str(JobSubmissionClient(address, headers=headers).get_job_status(submission_id).value)
    except Exception as err:  # the status query is advisory: fall back to ray job submit's exit code
        print(f"mcrlab: could not read the job status ({err})", file=sys.stderr)
        return None


# --------------------------------------------------------------------------------------------------
# local checks of the job before upload


def _parse_job(kind: str, job_args: list[str]) -> argparse.Namespace:
    """The job's arguments parsed by the very parser jobs/<kind>.py runs (``mcrlab <kind>``); an argparse
    error becomes one ConfigError line instead of a usage text and an exit."""
    from mcrlab.cli.app import _split_config_arg, build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args([kind, *job_args])
    except SystemExit:
        last = next((ln for ln in reversed(err.getvalue().splitlines()) if ln.strip()), "invalid arguments")
        raise ConfigError(f"job arguments of {kind}: {last.split('error: ', 1)[-1]}") from None
    _split_config_arg(args)
    return args


def check_job(kind: str, job_args: list[str]) -> argparse.Namespace | None:
    """Run the job's own input checks on this machine (no Ray, no MLflow, nothing written): a sweep's space
    as ``mcrlab check`` does (every dataset loaded, the metric known, sampled points built), an ablation
    spec as ``ablate --dry-run`` (shard folders missing here are skipped), a train config with its
    overrides. Raises ConfigError naming the file and key. Returns the parsed job arguments (None for a
    benchmark, whose scripts have their own arguments)."""
    if kind == "benchmark":
        return None
    args = _parse_job(kind, job_args)
    if kind == "sweep":
        from mcrlab.tune.check import check_space

        if args.num_samples is not None and args.num_samples < 1:
            raise ConfigError("--num-samples: must be >= 1")
        if args.optuna_storage is not None:  # its form only: the database may be reachable from the cluster only
            from mcrlab.tune.shared import check_optuna_storage

            check_optuna_storage(args.optuna_storage, connect=False)
        elif args.study is not None:
            raise ConfigError("--study: names a study shared through --optuna-storage; give that URL too")
        check_space(args.space, n=1, smoke=args.smoke, out=io.StringIO(), check_uri=False)
    elif kind == "ablate":
        from mcrlab.ablate.runner import check_cells
        from mcrlab.ablate.spec import load_spec
        from mcrlab.config import read_yaml

        raw = read_yaml(args.spec)
        if args.base_run or (isinstance(raw, dict) and "base_run" in raw):
            print("mcrlab submit: the spec's base comes from an MLflow run of the cluster: not checked here",
                  file=sys.stderr)
            return args
        check_cells(load_spec(args.spec, smoke=args.smoke), missing_ok=True)
    elif kind == "train" and not args.from_run:
        from mcrlab.cli.app import train_config

        train_config(args)
    return args


def storage_warning(args: argparse.Namespace | None, kind: str, remote: bool,
                    environ: Mapping[str, str] | None = None) -> str | None:
    """One line when a sweep's run folder would not outlive its job: no ``--storage`` or a relative one
    (the job's temporary working directory), or, on a remote cluster, a path under none of the shared
    mounts (``MCRLAB_SHARED_STORAGE``, default /mnt/shared): each node would see its own folder."""
    if kind != "sweep" or args is None:
        return None
    env: Mapping[str, str] = os.environ if environ is None else environ
    lost = ("the run folder (Tune state, checkpoints" + ("" if args.optuna_storage else ", the Optuna study")
            + ") would be in the job's temporary working directory, lost with it or at `cluster down`")
    if not args.storage:
        return f"mcrlab submit: warning: no --storage: {lost}; pass --storage PATH on shared storage"
    path = args.storage
    if not os.path.isabs(os.path.expanduser(path)):
        return f"mcrlab submit: warning: --storage {path} is relative: {lost}; give an absolute shared path"
    if not remote:
        return None  # the local cluster's nodes share this machine's disk
    mounts = [m.rstrip("/") for m in env.get(SHARED_STORAGE_ENV, DEFAULT_SHARED).split(os.pathsep) if m]
    if any(path == m or path.startswith(m + "/") for m in mounts):
        return None
    return (f"mcrlab submit: warning: --storage {path} is under none of the shared mounts ({', '.join(mounts)}; "
            f"set {SHARED_STORAGE_ENV}): on a multi-node cluster each node would see its own folder")


# --------------------------------------------------------------------------------------------------
# handlers


def cmd_submit(args: argparse.Namespace) -> int:
    own, job_args = _split_job_args(args.rest)
    opts = _submit_parser().parse_args(own, namespace=argparse.Namespace(**vars(args)))
    job_args = [*opts.job_args, *job_args]
    try:
        root: Path | None = repo_root()
    except ConfigError:
        root = None  # refused below, after the job's own mistakes (the more useful message)
    parsed = None
    # before anything is uploaded: a mistake costs no cluster time. In the repository root, since the job's
    # relative paths are relative to its working_dir, the uploaded checkout.
    with contextlib.chdir(root or Path.cwd()):
        if not opts.no_check:
            parsed = check_job(opts.kind, job_args)
        elif opts.kind == "sweep":
            with contextlib.suppress(ConfigError):
                parsed = _parse_job(opts.kind, job_args)
    root = root or repo_root()
    address = resolve_address(opts.address, opts.state_dir)
    local = cluster.load(opts.state_dir) if Path(opts.state_dir, cluster.STATE_FILE).exists() else None
    warning = storage_warning(parsed, opts.kind, remote=local is None or local.address != address)
    if warning:
        print(warning, file=sys.stderr)
    extra = dict(_parse_env(e) for e in opts.env)
    tracking = opts.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if tracking and not tracking.startswith(("http://", "https://", "databricks")) \
            and urllib.parse.urlsplit(address).hostname not in ("127.0.0.1", "localhost", "::1"):
        print(f"mcrlab: not passing the local tracking URI {tracking} to a remote cluster; "
              "the cluster's MLFLOW_TRACKING_URI applies", file=sys.stderr)
        tracking = None
    runtime_env = build_runtime_env(opts.runtime_env or root / RUNTIME_ENV, root, tracking, extra)
    sid = opts.submission_id or f"mcrlab-{opts.kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
    token = cluster.discover_token(address, opts.state_dir)
    ray_exe = cluster._executable("ray")
    env_file = write_runtime_env(runtime_env)
    cmd = submit_command(ray_exe, address, sid, env_file, JOB_SCRIPTS[opts.kind],
                         job_args, opts.no_wait, opts.entrypoint_num_gpus)
    if opts.dry_run:
        print(shlex.join(cmd))
        print(f"mcrlab: the runtime env is in {env_file} (mode 0600); delete it when done", file=sys.stderr)
        return 0
    env = {**os.environ, **token.env}
    print(f"mcrlab: submitting {sid} to {address} (token: {token.origin})", file=sys.stderr, flush=True)
    try:
        rc = subprocess.call(cmd, env=env, cwd=root)
    finally:
        env_file.unlink(missing_ok=True)
    if opts.no_wait or rc not in (0, 1):
        return rc
    status = _job_status(address, sid, token.headers())
    print(f"mcrlab: job {sid} {status or 'status unknown'}", file=sys.stderr)
    if status is None:
        return rc
    return 0 if status == "SUCCEEDED" else 1


def _split_job_args(rest: list[str]) -> tuple[list[str], list[str]]:
    if "--" in rest:
        i = rest.index("--")
        return rest[:i], rest[i + 1:]
    return rest, []


def _parse_env(item: str) -> tuple[str, str]:
    """``KEY=VALUE``, or ``KEY`` alone: the value of KEY in this environment (then it is in no argv)."""
    key, sep, value = item.partition("=")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise ConfigError(f"--env: '{key[:40]}' is not KEY=VALUE or KEY")  # never echo the value
    if not sep:
        if key not in os.environ:
            raise ConfigError(f"--env: {key} is not set in this environment")
        value = os.environ[key]
    return key, value


def _submit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mcrlab submit KIND", add_help=False)
    p.add_argument("--address", help="job API address, http://HOST:8265 (default: RAY_API_SERVER_ADDRESS, "
                                     "then the local cluster of --state-dir)")
    p.add_argument("--no-wait", action="store_true", help="submit and return; do not stream logs")
    p.add_argument("--dry-run", action="store_true", help="print the `ray job submit` command and exit")
    p.add_argument("--no-check", action="store_true",
                   help="skip the local checks of the job's files (e.g. data that exists on the cluster only)")
    p.add_argument("--runtime-env", help=f"runtime env YAML (default: {RUNTIME_ENV})")
    p.add_argument("--tracking-uri", help="MLflow URI for the job (default: MLFLOW_TRACKING_URI; a file or sqlite URI only to a local cluster)")
    p.add_argument("--submission-id", help="job id (default: mcrlab-KIND-DATE-RANDOM)")
    p.add_argument("--env", action="append", default=[], metavar="KEY[=VALUE]",
                   help="extra environment variable for the job; KEY alone passes this shell's value (it then "
                        "appears in no command line); names that look like secrets are refused")
    p.add_argument("--entrypoint-num-gpus", type=float, help="GPUs reserved for the driver process")
    p.add_argument("--state-dir", default=cluster.DEFAULT_STATE_DIR, help="local cluster state directory")
    p.add_argument("job_args", nargs=argparse.REMAINDER)
    return p


def _submit_options_help() -> str:
    text = _submit_parser().format_help()
    return "submit options (right after KIND):\n" + text[text.index("options:") + len("options:\n"):]


def cmd_up(args: argparse.Namespace) -> int:
    c = cluster.start(args.state_dir, num_cpus=args.num_cpus, worker_cpus=args.worker_cpus,
                      mlflow=not args.no_mlflow, timeout=args.timeout)
    print(f"ray job API  {c.address}   (the dashboard too)\nmlflow       {c.tracking_uri or '(not started)'}\n"
          f"token file   {c.token_path}\nstate        {c.state_dir}\n\n"
          f"for clients in other shells (or: eval \"$(mcrlab cluster env{_state_flag(args)})\"):")
    for key, value in c.client_env().items():
        print(f"  export {key}={value}")
    print(f"stop with: mcrlab cluster down{_state_flag(args)}")
    return 0


def _state_flag(args: argparse.Namespace) -> str:
    return f" --state-dir {shlex.quote(args.state_dir)}" if args.state_dir != cluster.DEFAULT_STATE_DIR else ""


def cmd_down(args: argparse.Namespace) -> int:
    stopped = cluster.stop(args.state_dir, grace=args.grace)
    print(f"stopped: {', '.join(stopped)}" if stopped else f"no local cluster recorded in {args.state_dir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    info = cluster.status(args.state_dir)
    print(json.dumps(info, indent=2) if args.json else cluster.format_status(info))
    return 0 if info["running"] else 1


def cmd_env(args: argparse.Namespace) -> int:
    """``export`` lines for a shell: ``eval "$(mcrlab cluster env)"`` then plain ``ray job submit`` works."""
    local = cluster.load(args.state_dir)
    if local is None:
        raise ConfigError(f"--state-dir: no local cluster recorded in {args.state_dir}; start one with "
                          "`mcrlab cluster up`")
    for key, value in local.client_env().items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``cluster up|down|status`` and ``submit`` to the ``mcrlab`` sub-commands."""
    pc = sub.add_parser("cluster", help="start/stop a local Ray head + MLflow server on 127.0.0.1",
                        description="A local development cluster: Ray head (token auth on), optional second "
                                    "node, MLflow server; all bound to 127.0.0.1.")
    csub = pc.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    up = csub.add_parser("up", help="start the cluster and print the client settings")
    up.add_argument("--num-cpus", type=int, default=None, help="CPUs of the head node (default: all)")
    up.add_argument("--worker-cpus", type=int, default=0, help="start a second node with this many CPUs")
    up.add_argument("--no-mlflow", action="store_true", help="do not start an MLflow server")
    up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for each service")
    up.set_defaults(func=cmd_up)
    down = csub.add_parser("down", help="stop every process the cluster started (only those)")
    down.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    down.set_defaults(func=cmd_down)
    st = csub.add_parser("status", help="services, nodes (CPUs/GPUs), running jobs, dashboard and MLflow URLs "
                                        "(exit 1 when nothing runs)")
    st.add_argument("--json", action="store_true", help="the same as JSON")
    st.set_defaults(func=cmd_status)
    env = csub.add_parser("env", help="print the client settings as export lines: eval \"$(mcrlab cluster env)\"",
                          description="Print RAY_API_SERVER_ADDRESS (the job API on its random port), the token "
                                      "settings and MLFLOW_TRACKING_URI of the local cluster as shell export lines; "
                                      "after eval \"$(mcrlab cluster env)\", `ray job submit` needs no --address.")
    env.set_defaults(func=cmd_env)
    for p in (up, down, st, env):
        p.add_argument("--state-dir", default=cluster.DEFAULT_STATE_DIR,
                       help=f"where pids, ports, logs and the token live (default: {cluster.DEFAULT_STATE_DIR})")

    ps = sub.add_parser("submit", help="submit a sweep/ablation/train/benchmark as a Ray job (ray job submit)",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog=_submit_options_help())
    ps.add_argument("kind", choices=sorted(JOB_SCRIPTS), help="which jobs/<kind> script runs")
    ps.add_argument("rest", nargs=argparse.REMAINDER, help="submit options, then the job's arguments")
    ps.set_defaults(func=cmd_submit)

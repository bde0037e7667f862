"""MLflow tracking: where runs go, lineage tags, nested runs, and a small query API.

Layout of a sweep in MLflow (one experiment per sweep)::

    sweep run            tags kind=sweep, mcrlab.sweep_id
      study run          kind=study, mcrlab.study=<dataset>, mlflow.parentRunId=<sweep run>
        trial run        kind=trial, mcrlab.trial_id, config hash, dataset fingerprint, git commit

Writes go through ``MlflowClient`` with explicit run ids (no fluent "active run" state), from one
process (the sweep driver): SQLite locks under parallel writers. This module imports no Ray.
"""

from __future__ import annotations

import functools
import math
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mcrlab.config import ConfigError

__all__ = [
    "DEFAULT_RUN_FOLDER",
    "resolve_tracking_uri",
    "check_tracking",
    "check_tracking_uri",
    "artifact_location",
    "git_commit",
    "lineage_tags",
    "Tracker",
    "find_runs",
    "log_nested_run",
    "filter_value",
    "tag_filter",
]

DEFAULT_RUN_FOLDER = "runs"
TAG_PREFIX = "mcrlab."
PARENT_TAG = "mlflow.parentRunId"


def filter_value(value: Any) -> str:
    """``value`` as a string literal of an MLflow filter (``tags.x = <literal>``).

    MLflow's filter grammar has no escape sequences: a value holding ``'`` must be written in double
    quotes and one holding ``"`` in single quotes; a value holding both cannot be expressed at all and
    raises ConfigError (dataset paths and names are checked with this before anything starts).
    """
    text = str(value)
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    from mcrlab.config import short

    raise ConfigError(f"{short(text)} holds both ' and \", which an MLflow search filter cannot express; "
                      "rename it")


def tag_filter(tags: dict[str, Any]) -> str:
    """``tags.`k` = 'v' and ...`` with every value quoted by ``filter_value``."""
    return " and ".join(f"tags.`{k}` = {filter_value(v)}" for k, v in tags.items())


def resolve_tracking_uri(uri: str | None = None, run_folder: str | Path = DEFAULT_RUN_FOLDER) -> str:
    """``uri`` > ``$MLFLOW_TRACKING_URI`` > ``sqlite:///<absolute run folder>/mlflow.db``.

    The default is absolute on purpose: under ``ray job submit`` the working directory is a
    temporary copy, and a relative store would vanish with it.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if (uri.startswith("sqlite:///") and not uri.startswith("sqlite:////")
                and uri[len("sqlite:///"):].strip() and not uri[len("sqlite:///"):].startswith(":memory:")):
            # sqlite:///relative.db -> make it absolute (same reason as above)
            uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
        return uri
    folder = Path(run_folder).expanduser().resolve()
    return f"sqlite:///{folder / 'mlflow.db'}"


def artifact_location(uri: str, run_folder: str | Path = DEFAULT_RUN_FOLDER) -> str | None:
    """Where a new experiment stores artifacts: next to a local SQLite store; the server's default
    otherwise (None). MLflow's own default for SQLite is ``./mlartifacts``, relative to the cwd."""
    if uri.startswith("sqlite:"):
        db = Path(uri.split("sqlite:///", 1)[-1])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


TRACKING_WHERE = "tracking URI (--tracking-uri / MLFLOW_TRACKING_URI)"
SUPPORTED = "sqlite:///<absolute path>/mlflow.db or an MLflow server http(s)://host[:port]"


def check_tracking_uri(uri: str) -> None:
    """The URI's form only, with no side effect (nothing created, nothing contacted): a SQLite file by
    absolute path, or an MLflow server by host. Everything else is one ConfigError line."""
    from mcrlab.config import cut

    where = TRACKING_WHERE
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if not uri.isprintable() or len(uri) > 2048:
        raise ConfigError(f"{where}: not a URI ({cut(repr(uri))})")
    if uri.strip().lower().startswith("databricks"):
        raise ConfigError(f"{where}: '{cut(uri)}': Databricks tracking is not supported by mcrlab (runs are "
                          f"found again by tag filters on {SUPPORTED})")
    if scheme == "sqlite":
        if not uri.startswith("sqlite:///"):
            raise ConfigError(f"{where}: '{cut(uri)}' is not a SQLite file URI; write {SUPPORTED}")
        path = uri[len("sqlite:///"):]
        if not path or path.startswith(":memory:") or "?" in path:
            raise ConfigError(f"{where}: '{cut(uri)}' names no database file (an in-memory store loses every "
                              f"run); write {SUPPORTED}")
        if not Path(path).is_absolute():
            raise ConfigError(f"{where}: '{cut(uri)}': the database path must be absolute")
        if Path(path).is_dir():
            raise ConfigError(f"{where}: '{cut(uri)}' is a folder, not a database file")
    elif scheme in ("http", "https"):
        if not parsed.hostname:
            raise ConfigError(f"{where}: '{cut(uri)}' has no host; write {SUPPORTED}")
        if parsed.username or parsed.password:
            raise ConfigError(f"{where}: credentials in the URI end up in logs and process lists; put them in "
                              "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD instead")
        try:
            parsed.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ConfigError(f"{where}: '{cut(uri)}' has an invalid port") from None
    elif scheme in ("", "file"):
        raise ConfigError(f"{where}: '{cut(uri)}' is a file store, which MLflow >= 3.13 refuses; "
                          "use sqlite:///<absolute path>/mlflow.db or an http(s) server")
    else:
        raise ConfigError(f"{where}: unsupported scheme '{cut(scheme, 20)}' in '{cut(uri)}'; write {SUPPORTED}")


def check_tracking(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (seconds, not minutes of retries) with a ConfigError when the store is unusable.

    The form first (``check_tracking_uri``), then: a server must answer /health; a SQLite file's folder
    is created if missing and must be writable."""
    check_tracking_uri(uri)
    scheme = urlparse(uri).scheme.lower()
    where = TRACKING_WHERE
    if scheme in ("http", "https"):
        import requests

        try:
            resp = requests.get(uri.rstrip("/") + "/health", timeout=timeout)
        except requests.RequestException as err:
            raise ConfigError(f"{where}: MLflow server {uri} is unreachable "
                              f"({type(err).__name__}); start it or fix the address") from None
        if resp.status_code >= 400:
            raise ConfigError(f"{where}: MLflow server {uri} answered HTTP {resp.status_code} on /health")
    elif scheme == "sqlite":
        db = Path(uri[len("sqlite:///"):])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"{where}: cannot create {db.parent}: {err.strerror}") from None
        if not os.access(db.parent, os.W_OK):
            raise ConfigError(f"{where}: {db.parent} is not writable")


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The checkout's commit (``-dirty`` when it has uncommitted changes), or ``unknown``."""
    root = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def source_tags() -> dict[str, str]:
    """MLflow's standard system tags, filled as MLflow's own fluent API would: the Source column (the
    command), the git commit (without ``-dirty``: MLflow links it) and the user."""
    import getpass
    import sys

    argv = sys.argv or [""]
    prog = Path(argv[0]).name
    name = f"mcrlab {argv[1]}" if prog in ("mcrlab", "__main__.py", "app.py") and len(argv) > 1 else prog
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (some containers): MLflow's fallback too
        user = "unknown"
    out = {"mlflow.source.name": name or "mcrlab", "mlflow.source.type": "LOCAL", "mlflow.user": user}
    commit = git_commit().removesuffix("-dirty")
    if commit != "unknown":
        out["mlflow.source.git.commit"] = commit
    return out


def lineage_tags(kind: str, **tags: Any) -> dict[str, str]:
    """``{"mcrlab.kind": kind, "mcrlab.<key>": str(value), "mcrlab.git_commit": ...}`` and MLflow's standard
    source tags (``source_tags``); None dropped."""
    out = {**source_tags(), f"{TAG_PREFIX}kind": kind, f"{TAG_PREFIX}git_commit": git_commit()}
    out.update({f"{TAG_PREFIX}{k}": str(v) for k, v in tags.items() if v is not None})
    return out


def _finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Numeric, finite entries only (MLflow rejects strings and NaN breaks its plots)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def open_client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``; a new local SQLite store is created atomically first.

    MLflow creates a SQLite store by running its schema migrations in place: a process killed in the
    middle (a driver SIGKILLed right after it started) leaves a half-migrated file that every later open
    rejects ("Online migration expected to match one row"). So the schema is built in a private file
    and hard-linked into place only when complete (a link never replaces a store another process made).
    """
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.exists():
            tmp = db.with_name(f".{db.name}.init-{os.getpid()}")
            tmp.unlink(missing_ok=True)
            MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
            try:
                os.link(tmp, db)
            except FileExistsError:
                pass  # another process finished first: use its store
            finally:
                tmp.unlink(missing_ok=True)
    return MlflowClient(tracking_uri=uri)


class Tracker:
    """A thin writer over ``MlflowClient`` bound to one tracking URI."""

    def __init__(self, uri: str, run_folder: str | Path = DEFAULT_RUN_FOLDER):
        self.uri = uri
        self.run_folder = Path(run_folder)
        self.client = open_client(uri)

    # ---- experiments and runs ----------------------------------------------------------------
    def experiment(self, name: str) -> str:
        """Id of experiment ``name``, created (with a local artifact root for SQLite) if missing."""
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        return self.client.create_experiment(name, artifact_location=artifact_location(self.uri,
                                                                                       self.run_folder))

    def find_run(self, experiment_id: str, tags: dict[str, str]) -> str | None:
        """Id of the (first) run carrying all ``tags``, or None: makes creation idempotent."""
        flt = tag_filter(tags)
        runs = self.client.search_runs([experiment_id], filter_string=flt, max_results=2)
        return runs[0].info.run_id if runs else None

    def start_run(self, experiment_id: str, name: str, *, tags: dict[str, str],
                  parent_run_id: str | None = None, params: dict[str, Any] | None = None,
                  key_tags: tuple[str, ...] = ()) -> str:
        """Create a run, or reopen the one whose ``key_tags`` match (resume writes no duplicates)."""
        if key_tags:
            existing = self.find_run(experiment_id, {k: tags[k] for k in key_tags})
            if existing is not None:
                self.client.update_run(existing, status="RUNNING")
                return existing
        all_tags = dict(tags)
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(experiment_id, tags=all_tags, run_name=name)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # MLflow params are immutable strings; value lists become their repr
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, v, ts, step or 0) for k, v in _finite_metrics(metrics).items()]
        for i in range(0, len(items), 500):
            self.client.log_batch(run_id, metrics=items[i:i + 500])

    def log_summary(self, run_id: str, metrics: dict[str, Any]) -> None:
        """Log end-of-run values without duplicate points: a key whose latest value is already this one is
        skipped (a resumed sweep summarises its finished studies again); a changed value gets the next step."""
        latest = self.client.get_run(run_id).data.metrics
        for key, value in _finite_metrics(metrics).items():
            if key in latest and latest[key] == value:
                continue
            step = self.last_step(run_id, key) + 1 if key in latest else 0
            self.log_metrics(run_id, {key: value}, step=step)

    def last_step(self, run_id: str, key: str) -> int:
        """Largest logged step of metric ``key`` (-1 when none): skip re-logging after a resume."""
        hist = self.client.get_metric_history(run_id, key)
        return max((m.step for m in hist), default=-1)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_dict(self, run_id: str, data: dict, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_path), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)


def log_nested_run(uri: str, experiment: str, name: str, *, kind: str, parent_run_id: str | None = None,
                   params: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                   tags: dict[str, Any] | None = None, artifacts: dict[str, dict] | None = None,
                   key: dict[str, Any] | None = None, status: str = "FINISHED") -> str:
    """Log one finished run in one call (ablation arms, seeds, reports) and return its id.

    ``tags`` are lineage tags without prefix (``{"arm": "no_game", "seed": 3}`` -> ``mcrlab.arm``);
    ``artifacts`` maps an artifact file name to a dict saved as JSON/YAML; ``key`` names tags that
    identify the run, so calling again with the same key reopens it instead of duplicating it.
    """
    tracker = Tracker(uri)
    exp_id = tracker.experiment(experiment)
    all_tags = lineage_tags(kind, **(tags or {}), **(key or {}))
    key_tags = tuple(f"{TAG_PREFIX}{k}" for k in (key or {}))
    run_id = tracker.start_run(exp_id, name, tags=all_tags, parent_run_id=parent_run_id,
                               params=params, key_tags=key_tags)
    if metrics:
        tracker.log_metrics(run_id, metrics)
    for fname, data in (artifacts or {}).items():
        tracker.log_dict(run_id, data, fname)
    tracker.end_run(run_id, status)
    return run_id


def find_runs(uri: str, experiment: str | None = None, *, kind: str | None = None,
              parent_run_id: str | None = None, tags: dict[str, Any] | None = None,
              filter_string: str = "", max_results: int = 5000) -> list[dict[str, Any]]:
    """Runs as plain dicts ``{run_id, name, status, experiment_id, params, metrics, tags}``.

    ``experiment`` None searches every experiment; ``tags`` are lineage tags without the prefix.
    Metrics are each run's latest values.
    """
    client = open_client(uri)
    if experiment is None:
        exp_ids = [e.experiment_id for e in client.search_experiments()]
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            return []
        exp_ids = [exp.experiment_id]
    clauses = [filter_string] if filter_string else []
    wanted = {f"{TAG_PREFIX}kind": kind} if kind is not None else {}
    if parent_run_id is not None:
        wanted[PARENT_TAG] = parent_run_id
    wanted.update({f"{TAG_PREFIX}{k}": v for k, v in (tags or {}).items()})
    if wanted:
        clauses.append(tag_filter(wanted))
    runs = client.search_runs(exp_ids, filter_string=" and ".join(clauses), max_results=max_results)
    return [{"run_id": r.info.run_id, "name": r.info.run_name, "status": r.info.status,
             "experiment_id": r.info.experiment_id, "params": dict(r.data.params),
             "metrics": dict(r.data.metrics), "tags": dict(r.data.tags)} for r in runs]


def download_run_file(uri: str, run_id: str, candidates: tuple[str, ...], dst: str | Path
                      ) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """``(run, artifact, local path)``: run ``run_id`` at ``uri`` as ``{status, params}`` and the first of
    ``candidates`` (artifact paths such as ``best_checkpoint/state.pt``) it holds, downloaded into ``dst``.
    ``(None, None, None)`` when there is no such run (or no store at a local SQLite path: nothing is
    created); ``(run, None, None)`` when it holds none of ``candidates``."""
    from mlflow.exceptions import MlflowException

    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None, None, None
    client = open_client(uri)
    try:
        found = client.get_run(run_id)
    except MlflowException:
        return None, None, None
    run = {"status": found.info.status, "params": dict(found.data.params)}
    for artifact in candidates:
        folder = artifact.rsplit("/", 1)[0] if "/" in artifact else None
        if any(f.path == artifact for f in client.list_artifacts(run_id, folder)):
            # no progress bar: a validation step's output is its one line (or nothing)
            old = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
            try:
                return run, artifact, client.download_artifacts(run_id, artifact, str(dst))
            finally:
                if old is None:
                    os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
                else:
                    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = old
    return run, None, None

"""A study shared by several sweep drivers through an RDB Optuna storage (``mcrlab sweep --optuna-storage``).

By default each sweep keeps its studies in its own SQLite file (``runs/sweeps/<id>/optuna.db``), named
``<sweep id>/<dataset>``. With ``--optuna-storage URL`` (``sqlite:///path.db`` on a shared disk, or
``postgresql+psycopg2://user@host/db``: e.g. the MLflow server's Postgres of infra/) the studies live there instead,
named ``<study>/<dataset>`` (``--study``, default: the space's name), so a second driver started with the
same space and URL — another laptop, another job — loads the same studies (Optuna's ``load_if_exists``)
and adds its trials to them:

- trial numbers come from the database (one transaction per new trial): two drivers never share one;
- each driver samples with its own seed (``driver_seed``): two seeded samplers would otherwise propose the
  same points in the same order;
- the space's ``points_to_evaluate`` are enqueued only into a study that has no trials yet;
- every Optuna trial records the sweep (driver) that ran it (user attr ``mcrlab_sweep_id``), and every
  MLflow run its study and trial number (tags ``mcrlab.optuna_study``, ``mcrlab.optuna_trial``).

The URL is checked before anything starts (``check_optuna_storage``): its form, its database driver, that
it holds no password (the URL is stored in the sweep's state and shown in summaries: give the password
through the driver's own channel, ``PGPASSWORD`` or ``~/.pgpass`` for PostgreSQL), and that the server
answers (a SQLite file: that its folder exists and is writable, and that an existing file is a database).
"""

from __future__ import annotations

import os
import socket
import time
import zlib
from pathlib import Path

from mcrlab.config import ConfigError, check_name, short
from mcrlab.trials.conventions import SWEEP_ATTR

__all__ = ["check_optuna_storage", "sqlite_path", "driver_seed", "study_prefix", "has_trials", "SWEEP_ATTR",
           "snapshot_sqlite"]

BACKENDS = ("sqlite", "postgresql", "mysql")
# how to get a missing driver (SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3, not psycopg2)
DRIVER_HINTS = {"postgresql": "write postgresql+psycopg2://..., the driver of pip install 'mcrlab[postgres]'",
                "postgresql+psycopg2": "pip install 'mcrlab[postgres]'",
                "mysql": "pip install PyMySQL and write mysql+pymysql://..."}
CONNECT_TIMEOUT_S = 5
MAX_URL = 500


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///...`` URL (None for other backends)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return Path(parsed.database).expanduser() if parsed.get_backend_name() == "sqlite" and parsed.database else None


def check_optuna_storage(url: str, flag: str = "--optuna-storage", connect: bool = True) -> str:
    """Return ``url`` when it names a usable Optuna RDB storage; else a one-line ConfigError naming ``flag``.

    ``connect=False`` checks the form only (``mcrlab submit``: the server may be reachable from the
    cluster alone). Nothing is created: a SQLite file is not opened unless it exists.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{flag}: expected a database URL (sqlite:///PATH.db, postgresql+psycopg2://USER@HOST/DB)")
    if len(url) > MAX_URL or not url.isprintable():
        raise ConfigError(f"{flag}: {short(url)} is not a database URL")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise ConfigError(f"{flag}: {short(url)} is not a database URL (expected sqlite:///PATH.db or "
                          "postgresql+psycopg2://USER@HOST/DB)") from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise ConfigError(f"{flag}: backend {short(backend)} is not supported; use one of "
                          f"{', '.join(BACKENDS)}")
    if parsed.password:
        raise ConfigError(f"{flag}: the URL holds a password; give it through the database driver instead "
                          "(PostgreSQL: PGPASSWORD or ~/.pgpass), the URL is stored with the sweep and printed")
    try:
        parsed.get_dialect().import_dbapi()
    except (NoSuchModuleError, ImportError):
        hint = DRIVER_HINTS.get(parsed.drivername, "install its Python package")
        raise ConfigError(f"{flag}: the database driver of {short(parsed.drivername, 40)[1:-1]}:// is not installed "
                          f"({hint})") from None
    if backend == "sqlite":
        _check_sqlite(parsed.database, flag)
    elif connect:
        _check_server(url, flag, parsed)
    return url


def _check_sqlite(database: str | None, flag: str) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ConfigError(f"{flag}: an in-memory SQLite database cannot be shared; name a file, sqlite:///PATH.db")
    path = Path(database).expanduser()
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConfigError(f"{flag}: no folder {folder} for the SQLite file {path.name}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: cannot write to {folder} (SQLite needs its folder writable for its journal)")
    if path.exists():
        if not path.is_file():
            raise ConfigError(f"{flag}: {path} is not a file")
        with open(path, "rb") as f:
            head = f.read(16)
        if head and head != b"SQLite format 3\x00":
            raise ConfigError(f"{flag}: {path} is not a SQLite database")


def _check_server(url: str, flag: str, parsed) -> None:
    """Connect once (``SELECT 1``) with a short timeout: an unreachable server fails in seconds, here."""
    import sqlalchemy

    if parsed.host and not parsed.host.startswith("/"):
        try:  # a name that does not resolve gets its own message (the driver's is long and varies)
            socket.getaddrinfo(parsed.host, parsed.port or None)
        except OSError:
            raise ConfigError(f"{flag}: cannot resolve the database host {short(parsed.host)}") from None
    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as err:  # noqa: BLE001 - any driver error: the storage is not usable
        first = str(getattr(err, "orig", err)).strip().splitlines()
        raise ConfigError(f"{flag}: cannot connect to {parsed.render_as_string(hide_password=True)}: "
                          f"{short(first[0] if first else type(err).__name__, 120)}") from None
    finally:
        engine.dispose()


def study_prefix(name: str | None, default: str) -> str:
    """The study name's first part (``--study``, else the space's name), a name and never a path."""
    return check_name(name if name is not None else default, "--study")


def driver_seed(seed: int | None, sweep_id: str) -> int:
    """This driver's sampler seed for a shared study: the space's seed mixed with the sweep id, the host
    and the process, so two drivers never draw the same sequence (a shared study is not reproducible
    point by point anyway: its history depends on which driver finishes first). Recorded as a param."""
    token = f"{seed}/{sweep_id}/{socket.gethostname()}/{os.getpid()}"
    return zlib.crc32(token.encode()) & 0x7FFFFFFF


def open_storage(url: str, attempts: int = 5):
    """``optuna.storages.RDBStorage(url)``, tolerant of a race on a fresh database: two drivers starting at
    once both create Optuna's schema, and the slower one's ``INSERT INTO alembic_version`` fails with an
    IntegrityError (or SQLite reports the table locked). The schema is then there: opening again succeeds."""
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url)
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def has_trials(storage: str, study_name: str) -> bool:
    """Whether ``study_name`` exists in ``storage`` with at least one trial (any state)."""
    import optuna

    rdb = open_storage(storage)
    if study_name not in optuna.study.get_all_study_names(storage=rdb):
        return False
    study = optuna.load_study(study_name=study_name, storage=rdb)
    return len(study.get_trials(deepcopy=False)) > 0


def snapshot_sqlite(src: Path, dst: Path) -> Path:
    """A consistent copy of a live SQLite database (its backup API: other drivers may be writing)."""
    import sqlite3

    with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as source, sqlite3.connect(dst) as target:
        source.backup(target)
    return dst

"""Optuna storages from the one string `hydra.sweeper.storage` holds.

- `sqlite:///multirun/optuna.db`, `postgresql://user@host/db`, `mysql://...`: Optuna's RDB
  storage (a SQLAlchemy URL).
- `journal:multirun/optuna.journal`: Optuna's JournalStorage on a file, the backend Optuna
  advises for several processes on one host (SQLite locks under parallel writes).
- null: an in-memory study that lives as long as the sweep process.
"""

import random
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

from mlp_sweep.errors import UserError, first_line

JOURNAL_PREFIX = "journal:"
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
SCHEMA_ATTEMPTS = 8
ALLOWED = ("sqlite:///PATH, postgresql://USER@HOST/DB, mysql://USER@HOST/DB, journal:PATH, "
           "or null (in memory)")


class StorageError(UserError):
    """A storage that cannot be used: a scheme Optuna has no backend for, a path that cannot be
    created, a database that cannot be reached."""


@dataclass
class Heartbeat:
    """Optuna's dead-trial detection for RDB storages: a RUNNING trial whose heartbeat is older
    than `grace_period` seconds is failed and retried (up to `max_retry` times) with its params."""

    interval: int
    grace_period: int | None = None
    max_retry: int | None = 3


def open_storage(spec: str | None, heartbeat: Heartbeat | None = None) -> BaseStorage | None:
    """What `optuna.create_study(storage=...)` takes for `spec`; creates a SQLite or journal file's
    folder so a first sweep can start in an empty project."""
    if heartbeat is not None and (spec is None or spec.startswith(JOURNAL_PREFIX)):
        raise StorageError(f"hydra.sweeper.heartbeat_interval={heartbeat.interval} needs a "
                           f"database storage, and hydra.sweeper.storage={spec!r}; allowed: "
                           "sqlite:///PATH, postgresql://..., mysql://... (a journal file has no "
                           "heartbeat), or heartbeat_interval=null")
    if spec is None:
        return None
    if spec.startswith(JOURNAL_PREFIX):
        path = Path(spec[len(JOURNAL_PREFIX):])
        _make_folder(spec, path.parent)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as error:
            raise StorageError(f"hydra.sweeper.storage={spec!r}: cannot open {path} "
                               f"({error.strerror}); allowed: a file this user can write") from None
    scheme = spec.split("://", 1)[0].split("+", 1)[0] if "://" in spec else None
    if scheme not in RDB_SCHEMES:
        raise StorageError(f"hydra.sweeper.storage={spec!r} is not a supported storage; "
                           f"allowed: {ALLOWED}")
    if spec.startswith("sqlite:///"):
        _make_folder(spec, Path(spec[len("sqlite:///"):]).parent)
    return _rdb_errors(spec, lambda: _rdb_storage(spec, heartbeat))


def _rdb_storage(spec: str, heartbeat: Heartbeat | None) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on `spec`. Processes started together on a fresh database all try to
    create Optuna's tables; those that lose the race see the winner's tables as a duplicate and
    try again, and then find the schema made."""
    import sqlalchemy.exc

    # A SQLite file that a sweep's workers share: a write waits for another's lock (briefly
    # held: a trial's report) up to a minute, rather than the driver's 5 seconds
    engine = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else None
    settings = {} if heartbeat is None else dict(
        heartbeat_interval=heartbeat.interval, grace_period=heartbeat.grace_period,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
            heartbeat.max_retry))
    for attempt in range(1, SCHEMA_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(spec, engine, **settings)
        except sqlalchemy.exc.DBAPIError as error:
            if not _lost_schema_race(error):
                raise
            time.sleep(random.uniform(0.05, 0.5) * attempt)
    return optuna.storages.RDBStorage(spec, engine, **settings)  # the last attempt raises what it meets


def _lost_schema_race(error: Exception) -> bool:
    """A table, type or version row that another process created a moment earlier."""
    text = str(getattr(error, "orig", None) or error).lower()
    return any(sign in text for sign in ("already exists", "duplicate key", "unique constraint",
                                         "database is locked"))


def create_study(name: str | None, spec: str | None, sampler, pruner, directions: list[str],
                 heartbeat: Heartbeat | None = None) -> optuna.Study:
    """`optuna.create_study(load_if_exists=True)` on `spec`; a database that cannot be reached
    is one line naming the storage, not the driver's traceback."""
    storage = open_storage(spec, heartbeat)
    return _rdb_errors(spec, lambda: optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, pruner=pruner, directions=directions,
        load_if_exists=True))


def _rdb_errors(spec: str | None, action):
    """`action()`, with a database error turned into one line naming the storage."""
    import sqlalchemy.exc

    try:
        return action()
    except sqlalchemy.exc.SQLAlchemyError as error:
        first = first_line(getattr(error, "orig", None) or error, with_type=False)
        raise StorageError(f"hydra.sweeper.storage={_without_password(spec)!r} cannot be opened "
                           f"({type(error).__name__}: {first}); allowed: a database this host "
                           f"can reach, or {ALLOWED}") from None


def absolute_storage(spec: str | None) -> str | None:
    """`spec` with a SQLite or journal file's relative path made absolute from this folder: the
    same storage for a job that runs in another folder (`hydra.job.chdir=true`)."""
    if spec is None:
        return None
    if spec.startswith(JOURNAL_PREFIX):
        return JOURNAL_PREFIX + str(Path(spec[len(JOURNAL_PREFIX):]).absolute())
    if spec.startswith("sqlite:///") and not spec.startswith("sqlite:////"):
        path, _, query = spec[len("sqlite:///"):].partition("?")
        if path and path != ":memory:":
            return "sqlite:///" + str(Path(path).absolute()) + (f"?{query}" if query else "")
    return spec


def lease_folder(spec: str | None) -> Path | None:
    """The folder beside a journal or SQLite file where its workers hold their leases
    (resume.py): every worker of the study sees it. None for a database server or memory."""
    spec = absolute_storage(spec)
    if spec is None:
        return None
    if spec.startswith(JOURNAL_PREFIX):
        path = Path(spec[len(JOURNAL_PREFIX):])
    elif spec.startswith("sqlite:///") and ":memory:" not in spec:
        path = Path(spec[len("sqlite:///"):].partition("?")[0])
    else:
        return None
    return path.with_name(path.name + ".workers")


def load_study(name: str, spec: str, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(spec), pruner=pruner)


def _make_folder(spec: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"hydra.sweeper.storage={spec!r}: cannot create the folder {folder} "
                           f"({error.strerror}); allowed: a path this user can write") from None


def _without_password(spec: str | None) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(spec).render_as_string(hide_password=True)
    except Exception:
        return spec

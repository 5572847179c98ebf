"""The main store: engines, Alembic upgrades and the queries the app needs (the forwarder: db_forwarder.py).

SQLite (embedded default) and PostgreSQL via psycopg 3 (plants). Decisions:

- SQLite: WAL (readers never block the forwarder), ``busy_timeout`` 5 s, foreign keys on, and
  ``synchronous=FULL`` like the journal: the forwarder moves the journal cursor once a chunk is committed
  here, so a commit lost to a power cut after that would be a verdict lost for good. pysqlite's own
  transaction handling is switched off and linewatch emits ``BEGIN`` itself (SQLAlchemy's documented
  recipe): otherwise DDL would run outside the transaction and a failed migration would leave a half
  schema. Writers say ``BEGIN IMMEDIATE`` (take the write lock first, so ``busy_timeout`` applies instead of
  a lock-upgrade failure midway).
- PostgreSQL: ``pool_pre_ping`` (connections killed by a restart are replaced, not handed out), a 3 s
  ``connect_timeout`` so a down server fails fast and the forwarder backs off, TCP keepalives so a
  vanished server is noticed in seconds rather than hours.
- Upgrades run Alembic programmatically (no alembic.ini; the scripts ship inside the package) on one
  locked transaction: ``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL, so the daemon and
  ``linewatch db upgrade`` started together cannot both migrate.
- Errors are :class:`DatabaseError` naming the URL with its password masked, never the SQL parameters.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, func, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError, StatementError

from linewatch.sinks.db_schema import DefectEvent, Inspection, LabelRecord

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000
PG_CONNECT_TIMEOUT_S = 3
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
IMMEDIATE = "linewatch_sqlite_immediate"  # execution option: this connection's transactions write (SQLite)
_PG_UPGRADE_LOCK = 0x6C77_6462  # pg_advisory_xact_lock key for upgrades ("lwdb")
_DRIVERS = {  # accepted URL schemes -> the driver used; plain postgresql:// means psycopg 3 here
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


class DatabaseError(Exception):
    """The main store cannot do what was asked; the message names the URL (password masked) and the cause."""


@dataclass(frozen=True)
class UpgradeResult:
    from_revision: str | None  # None: the database had no linewatch schema yet
    to_revision: str
    backup: Path | None  # the SQLite copy taken before upgrading, if one was needed


def masked(url: str | URL) -> str:
    """The URL as it may appear in logs and errors: password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable database URL>"


def reason(exc: BaseException) -> str:
    """The driver's own message on one line, without SQLAlchemy's statement and parameters."""
    cause = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    return f"{type(cause).__name__}: {' '.join(str(cause).split())}"


@contextmanager
def translated(where: str, what: str) -> Iterator[None]:
    """Turn SQLAlchemy/driver/Alembic errors into one DatabaseError with a readable message."""
    try:
        yield
    except (SQLAlchemyError, CommandError, sqlite3.Error, OSError) as exc:
        raise DatabaseError(f"{where}: {what} failed: {reason(exc)}") from exc


# --- engines -------------------------------------------------------------------------------------------------


def require_one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Refuse an argument outside ``allowed`` before any SQL runs, naming it (ValueError)."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def require_aware(name: str, value: datetime) -> datetime:
    """Refuse naive datetimes, naming the argument: the column type would refuse them too, but deep inside
    SQLAlchemy, as a DatabaseError that reads like the store failing."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime (UTC); got naive {value.isoformat()}")
    return value


def make_engine(url: str) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql[+psycopg]://user:password@host:port/db``."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        # Not even the text goes into the message: it may hold a password.
        raise DatabaseError("store url is not an SQLAlchemy URL (sqlite:///path or postgresql+psycopg://...)") from exc
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise DatabaseError(
            f"{masked(parsed)}: unsupported database {parsed.drivername!r}; "
            "use sqlite:///path/to/file.sqlite3 or postgresql+psycopg://user:password@host:5432/dbname"
        )
    parsed = parsed.set(drivername=driver)
    if driver == "sqlite":
        return _sqlite_engine(parsed)
    connect_args: dict[str, Any] = {k: v for k, v in PG_KEEPALIVES.items() if k not in parsed.query}
    if "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def _sqlite_file(url: URL) -> Path | None:
    """The database file of an SQLite URL, None for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _sqlite_engine(url: URL) -> Engine:
    path = _sqlite_file(url)
    if path is not None:
        with translated(masked(url), "creating the database folder"):
            path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        dbapi_connection.isolation_level = None  # no implicit BEGIN/COMMIT from pysqlite; see _on_begin
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if path is not None and str(mode).lower() != "wal":
                log.warning("%s: SQLite refused WAL mode (got %r); is it on a network share?", masked(url), mode)
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(IMMEDIATE) else "BEGIN")

    return engine


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that will write: BEGIN IMMEDIATE on SQLite; committed on success."""
    with engine.connect() as conn:
        conn.execution_options(**{IMMEDIATE: True})
        with conn.begin():
            yield conn


# --- migrations ----------------------------------------------------------------------------------------------


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config without a file: the scripts inside the package, the connection (if any) for env.py."""
    config = Config()
    config.set_main_option("script_location", "linewatch:migrations")
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise DatabaseError("linewatch ships no migrations (package damaged?)")
    return head


def known_revisions() -> set[str]:
    return {script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def database_revision(engine: Engine) -> str | None:
    """The schema revision recorded in the database; None when it has no linewatch schema yet."""
    with translated(masked(engine.url), "reading the schema revision"), engine.connect() as conn:
        return _revision(conn)


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade_database(url: str, backup_dir: Path, now: datetime | None = None) -> UpgradeResult:
    """Migrate the database at ``url`` to this linewatch's schema (no-op when already there).

    An existing SQLite file that needs upgrading is first copied with SQLite's online backup API to
    ``backup_dir/<stem>-<revision or 'empty'>-<UTC time>.sqlite3`` (``now`` fixes that time; tests). PostgreSQL
    is not backed up here: plants back PostgreSQL up their own way (pg_dump, base backups), and a dump from
    inside the daemon would be slow and unmanaged. A database at a revision this linewatch does not know
    (written by a newer linewatch) is refused: downgrading it silently could lose data.
    """
    engine = make_engine(url)
    where = masked(engine.url)
    sqlite_path = _sqlite_file(engine.url) if engine.dialect.name == "sqlite" else None
    existed = sqlite_path is not None and sqlite_path.exists()  # before connecting creates it
    try:
        head = head_revision()
        current = database_revision(engine)
        if current == head:
            return UpgradeResult(current, head, None)
        _check_known(current, head, where)
        backup = None
        if existed and sqlite_path is not None:
            backup = backup_sqlite(sqlite_path, current, backup_dir, now or datetime.now(UTC))
            log.info("%s: backed up to %s before upgrading", where, backup)
        upgrading = f"upgrading the schema from {current or 'empty'} to {head}"
        with translated(where, upgrading), write_transaction(engine) as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_UPGRADE_LOCK})
            locked = _revision(conn)  # another process may have migrated since the first look
            _check_known(locked, head, where)
            if locked != head:
                command.upgrade(alembic_config(conn), "head")
        log.info("%s: schema upgraded from %s to %s", where, current or "empty", head)
        return UpgradeResult(current, head, backup)
    finally:
        engine.dispose()


def _check_known(revision: str | None, head: str, where: str) -> None:
    if revision is not None and revision not in known_revisions():
        raise DatabaseError(
            f"{where}: the database schema is at revision {revision!r}, which this linewatch does not know "
            f"(its newest is {head!r}); it was written by a newer linewatch: upgrade linewatch"
        )


def backup_sqlite(path: Path, revision: str | None, backup_dir: Path, now: datetime) -> Path:
    """Copy a live SQLite database consistently (online backup API, WAL included). Written under a temporary
    name and renamed, so a crash mid-copy never leaves something that looks like a good backup."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = f"{path.stem}-{revision or 'empty'}-{stamp}"
    with translated(str(path), f"backing up to {backup_dir}"):
        backup_dir.mkdir(parents=True, exist_ok=True)
        target = backup_dir / f"{base}.sqlite3"
        counter = 1
        while target.exists():
            target = backup_dir / f"{base}-{counter}.sqlite3"
            counter += 1
        partial = target.with_name(target.name + ".partial")
        source = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        try:
            destination = sqlite3.connect(partial)
            try:
                source.backup(destination)
            finally:
                destination.close()
            partial.replace(target)
        finally:
            source.close()
            partial.unlink(missing_ok=True)
    return target


# --- queries -------------------------------------------------------------------------------------------------


def confirmed_normal_inspections(engine: Engine, unused_only: bool = True) -> set[str]:
    """Ids of inspections an operator confirmed normal; only those no retraining used yet when ``unused_only``.
    Retraining trains on them, and evidence retention keeps their images until then."""
    query = select(Inspection.id).where(Inspection.label == "normal")
    if unused_only:
        query = query.where(Inspection.trained_into.is_(None))
    with translated(masked(engine.url), "reading confirmed normals"), engine.connect() as conn:
        return set(conn.scalars(query))


def inspection_counts(engine: Engine) -> dict[str, int]:
    """Row counts for the CLI and tests: inspections (all, scorer's defects, operator-labelled), events, labels."""
    queries = {
        "inspections": select(func.count()).select_from(Inspection),
        "defects": select(func.count()).where(Inspection.verdict == "defect"),
        "labelled": select(func.count()).where(Inspection.label.is_not(None)),
        "events": select(func.count()).select_from(DefectEvent),
        "open_events": select(func.count()).where(DefectEvent.ended_at.is_(None)),
        "labels": select(func.count()).select_from(LabelRecord),
    }
    with translated(masked(engine.url), "counting rows"), engine.connect() as conn:
        return {name: int(conn.scalar(query) or 0) for name, query in queries.items()}

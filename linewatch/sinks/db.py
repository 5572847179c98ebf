"""The main store: engines and the queries the app needs (upgrades: db_migrate.py; the forwarder: db_forwarder.py).

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
  vanished server is noticed in seconds rather than hours. JIT compilation off for linewatch's sessions
  (``-c jit=off`` added to any ``options`` the URL gives): its queries are short index walks, but a walk the
  planner prices high (a day's review queue over a partitioned table) crosses ``jit_above_cost``, and the
  compiling made it 0.7 s instead of 0.16 s (benchmarks/review_queue_day.py).
- Errors are :class:`DatabaseError` naming the URL with its password masked, never the SQL parameters.
- One store may serve many lines (one PostgreSQL for a plant): every row carries ``site`` and ``line``, and
  every key starts with them. An engine knows the line it works for (:class:`LineScope`, set by
  :func:`make_engine` as an execution option, so it travels with every connection); each writer stamps its
  rows with it and each reader filters by it (:func:`in_line`), so two lines with a camera of the same name
  never see each other's rows.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, create_engine, event, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError, StatementError

from linewatch.sinks.db_schema import DefectEvent, Inspection, LabelRecord

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000
PG_CONNECT_TIMEOUT_S = 3
PG_SESSION_OPTIONS = "-c jit=off"
PG_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
IMMEDIATE = "linewatch_sqlite_immediate"  # execution option: this connection's transactions write (SQLite)
_DRIVERS = {  # accepted URL schemes -> the driver used; plain postgresql:// means psycopg 3 here
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


@dataclass(frozen=True)
class LineScope:
    """The line an engine reads and writes for: the ``[site]`` section's names."""

    site: str
    line: str

    @classmethod
    def of(cls, names: Any) -> LineScope:
        """The scope of a ``[site]`` section (linewatch.config.SiteSection: its ``site`` and ``line``)."""
        return cls(names.site, names.line)

    def columns(self) -> dict[str, str]:
        """The values every row this line writes carries."""
        return {"site": self.site, "line": self.line}


DEFAULT_SCOPE = LineScope("site", "line1")  # the [site] section's defaults
_SCOPE_OPTION = "linewatch_scope"


class DatabaseError(Exception):
    """The main store cannot do what was asked; the message names the URL (password masked) and the cause."""


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
    """Turn SQLAlchemy/driver errors into one DatabaseError with a readable message (Alembic's:
    :func:`linewatch.sinks.db_migrate.translated_migration`)."""
    try:
        yield
    except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
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


def make_engine(url: str, scope: LineScope = DEFAULT_SCOPE) -> Engine:
    """An engine for ``sqlite:///path`` or ``postgresql[+psycopg]://user:password@host:port/db``, working for
    the line ``scope`` (:func:`scope_of`)."""
    return _make_engine(url).execution_options(**{_SCOPE_OPTION: scope})


def scope_of(bind: Engine | Connection) -> LineScope:
    """The line an engine (or a connection of it) works for."""
    scope = bind.get_execution_options().get(_SCOPE_OPTION, DEFAULT_SCOPE)
    if not isinstance(scope, LineScope):
        raise TypeError(f"execution option {_SCOPE_OPTION} must be a LineScope; got {scope!r}")
    return scope


def in_line(entity: Any, scope: LineScope) -> ColumnElement[bool]:
    """The rows of ``entity`` (a mapped class or a Table) that belong to ``scope``'s line."""
    columns = entity.c if hasattr(entity, "c") else entity
    return and_(columns.site == scope.site, columns.line == scope.line)


def _make_engine(url: str) -> Engine:
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
    given = parsed.query.get("options", ())  # a str, or a tuple when the URL repeats it
    connect_args["options"] = " ".join([*([given] if isinstance(given, str) else given), PG_SESSION_OPTIONS])
    return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)


def sqlite_file(url: URL) -> Path | None:
    """The database file of an SQLite URL, None for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _sqlite_engine(url: URL) -> Engine:
    path = sqlite_file(url)
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


# --- queries -------------------------------------------------------------------------------------------------


def confirmed_normal_inspections(engine: Engine, unused_only: bool = True) -> set[str]:
    """Ids of inspections an operator confirmed normal; only those no retraining used yet when ``unused_only``.
    Retraining trains on them, and evidence retention keeps their images until then."""
    query = select(Inspection.id).where(in_line(Inspection, scope_of(engine)), Inspection.label == "normal")
    if unused_only:
        query = query.where(Inspection.trained_into.is_(None))
    with translated(masked(engine.url), "reading confirmed normals"), engine.connect() as conn:
        return set(conn.scalars(query))


def inspection_counts(engine: Engine) -> dict[str, int]:
    """This line's row counts for the CLI and tests: inspections (all, scorer's defects, operator-labelled),
    events, labels."""
    scope = scope_of(engine)
    queries = {
        "inspections": select(func.count()).select_from(Inspection).where(in_line(Inspection, scope)),
        "defects": select(func.count()).where(in_line(Inspection, scope), Inspection.verdict == "defect"),
        "labelled": select(func.count()).where(in_line(Inspection, scope), Inspection.label.is_not(None)),
        "events": select(func.count()).select_from(DefectEvent).where(in_line(DefectEvent, scope)),
        "open_events": select(func.count()).where(in_line(DefectEvent, scope), DefectEvent.ended_at.is_(None)),
        "labels": select(func.count()).select_from(LabelRecord).where(in_line(LabelRecord, scope)),
    }
    with translated(masked(engine.url), "counting rows"), engine.connect() as conn:
        return {name: int(conn.scalar(query) or 0) for name, query in queries.items()}

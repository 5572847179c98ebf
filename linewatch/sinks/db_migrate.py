"""Schema upgrades of the main store with Alembic, run programmatically (no alembic.ini; the scripts ship in
``linewatch/migrations``) on one locked transaction: ``BEGIN IMMEDIATE`` on SQLite, an advisory lock on
PostgreSQL, so the daemon and ``linewatch db upgrade`` started together cannot both migrate.

Apart from :mod:`linewatch.sinks.db` because Alembic costs a third of a second to import, which commands
that only read the store (``linewatch model versions``) should not pay.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text

from linewatch.sinks.db import (
    DEFAULT_SCOPE,
    SQLITE_BUSY_TIMEOUT_MS,
    DatabaseError,
    LineScope,
    make_engine,
    masked,
    reason,
    sqlite_file,
    translated,
    write_transaction,
)

log = logging.getLogger(__name__)

_PG_UPGRADE_LOCK = 0x6C77_6462  # pg_advisory_xact_lock key for upgrades ("lwdb")


@dataclass(frozen=True)
class UpgradeResult:
    from_revision: str | None  # None: the database had no linewatch schema yet
    to_revision: str
    backup: Path | None  # the SQLite copy taken before upgrading, if one was needed


@contextmanager
def translated_migration(where: str, what: str) -> Iterator[None]:
    """:func:`linewatch.sinks.db.translated`, and Alembic's own errors too."""
    try:
        with translated(where, what):
            yield
    except CommandError as exc:
        raise DatabaseError(f"{where}: {what} failed: {reason(exc)}") from exc


def alembic_config(connection: Connection | None = None, scope: LineScope = DEFAULT_SCOPE) -> Config:
    """Alembic's config without a file: the scripts inside the package, the connection (if any) for env.py,
    and the line running the upgrade (migration 0008 files the rows already there under it)."""
    config = Config()
    config.set_main_option("script_location", "linewatch:migrations")
    config.set_main_option("path_separator", "os")
    config.attributes["scope"] = scope
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


def upgrade_database(
    url: str, backup_dir: Path, now: datetime | None = None, scope: LineScope = DEFAULT_SCOPE
) -> UpgradeResult:
    """Migrate the database at ``url`` to this linewatch's schema (no-op when already there); ``scope`` is the
    line running it, whose rows the store held before it could hold several lines (migration 0008).

    An existing SQLite file that needs upgrading is first copied with SQLite's online backup API to
    ``backup_dir/<stem>-<revision or 'empty'>-<UTC time>.sqlite3`` (``now`` fixes that time; tests). PostgreSQL
    is not backed up here: plants back PostgreSQL up their own way (pg_dump, base backups), and a dump from
    inside the daemon would be slow and unmanaged. A database at a revision this linewatch does not know
    (written by a newer linewatch) is refused: downgrading it silently could lose data.
    """
    engine = make_engine(url)
    where = masked(engine.url)
    sqlite_path = sqlite_file(engine.url) if engine.dialect.name == "sqlite" else None
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
        with translated_migration(where, upgrading), write_transaction(engine) as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_UPGRADE_LOCK})
            locked = _revision(conn)  # another process may have migrated since the first look
            _check_known(locked, head, where)
            if locked != head:
                command.upgrade(alembic_config(conn, scope), "head")
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

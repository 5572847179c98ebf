"""The main store's engines and migrations, on SQLite and on a real PostgreSQL (tests.services.postgres)."""

from __future__ import annotations

import socket
import sqlite3
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, inspect, text

from linewatch.sinks.db import DatabaseError, make_engine
from linewatch.sinks.db_migrate import UpgradeResult, backup_sqlite, database_revision, head_revision, upgrade_database
from linewatch.sinks.db_schema import Base
from tests.services import postgres
from tests.services.ports import free_port
from tests.services.postgres import PASSWORD, PostgresServer

TABLES = {
    "inspections", "events", "labels", "model_versions", "retrain_runs", "alembic_version", "users", "actions", "parts",
    "inspection_minutes", "inspection_hours", "part_hours", "retention_policies",
}  # fmt: skip
NOW = datetime(2026, 3, 2, 8, 0, 0, tzinfo=UTC)


def _partitions(names: list[str]) -> set[str]:
    return {name for name in names if name.startswith("inspections_p") or name == "inspections_default"}


def test_upgrade_creates_the_tables_and_a_second_upgrade_is_a_no_op(store_url: str, tmp_path: Path) -> None:
    backups = tmp_path / "backups"
    assert upgrade_database(store_url, backups) == UpgradeResult(None, head_revision(), None)
    engine = make_engine(store_url)
    try:
        inspector = inspect(engine)
        assert set(inspector.get_table_names()) - _partitions(inspector.get_table_names()) == TABLES
        assert {index["name"] for index in inspector.get_indexes("inspections")} == {
            "ix_inspections_site_camera_frame_ts",
            "ix_inspections_label",
            "ix_inspections_site_frame_ts",
            "ix_inspections_site_frame_ts_unlabelled_snapshot",
            "ix_inspections_site_part_id",
        }
        assert database_revision(engine) == head_revision() == "0009"
    finally:
        engine.dispose()
    assert upgrade_database(store_url, backups) == UpgradeResult("0009", "0009", None)
    assert not backups.exists()  # a new SQLite file and a no-op upgrade need no backup


def test_the_migration_creates_exactly_what_the_models_declare(store_url: str, tmp_path: Path) -> None:
    upgrade_database(store_url, tmp_path / "backups")
    engine = make_engine(store_url)
    try:
        with engine.connect() as conn:
            # The daily partitions of inspections on PostgreSQL are the parent's, not tables of their own.
            options = {"include_name": lambda name, kind, _parent: kind != "table" or name not in _partitions([name])}
            assert compare_metadata(MigrationContext.configure(conn, opts=options), Base.metadata) == []
    finally:
        engine.dispose()


def test_the_migration_and_the_models_agree_on_column_order_and_check_constraints(
    store_url: str, tmp_path: Path
) -> None:
    """What compare_metadata does not look at: column order (the LatestLabel mixin's columns keep their
    place) and the CHECK constraints, by name."""
    upgrade_database(store_url, tmp_path / "backups")
    engine = make_engine(store_url)
    try:
        inspector = inspect(engine)
        for table in Base.metadata.sorted_tables:
            assert [column["name"] for column in inspector.get_columns(table.name)] == [c.name for c in table.c]
            constraints = [*table.constraints, *(c for column in table.c for c in column.constraints)]
            checks = {c.name for c in constraints if isinstance(c, CheckConstraint)}
            assert {check["name"] for check in inspector.get_check_constraints(table.name)} == checks, table.name
    finally:
        engine.dispose()


def test_an_existing_sqlite_file_is_backed_up_before_upgrading(tmp_path: Path) -> None:
    path = tmp_path / "data" / "linewatch.sqlite3"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:  # a database from before linewatch's schema: revision None
        conn.execute("CREATE TABLE notes (body TEXT)")
        conn.execute("INSERT INTO notes VALUES ('kept')")
    conn.close()
    backups = tmp_path / "backups"

    result = upgrade_database(f"sqlite:///{path}", backups, now=NOW)

    assert result == UpgradeResult(None, "0009", backups / "linewatch-empty-20260302T080000Z.sqlite3")
    assert sorted(p.name for p in backups.iterdir()) == ["linewatch-empty-20260302T080000Z.sqlite3"]
    backup_engine = make_engine(f"sqlite:///{result.backup}")
    try:
        assert database_revision(backup_engine) is None  # the backup is the old database, not the new one
        with backup_engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            assert conn.exec_driver_sql("SELECT body FROM notes").scalars().all() == ["kept"]
    finally:
        backup_engine.dispose()
    assert upgrade_database(f"sqlite:///{path}", backups, now=NOW).backup is None
    assert len(list(backups.iterdir())) == 1


def test_backups_taken_in_the_same_second_do_not_overwrite_each_other(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    sqlite3.connect(path).close()
    first = backup_sqlite(path, "0001", tmp_path / "b", NOW)
    second = backup_sqlite(path, "0001", tmp_path / "b", NOW)
    assert (first.name, second.name) == ("store-0001-20260302T080000Z.sqlite3", "store-0001-20260302T080000Z-1.sqlite3")


def test_a_database_from_a_newer_linewatch_is_refused(store_url: str, tmp_path: Path) -> None:
    upgrade_database(store_url, tmp_path / "backups")
    engine = make_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0042_future'"))
        with pytest.raises(DatabaseError, match=r"revision '0042_future'.*upgrade linewatch"):
            upgrade_database(store_url, tmp_path / "backups")
        assert database_revision(engine) == "0042_future"
    finally:
        engine.dispose()
    assert not (tmp_path / "backups").exists()  # refused before anything, backup included


def test_a_failed_migration_leaves_nothing_behind(store_url: str, tmp_path: Path) -> None:
    """The whole upgrade is one transaction on both dialects (SQLite through linewatch's own BEGIN)."""
    engine = make_engine(store_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE labels (something INTEGER)"))  # makes 0001 fail midway
        with pytest.raises(DatabaseError, match=r"upgrading the schema from empty to 0009 failed"):
            upgrade_database(store_url, tmp_path / "backups")
        assert set(inspect(engine).get_table_names()) == {"labels"}
        assert database_revision(engine) is None
    finally:
        engine.dispose()


def test_sqlite_engines_use_wal_a_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'new' / 'folder' / 'store.sqlite3'}")
    try:
        with engine.connect() as conn:
            pragmas = [conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in ("journal_mode", "busy_timeout")]
            pragmas += [conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in ("foreign_keys", "synchronous")]
        assert pragmas == ["wal", 5000, 1, 2]  # synchronous 2 = FULL
        assert (tmp_path / "new" / "folder" / "store.sqlite3").is_file()
    finally:
        engine.dispose()


def test_postgresql_urls_use_psycopg_3_and_other_databases_are_refused() -> None:
    engine = make_engine("postgresql://plant:s3cret@db.example:5432/linewatch")
    assert engine.url.drivername == "postgresql+psycopg"
    engine.dispose()
    with pytest.raises(DatabaseError, match=r"mysql://plant:\*\*\*@db.example/x: unsupported database") as error:
        make_engine("mysql://plant:s3cret@db.example/x")
    assert "s3cret" not in str(error.value)
    with pytest.raises(DatabaseError, match="not an SQLAlchemy URL"):
        make_engine("linewatch.sqlite3")


def test_postgresql_sessions_run_without_jit_and_keep_the_urls_own_options(postgres_url: str) -> None:
    """JIT off for linewatch's sessions (a review queue once spent 0.5 s compiling); options the URL gives still
    apply, once or repeated."""
    timeout = "options=-c%20statement_timeout%3D4000"
    for query, expected in (("", "0"), (f"?{timeout}", "4s"), (f"?{timeout}&options=-c%20lock_timeout%3D900", "4s")):
        engine = make_engine(postgres_url + query)
        try:
            with engine.connect() as conn:
                shown = [conn.exec_driver_sql(f"SHOW {name}").scalar() for name in ("jit", "statement_timeout")]
                assert shown == ["off", expected], query
                if "lock_timeout" in query:
                    assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "900ms"
        finally:
            engine.dispose()


def test_a_down_postgresql_fails_fast_and_the_error_hides_the_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://linewatch:{PASSWORD}@127.0.0.1:{free_port()}/linewatch"  # nothing listens
    started = time.monotonic()
    with pytest.raises(DatabaseError, match=r"linewatch:\*\*\*@127\.0\.0\.1.*OperationalError") as error:
        upgrade_database(url, tmp_path)
    assert time.monotonic() - started < 5
    assert PASSWORD not in str(error.value)


def test_the_test_server_moves_off_a_taken_port_on_its_first_start_only() -> None:
    """tests.services: a first start whose port was taken meanwhile picks another; a restart never moves
    (clients reconnect to the port they know), it fails naming the collision."""
    server = PostgresServer()
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", server.port))
            squatter.listen()
            server.start()
            assert server.running and server.port != squatter.getsockname()[1]
        port = server.port
        server.stop()
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            with pytest.raises(RuntimeError, match="Address already in use"):
                server.start()
        server.start()
        assert server.port == port
        assert f"@127.0.0.1:{port}/" in server.create_database()  # it serves there
    finally:
        server.cleanup()
    assert not server.root.exists()


def test_the_test_server_deletes_its_folder_when_initdb_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(prefix: str) -> str:
        made.append(mkdtemp(prefix=prefix))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    monkeypatch.setattr(postgres, "USER", "pg_reserved")  # initdb refuses role names starting with pg_

    with pytest.raises(RuntimeError, match="initdb failed"):
        PostgresServer()

    assert len(made) == 1 and not Path(made[0]).exists()

"""The journal file's schema and its upgrades, kept apart from the journal's reading and writing (outbox.py).

The version lives in ``PRAGMA user_version``:

- 1: verdicts and events;
- 2: operator labels as a record kind;
- 3: the ``holes`` table (positions deleted out of order under disk pressure, so a backlog stays a
  constant-time subtraction: Journal._backlog_after);
- 4: actions (who switched a camera, changed a product, asked for a retrain or a rollback) as a record kind;
- 5: parts (a station's verdict on one part) as a record kind.

A kind is a CHECK constraint, which SQLite cannot alter: the table is rebuilt with positions copied as they
are, so forwarders' cursors stay valid. The AUTOINCREMENT counter is carried over too: without it a journal
whose delivered records had all been pruned would hand out positions from 1 again, behind every cursor,
and the forwarders would skip the new records.
"""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 5
KINDS = frozenset({"verdict", "event", "label", "action", "part"})

_RECORDS = """
CREATE TABLE {name} (
    position     INTEGER PRIMARY KEY AUTOINCREMENT,
    kind         TEXT NOT NULL CHECK (kind IN ('action', 'event', 'label', 'part', 'verdict')),
    key          TEXT NOT NULL,
    camera       TEXT NOT NULL,
    payload      TEXT NOT NULL,
    committed_at TEXT NOT NULL,
    UNIQUE (kind, key)
)
"""
_FORWARDERS = """
CREATE TABLE forwarders (
    name          TEXT PRIMARY KEY,
    position      INTEGER NOT NULL CHECK (position >= 0),
    registered_at TEXT NOT NULL,
    updated_at    TEXT NOT NULL
)
"""
_HOLES = "CREATE TABLE holes (position INTEGER PRIMARY KEY)"


def create(conn: sqlite3.Connection) -> None:
    """A new journal's tables, inside the caller's transaction (executescript would commit it first)."""
    for statement in (_RECORDS.format(name="records"), _FORWARDERS, _HOLES):
        conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def upgrade(conn: sqlite3.Connection, version: int) -> None:
    """Bring a journal at ``version`` (1 to SCHEMA_VERSION - 1) to SCHEMA_VERSION, inside the caller's
    transaction: all of it or, on any error, nothing."""
    if version < 3:
        conn.execute(_HOLES)
    _rebuild_records(conn)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _rebuild_records(conn: sqlite3.Connection) -> None:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()
    counter = int(row[0]) if row is not None else 0
    conn.execute(_RECORDS.format(name="records_new"))
    conn.execute(
        "INSERT INTO records_new (position, kind, key, camera, payload, committed_at) "
        "SELECT position, kind, key, camera, payload, committed_at FROM records ORDER BY position"
    )
    conn.execute("DROP TABLE records")
    conn.execute("ALTER TABLE records_new RENAME TO records")
    conn.execute("DELETE FROM sqlite_sequence WHERE name = 'records'")
    highest = conn.execute("SELECT COALESCE(MAX(position), 0) FROM records").fetchone()[0]
    conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('records', ?)", (max(counter, int(highest)),))

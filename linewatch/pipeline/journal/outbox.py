"""The local durable journal: the daemon's transactional outbox.

Every verdict and every outgoing event is committed here, one SQLite transaction per scored batch, before
anything else (database, MQTT, evidence writer) sees it. Forwarders then read the journal in commit order
and move their own cursor forward once a record is delivered; after a crash or an outage they replay from
their cursor, so nothing is lost and nothing is reordered (delivery is at least once; sinks dedupe on the
record key).

Storage decisions:

- stdlib ``sqlite3``, deliberately independent of the SQLAlchemy main store: the journal must keep working
  when the main store (maybe PostgreSQL) is down.
- WAL mode, ``synchronous=FULL``: when ``append_batch`` returns, the batch is on disk even if the power
  fails in the next instant (NORMAL would only survive a process crash, not a power loss). The cost is one
  fsync of the WAL per batch, not per row, so batching keeps it small.
- ``busy_timeout`` so another process (a CLI reading backlogs) never makes a write fail outright.
- Schema version in ``PRAGMA user_version`` (journal/schema.py says what each added; older files are
  upgraded in place, in one transaction). A file written by a newer linewatch is refused rather than
  guessed at.
- Positions are the records' integer primary key, assigned in commit order across both kinds. Writes are
  serialised (``BEGIN IMMEDIATE``) and a failed batch is rolled back whole, so positions are gap-free.
- Within a batch, the verdicts come first in the order given, then the events in the order given.
- Operator labels are journaled too (kind ``label``), so feedback given while the main store is down is
  not lost and reaches it after the verdict it refers to; so are actions (kind ``action``: a camera
  switched, a product changed, a retrain or rollback asked for, and by whom).
- Payloads are strict JSON (no NaN/Infinity: MQTT and PostgreSQL consumers must be able to parse them).
  Datetimes are written as UTC ISO 8601 with exactly six fractional digits and a ``Z``
  (``2026-01-01T08:00:00.000000Z``); they read back as timezone-aware UTC datetimes equal to the originals.
  Naive datetimes are refused.

Thread safety: one connection (``check_same_thread=False``) guarded by one lock. SQLite serialises writers
on the file anyway, so a connection per thread would buy nothing for writes, and sharing one connection
keeps transaction boundaries simple: a lock holder always sees and ends its own transaction.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Collection, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from linewatch.clock import Clock
from linewatch.pipeline.journal import schema
from linewatch.pipeline.journal.records import (
    JournalError,
    JournalRecord,
    action_payload,
    encode_payload,
    event_from_payload,
    event_key,
    event_payload,
    format_ts,
    label_from_payload,
    label_payload,
    part_payload,
    verdict_payload,
)
from linewatch.pipeline.journal.schema import KINDS, SCHEMA_VERSION
from linewatch.types import Action, Event, EventType, Label, LabelTarget, PartResult, Verdict

BUSY_TIMEOUT_MS = 5000
# What goes first when the disk runs out (see Journal.prune_for_space): the cheapest loss first.
DROP_CLASSES = {
    "normal_verdict": "kind = 'verdict' AND json_extract(payload, '$.label') = 'normal'",
    "defect_verdict": "kind = 'verdict'",
    "part": "kind = 'part'",
    "event": "kind = 'event'",
    "label": "kind = 'label'",
    "action": "kind = 'action'",
}

log = logging.getLogger(__name__)


def _rollback(conn: sqlite3.Connection) -> None:
    # SQLite has already rolled back on some errors (disk full, I/O); a second ROLLBACK would mask the cause.
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class Journal:
    """The SQLite journal file. Safe to share between threads (see the module docstring)."""

    def __init__(self, path: Path, clock: Clock) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.RLock()
        self.appended: list[threading.Event] = []  # set after every commit: forwarders waiting for records wake
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn: sqlite3.Connection | None = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot open the journal: {exc}") from exc
        try:
            self._setup()
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def _setup(self) -> None:
        conn = self._db()
        try:
            # Check the version before anything writes to the file (switching to WAL does).
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            self._check_version(version)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); is it on a network share?")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            if version < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    # Another process may have created it between our check and the write lock.
                    version = conn.execute("PRAGMA user_version").fetchone()[0]
                    if version == 0:
                        schema.create(conn)
                    elif version < SCHEMA_VERSION:
                        schema.upgrade(conn, version)
                        log.info("%s: journal upgraded from schema %d to %d", self.path, version, SCHEMA_VERSION)
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
                self._check_version(conn.execute("PRAGMA user_version").fetchone()[0])
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot open the journal: {exc}") from exc

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise JournalError(
                f"{self.path}: journal schema version {version} is newer than this linewatch supports "
                f"({SCHEMA_VERSION}); upgrade linewatch or move the file away"
            )

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalError(f"{self.path}: the journal is closed")
        return self._conn

    # --- writing -------------------------------------------------------------------------------------------

    def append_batch(
        self,
        verdicts: Sequence[Verdict],
        events: Sequence[Event],
        labels: Sequence[Label] = (),
        actions: Sequence[Action] = (),
        parts: Sequence[PartResult] = (),
    ) -> list[int]:
        """Commit one batch in ONE transaction: all rows or none. Returns the positions: verdicts first, then
        events, then labels, then actions, then parts. A record whose (kind, key) is already journaled is not
        duplicated: its original position is returned (replay after a crash may re-append)."""
        rows: list[tuple[str, str, str, str]] = []
        for verdict in verdicts:
            payload = encode_payload("verdict", verdict.inspection_id, verdict_payload(verdict))
            rows.append(("verdict", verdict.inspection_id, verdict.camera, payload))
        for event in events:
            key = event_key(event)
            rows.append(("event", key, event.camera, encode_payload("event", key, event_payload(event))))
        for label in labels:
            payload = encode_payload("label", label.label_id, label_payload(label))
            rows.append(("label", label.label_id, label.camera, payload))
        for action in actions:
            payload = encode_payload("action", action.action_id, action_payload(action))
            rows.append(("action", action.action_id, action.camera or "", payload))
        for part in parts:  # the journal's camera column holds the station
            rows.append(
                ("part", part.result_id, part.station, encode_payload("part", part.result_id, part_payload(part)))
            )
        if not rows:
            return []
        with self._lock:
            conn = self._db()
            committed_at = format_ts(self._clock.now())
            positions: list[int] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for kind, key, camera, payload in rows:
                        positions.append(self._insert(conn, kind, key, camera, payload, committed_at))
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise JournalError(f"{self.path}: batch of {len(rows)} records not journaled: {exc}") from exc
        for event in self.appended:
            event.set()
        return positions

    @staticmethod
    def _insert(conn: sqlite3.Connection, kind: str, key: str, camera: str, payload: str, committed_at: str) -> int:
        existing = conn.execute("SELECT position FROM records WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        if existing is not None:
            return int(existing[0])
        cursor = conn.execute(
            "INSERT INTO records (kind, key, camera, payload, committed_at) VALUES (?, ?, ?, ?, ?)",
            (kind, key, camera, payload, committed_at),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def camera_of(self, target: LabelTarget, target_id: str) -> str | None:
        """The camera of a journaled inspection or event (episode), or None when the id is unknown. Feedback
        is checked against this before it is accepted, so labels never point at nothing."""
        kind, key = ("verdict", target_id) if target == LabelTarget.INSPECTION else ("event", f"{target_id}:1")
        with self._lock:
            rows = self._query("SELECT camera FROM records WHERE kind = ? AND key = ?", (kind, key))
        return str(rows[0][0]) if rows else None

    def recent_labels(self, camera: str, target_ids: Collection[str], committed_since: datetime) -> list[Label]:
        """The camera's labels on any of ``target_ids`` journaled since ``committed_since``, newest first (for
        repeat detection). SQLite filters on the ids, so a flood of labels costs one query, not a parse of
        every label of the last minute per label."""
        with self._lock:
            rows = self._query(
                "SELECT payload FROM records WHERE kind = 'label' AND camera = ? AND committed_at >= ? "
                "AND json_extract(payload, '$.target_id') IN (SELECT value FROM json_each(?)) "
                "ORDER BY position DESC",
                (camera, format_ts(committed_since), json.dumps(sorted(set(target_ids)))),
            )
        return [label_from_payload(json.loads(row[0])) for row in rows]

    def open_episodes(self) -> list[Event]:
        """The latest message of every episode that has no ``end`` in the journal, in journal order: what a
        crash left open. Event keys are ``<event_id>:<seq>``, so the episodes group on the key's prefix."""
        with self._lock:
            rows = self._query(
                "SELECT payload FROM records WHERE position IN ("
                " SELECT MAX(position) FROM records WHERE kind = 'event'"
                " GROUP BY substr(key, 1, instr(key, ':') - 1)"
                ") ORDER BY position"
            )
        latest = [event_from_payload(json.loads(row[0])) for row in rows]
        return [event for event in latest if event.type is not EventType.END]

    # --- forwarders' cursors -------------------------------------------------------------------------------

    def register_forwarder(self, name: str, start_at_head: bool = False) -> None:
        """Create the forwarder's cursor unless it already exists: at position 0, so it replays everything
        (a store that must hold every record), or with ``start_at_head`` at the current head (live alerts:
        a broker added to an old journal must not republish months of past episodes as new alarms). An
        existing cursor is never moved."""
        if not name:
            raise JournalError("a forwarder needs a non-empty name")
        now = format_ts(self._clock.now())
        with self._lock:
            start = self.head() if start_at_head else 0
            self._write(
                "INSERT OR IGNORE INTO forwarders (name, position, registered_at, updated_at) VALUES (?, ?, ?, ?)",
                (name, start, now, now),
            )

    def cursor(self, forwarder: str) -> int:
        """The forwarder's cursor: every record up to and including this position is done."""
        with self._lock:
            return self._cursor(forwarder)

    def head(self) -> int:
        """The last position ever committed (0 for a new journal); pruning old records does not lower it."""
        with self._lock:
            rows = self._query("SELECT seq FROM sqlite_sequence WHERE name = 'records'")
            return int(rows[0][0]) if rows else 0

    # --- keeping the file bounded --------------------------------------------------------------------------

    def prune_delivered(self, committed_before: datetime, forwarders: Collection[str]) -> int:
        """Delete records committed before ``committed_before`` that every named forwarder has passed (the
        ones running now: a cursor left behind by a forwarder no longer configured must not pin the file).
        Freed pages are reused by SQLite, so a journal pruned regularly stops growing."""
        cutoff = format_ts(committed_before)
        with self._lock:
            floor = min((self._cursor(name) for name in forwarders), default=self.head())
            pruned = self._delete("DELETE FROM records WHERE position <= ? AND committed_at < ?", (floor, cutoff))
            if pruned:  # holes the oldest end has passed mean nothing any more
                self._delete("DELETE FROM holes WHERE position < (SELECT MIN(position) FROM records)", ())
            return pruned

    def prune_for_space(self, count: int, forwarders: Collection[str]) -> dict[str, int]:
        """Delete up to ``count`` records to free space when the disk runs out while a sink is down for days,
        keeping what matters longest: first records every named forwarder has delivered (their content is
        already where it goes), then the undelivered ones oldest first by class (DROP_CLASSES): normal verdicts,
        defect verdicts, part verdicts, episode messages, operator labels, actions. Returns how many of each
        undelivered class went, plus ``delivered``. A forwarder behind a dropped record skips it; what is
        already in the store is unaffected."""
        dropped: dict[str, int] = {}
        with self._lock:
            floor = min((self._cursor(name) for name in forwarders), default=self.head())
            conn = self._db()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for name, where in (("delivered", f"position <= {int(floor)}"), *DROP_CLASSES.items()):
                        left = count - sum(dropped.values())
                        if left <= 0:
                            break
                        sql = f"SELECT position FROM records WHERE {where} ORDER BY position LIMIT ?"
                        positions = [(row[0],) for row in conn.execute(sql, (left,))]
                        if name != "delivered":  # from the middle: the backlog must not count them
                            conn.executemany("INSERT OR IGNORE INTO holes (position) VALUES (?)", positions)
                        conn.executemany("DELETE FROM records WHERE position = ?", positions)
                        dropped[name] = len(positions)
                    conn.execute("DELETE FROM holes WHERE position < (SELECT MIN(position) FROM records)")
                    conn.execute("COMMIT")
                except BaseException:
                    _rollback(conn)
                    raise
            except sqlite3.Error as exc:
                raise JournalError(f"{self.path}: pruning for space failed: {exc}") from exc
        return {name: n for name, n in dropped.items() if n}

    def count(self) -> int:
        with self._lock:
            return int(self._query("SELECT COUNT(*) FROM records")[0][0])

    def _delete(self, sql: str, params: Sequence[Any]) -> int:
        try:
            return self._db().execute(sql, params).rowcount
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: pruning failed: {exc}") from exc

    def read_after(self, forwarder: str, limit: int, kinds: Collection[str] | None = None) -> list[JournalRecord]:
        """Up to ``limit`` records after the forwarder's cursor, in position order, only of ``kinds`` (all when
        None). The cursor still means "everything up to here is done", whatever the kind."""
        if limit < 1:
            raise JournalError(f"limit must be at least 1, got {limit}")
        wanted = None if kinds is None else set(kinds)
        if wanted is not None and not wanted <= KINDS:
            raise JournalError(f"unknown record kinds {sorted(wanted - KINDS)}; known: {sorted(KINDS)}")
        if wanted is not None and not wanted:
            return []
        with self._lock:
            after = self._cursor(forwarder)
            sql = "SELECT position, kind, key, camera, payload, committed_at FROM records WHERE position > ?"
            params: list[Any] = [after]
            if wanted is not None and wanted != KINDS:
                sql += f" AND kind IN ({', '.join('?' for _ in wanted)})"
                params.extend(sorted(wanted))
            sql += " ORDER BY position LIMIT ?"
            params.append(limit)
            rows = self._query(sql, params)
        return [
            JournalRecord(
                position=row[0], kind=row[1], key=row[2], camera=row[3], payload=json.loads(row[4]), committed_at=row[5]
            )
            for row in rows
        ]

    def mark_done(self, forwarder: str, position: int) -> None:
        """Move the forwarder's cursor to ``position``. It only moves forward, and never past the head."""
        with self._lock:
            current = self._cursor(forwarder)
            if position < current:
                raise JournalError(f"forwarder {forwarder!r}: cursor cannot move back from {current} to {position}")
            if position == current:
                return
            head = self.head()
            if position > head:
                raise JournalError(f"forwarder {forwarder!r}: position {position} is past the journal head {head}")
            self._write(
                "UPDATE forwarders SET position = ?, updated_at = ? WHERE name = ?",
                (position, format_ts(self._clock.now()), forwarder),
            )

    def backlog(self, forwarder: str) -> int:
        """How many records (of any kind) lie after the forwarder's cursor."""
        with self._lock:
            return self._backlog_after(self._cursor(forwarder))

    def backlogs(self) -> dict[str, int]:
        with self._lock:
            rows = self._query("SELECT name, position FROM forwarders ORDER BY name")
            return {str(name): self._backlog_after(int(position)) for name, position in rows}

    def _backlog_after(self, cursor: int) -> int:
        """Records after ``cursor``, without counting them: positions leave from the oldest end (delivered
        records by age), except under disk pressure, whose deletions from the middle are noted in
        ``holes``; so the records after ``cursor`` are the positions up to the head less those holes. A
        COUNT(*) of records would scan a backlog of millions under the lock the scorer's commits take, on
        every scrape of /metrics while the broker is away; holes exist only after a disk ran full."""
        oldest = self._query("SELECT MIN(position) FROM records")[0][0]
        if oldest is None:
            return 0
        start = max(cursor, int(oldest) - 1)
        holes = self._query("SELECT COUNT(*) FROM holes WHERE position > ?", (start,))[0][0]
        return max(0, self.head() - start - int(holes))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- helpers (call with the lock held) -----------------------------------------------------------------

    def _cursor(self, forwarder: str) -> int:
        rows = self._query("SELECT position FROM forwarders WHERE name = ?", (forwarder,))
        if not rows:
            names = [row[0] for row in self._query("SELECT name FROM forwarders ORDER BY name")]
            raise JournalError(f"unknown forwarder {forwarder!r} (registered: {names})")
        return int(rows[0][0])

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self._db().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: read failed: {exc}") from exc

    def _write(self, sql: str, params: Sequence[Any]) -> None:
        # In autocommit mode a single statement is its own durable transaction.
        try:
            self._db().execute(sql, params)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: write failed: {exc}") from exc

"""The daily partitions of ``inspections`` on PostgreSQL (migration 0008): created ahead, compacted at
``keep_normal_days``, dropped at ``keep_days``. Retention (store_retention.py) calls it on each pass.

A day's partition goes through three names:

- ``inspections_pYYYYMMDD``: every frame of that UTC day;
- ``inspections_kYYYYMMDD`` once the day is older than ``keep_normal_days``: the rows retention keeps longer
  (defects, labelled frames, frames with evidence). Compacting builds it beside the old partition (the
  rows to keep copied over, its indexes and a CHECK on its range built before it joins), then swaps the two:
  a copy of a twentieth of the rows instead of deleting the rest one by one, and no dead rows left to vacuum;
- gone once older than ``keep_days``: dropped whole.

The frames that go are added to their minutes' ``deleted`` counts in the same transaction, so the roll-ups
and the History plot know which minutes have no rows left. ``inspections_default`` catches a frame outside
every partition (a clock far off); retention deletes its old rows row by row.

Locks. The copy holds a SHARE lock on the old day: reads go on, and so do the forwarders' ``SELECT ... FOR
UPDATE`` (a label's lookup, which cannot tell which day its frame is in, so it visits every partition); only a
write into that day (a label for a frame that old) waits. An EXCLUSIVE lock there would deadlock with such a
lookup: it holds its lock on ``inspections`` while it waits for the day, and the swap waits for that. The
swap (DETACH, DROP, ATTACH) needs an ACCESS EXCLUSIVE lock on ``inspections`` until it commits, which takes
milliseconds since everything was built before; but while it *waits* for that lock (behind a long dashboard
query, say) every forwarder's insert queues behind it. So it waits at most ``lock_timeout_ms`` (below
PostgreSQL's deadlock_timeout, so in the rare deadlock left, a label for a frame of the very day being
swapped, the swap is the one that gives way) and, refused, tries again on the next pass. Several daemons
share a plant's store: a transaction-level advisory lock lets one of them at a time change partitions, and
the others skip that pass.

Whose ``keep_*``. A day holds every line's frames, so whichever line's retention gets to a day decides for
all; each records its own keeps in ``retention_policies`` and the changes follow the longest recorded
(:meth:`InspectionPartitions.plant_keeps`): a line that wants its rows gone sooner keeps them as long as
the most careful line of the store, never the other way round.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as day_start
from typing import TypeVar

from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from linewatch.sinks.db import DatabaseError, LineScope, masked, translated
from linewatch.sinks.db_schema import RetentionPolicy

log = logging.getLogger(__name__)

_DAY = timedelta(days=1)
DAYS_AHEAD = 7  # partitions made ready for the coming week: a stopped retention does not send rows to default
_T = TypeVar("_T")
_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout
_LOCK_KEY = 0x6C77_7074  # pg_try_advisory_xact_lock key for partition changes ("lwpt")
_NAME = re.compile(r"^inspections_([pk])(\d{8})$")
_PLAIN_NORMAL = "verdict = 'normal' AND COALESCE(label, snapshot, heatmap) IS NULL"  # store_retention.plain_normal
# Adds the rows of one partition that match a condition to their minutes' ``deleted`` counts and returns how
# many (a minute missing, which only rows written around the counts could cause, is created with frames 0).
_COUNT_DELETED = """
WITH counted AS (
    SELECT site, line, date_trunc('minute', frame_ts) AS minute, camera, product, verdict, model_version,
           0 AS frames, 0 AS score_sum, max(score) AS score_max, max(threshold) AS threshold,
           0 AS labelled_normal, 0 AS labelled_defect, count(*) AS deleted
    FROM {partition} WHERE {condition}
    GROUP BY site, line, date_trunc('minute', frame_ts), camera, product, verdict, model_version
), added AS (
    INSERT INTO inspection_minutes (site, line, minute, camera, product, verdict, model_version, frames,
                                    score_sum, score_max, threshold, labelled_normal, labelled_defect, deleted)
    SELECT * FROM counted
    ON CONFLICT (site, line, minute, camera, product, verdict, model_version)
    DO UPDATE SET deleted = inspection_minutes.deleted + excluded.deleted
)
SELECT coalesce(sum(deleted), 0) FROM counted
"""


@dataclass(frozen=True)
class Partition:
    name: str
    day: date
    compacted: bool

    @property
    def start(self) -> datetime:
        return datetime.combine(self.day, day_start(), UTC)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=1)


@dataclass
class PartitionPass:
    created: int = 0
    compacted: int = 0
    dropped: int = 0
    normal_rows: int = 0  # plain normals that went with compacted partitions
    old_rows: int = 0  # rows that went with dropped partitions
    refused: int = 0  # changes that could not get their lock in time; tried again next pass
    longest_swap_s: float = 0.0  # the longest a change held inspections locked: its last statements and commit


def day_name(day: date, compacted: bool = False) -> str:
    return f"inspections_{'k' if compacted else 'p'}{day:%Y%m%d}"


class InspectionPartitions:
    """Creates, compacts and drops the daily partitions of ``inspections`` (PostgreSQL only)."""

    def __init__(self, engine: Engine, lock_timeout_ms: int = 500) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError("inspections is partitioned on PostgreSQL only")
        self._engine = engine
        self._where = masked(engine.url)
        self.lock_timeout_ms = lock_timeout_ms

    def partitions(self) -> list[Partition]:
        """The daily partitions, oldest first (the default partition is not one)."""
        query = text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'inspections'"
        )
        with translated(self._where, "listing the partitions of inspections"), self._engine.connect() as conn:
            names = list(conn.scalars(query))
        found = []
        for name in names:
            match = _NAME.match(name)
            if match is not None:
                day = datetime.strptime(match.group(2), "%Y%m%d").replace(tzinfo=UTC).date()
                found.append(Partition(name, day, match.group(1) == "k"))
        return sorted(found, key=lambda partition: partition.day)

    def plant_keeps(self, scope: LineScope, keep_normal: timedelta, keep: timedelta) -> tuple[timedelta, timedelta]:
        """Record ``scope``'s line's keeps in ``retention_policies`` and return the longest of every line's: a
        day partition holds every line's frames, so it is compacted and dropped only when no line of the store
        wants it any more (a line configured for 30 days must not lose its rows at 7 because another line of
        the store says 7). Lines whose retention never ran yet are not known; a retired line's row holds the
        store to its keeps until it is deleted."""
        table = RetentionPolicy.__table__
        row = {**scope.columns(), "keep_normal_days": keep_normal / _DAY, "keep_days": keep / _DAY}
        statement = pg_insert(table).values({**row, "recorded_at": func.now()})
        statement = statement.on_conflict_do_update(
            index_elements=["site", "line"],
            set_={name: statement.excluded[name] for name in ("keep_normal_days", "keep_days", "recorded_at")},
        )
        with translated(self._where, "recording the retention policy"), self._engine.begin() as conn:
            conn.execute(statement)
            longest = conn.execute(select(func.max(table.c.keep_normal_days), func.max(table.c.keep_days))).one()
        return max(keep_normal, longest[0] * _DAY), max(keep, longest[1] * _DAY)

    def maintain(self, now: datetime, keep_normal: timedelta, keep: timedelta) -> PartitionPass:
        """One pass: the coming days' partitions, then drops (whole days older than ``keep``), then compactions
        (whole days older than ``keep_normal``); each change in its own transaction."""
        result = PartitionPass()
        existing = self.partitions()
        have = {partition.day for partition in existing}
        today = now.astimezone(UTC).date()
        for day in (today + timedelta(days=offset) for offset in range(DAYS_AHEAD + 1)):
            if day not in have and self._change(result, f"creating {day_name(day)}", _create, day) is not None:
                result.created += 1
        for partition in existing:
            if partition.end <= now - keep:
                rows = self._change(result, f"dropping {partition.name}", _drop, partition)
                if rows is not None:
                    result.dropped += 1
                    result.old_rows += rows
            elif partition.end <= now - keep_normal and not partition.compacted:
                rows = self._change(result, f"compacting {partition.name}", _compact, partition)
                if rows is not None:
                    result.compacted += 1
                    result.normal_rows += rows
        return result

    def _change(
        self, result: PartitionPass, what: str, change: Callable[[Connection, _T], tuple[int, list[str]]], on: _T
    ) -> int | None:
        """``change(conn, on)`` in a transaction of its own that holds the partition lock, under the lock
        timeout, then the swap statements it returns (those that lock ``inspections`` against the forwarders,
        timed with the commit); its row count, or None when another daemon holds the partition lock or a table
        lock was not granted in time (the transaction is rolled back whole: nothing half done)."""
        started = time.monotonic()
        try:
            with translated(self._where, what), self._engine.connect() as conn:
                with conn.begin():
                    if not conn.scalar(text(f"SELECT pg_try_advisory_xact_lock({_LOCK_KEY})")):
                        log.info("store partitions: another daemon is changing partitions; %s on a later pass", what)
                        return None
                    conn.execute(text(f"SET LOCAL lock_timeout = {int(self.lock_timeout_ms)}"))
                    rows, swap = change(conn, on)
                    swapping = time.monotonic()
                    for statement in swap:
                        conn.execute(text(statement))
                swap_s = time.monotonic() - swapping
        except DatabaseError as problem:
            if getattr(getattr(problem.__cause__, "orig", None), "sqlstate", None) != _LOCK_NOT_AVAILABLE:
                raise
            result.refused += 1
            log.warning("store partitions: %s: no lock within %d ms; on a later pass", what, self.lock_timeout_ms)
            return None
        result.longest_swap_s = max(result.longest_swap_s, swap_s)
        log.info(
            "store partitions: %s done (%d rows) in %.0f ms, inspections locked for %.0f ms",
            what, rows, 1000 * (time.monotonic() - started), 1000 * swap_s,
        )  # fmt: skip
        return rows


def _literal(moment: datetime) -> str:
    """A UTC time as an SQL literal: DDL takes no bound parameters, and these come from dates, not input."""
    return f"'{moment.astimezone(UTC).isoformat()}'::timestamptz"


def _build(conn: Connection, name: str, start: datetime, end: datetime) -> None:
    """A table shaped like a partition of ``inspections`` (columns, CHECKs, indexes), with a CHECK on its range
    so that ATTACH need not scan it."""
    conn.execute(text(f"CREATE TABLE {name} (LIKE inspections INCLUDING ALL)"))
    range_check = f"frame_ts >= {_literal(start)} AND frame_ts < {_literal(end)}"
    conn.execute(text(f"ALTER TABLE {name} ADD CONSTRAINT {name}_range CHECK ({range_check})"))


def _attach(name: str, start: datetime, end: datetime) -> str:
    return f"ALTER TABLE inspections ATTACH PARTITION {name} FOR VALUES FROM ({_literal(start)}) TO ({_literal(end)})"


def _detach_and_drop(name: str) -> list[str]:
    return [f"ALTER TABLE inspections DETACH PARTITION {name}", f"DROP TABLE {name}"]


def _create(conn: Connection, day: date) -> tuple[int, list[str]]:
    """The day's partition, with any rows of that day the default partition caught moved in: the rows moved,
    and the statement that attaches it."""
    partition = Partition(day_name(day), day, compacted=False)
    _build(conn, partition.name, partition.start, partition.end)
    bounds = f"frame_ts >= {_literal(partition.start)} AND frame_ts < {_literal(partition.end)}"
    moved = conn.execute(
        text(
            f"WITH moved AS (DELETE FROM inspections_default WHERE {bounds} RETURNING *) "
            f"INSERT INTO {partition.name} SELECT * FROM moved"
        )
    ).rowcount
    return int(moved), [_attach(partition.name, partition.start, partition.end)]


def _compact(conn: Connection, partition: Partition) -> tuple[int, list[str]]:
    """Build the day's compacted partition, holding only the rows kept until ``keep_days``, and count the plain
    normals it leaves out as deleted: how many go, and the statements that swap the two."""
    conn.execute(text(f"LOCK TABLE {partition.name} IN SHARE MODE"))  # readers go on; writers wait
    count = conn.scalar(text(_COUNT_DELETED.format(partition=partition.name, condition=_PLAIN_NORMAL)))
    kept = day_name(partition.day, compacted=True)
    _build(conn, kept, partition.start, partition.end)
    conn.execute(text(f"INSERT INTO {kept} SELECT * FROM {partition.name} WHERE NOT ({_PLAIN_NORMAL})"))
    return int(count or 0), [*_detach_and_drop(partition.name), _attach(kept, partition.start, partition.end)]


def _drop(conn: Connection, partition: Partition) -> tuple[int, list[str]]:
    """Count the day's rows as deleted: how many go, and the statements that drop the partition whole."""
    conn.execute(text(f"LOCK TABLE {partition.name} IN SHARE MODE"))
    count = conn.scalar(text(_COUNT_DELETED.format(partition=partition.name, condition="true")))
    return int(count or 0), _detach_and_drop(partition.name)

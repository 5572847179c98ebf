"""Retention of the main store's inspections, with roll-ups that outlive them.

Every frame becomes an ``inspections`` row: 3.5 million a day on a line of 4 cameras at 10 fps. Rows go by
age, in two classes:

- plain normals (scorer's verdict normal, no operator label, no evidence) after ``keep_normal_days``: the
  bulk, and the least telling;
- everything else (defects, close calls and every frame with evidence, labelled frames: what an operator
  may want to look at again, and retraining's material) after ``keep_days``.

Part verdicts (``parts``) go after ``keep_days`` too.

Every frame is already counted in ``inspection_minutes`` (per minute, camera, product, verdict and model
version; the DB forwarder adds it as it arrives). What retention adds is *that* it went: each deleted row
adds one to its minute's ``deleted``, in the transaction that deletes it (a batch is either deleted and
counted, or neither), so the History plot knows which minutes it must draw from the counts. Minutes go
after ``keep_days`` (the plot's reach), the hourly counts the dashboards read (``inspection_hours``, and
``part_hours`` for the parts) after ``keep_rollup_days``.

On PostgreSQL ``inspections`` is partitioned by day, and whole days go at once
(:mod:`linewatch.sinks.store_partitions`: compacted at ``keep_normal_days``, dropped at ``keep_days``, the
longest any line of the store records), for every line of the store; the row-by-row deletion below then only
serves the default partition's strays. On SQLite (one line per file) it serves everything. A line deletes
only its own rows, parts and roll-ups.

Deletion never blocks the DB forwarder for long: candidates are read outside any write transaction
(WAL readers do not block writers on SQLite), then each batch of at most ``batch_rows`` is deleted in one
short write transaction that checks the condition again (``DELETE ... RETURNING``: a label written
between the read and the delete keeps its row), and retention pauses ``pause_s`` between batches so the
forwarder's next chunk gets the lock. ``longest_batch_s`` reports the longest such transaction.

The plain-normal pass walks the frame-time index from where its last batch ended (a keyset on frame time
and id): the rows it skips (defects, frames with evidence) stay until ``keep_days``, so walking them again
on every batch would grow slower with every day of history. A row never becomes a plain normal later
(labels are set, never removed; evidence paths stay), so nothing it skipped is missed. Nor does a row
arrive behind the walk: the forwarder replays at most the journal's ``keep_days``, which the config keeps
within ``keep_normal_days``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Engine, MetaData, Table, and_, delete, func, or_, select, true

from linewatch.clock import Clock
from linewatch.config import StoreSection
from linewatch.sinks.db import DatabaseError, in_line, masked, scope_of, translated, write_transaction
from linewatch.sinks.db_schema import Inspection, InspectionHour, InspectionMinute, PartHour, PartRecord
from linewatch.sinks.rollups import add_minutes, minute_counts
from linewatch.sinks.store_partitions import InspectionPartitions

log = logging.getLogger(__name__)

_DAY_S = 86400.0
_ROLLUP_SLICE = timedelta(hours=6)  # roll-ups deleted per transaction: 6 h of minutes at most
# PostgreSQL: the partition that catches frames outside every day's partition; deleted from row by row.
_DEFAULT_PARTITION = Inspection.__table__.to_metadata(MetaData(), name="inspections_default")


@dataclass(frozen=True)
class StoreRetentionPolicy:
    keep_normal: timedelta  # plain normals
    keep: timedelta  # every other inspection
    keep_rollups: timedelta
    batch_rows: int
    pause_s: float

    @classmethod
    def from_config(cls, store: StoreSection) -> StoreRetentionPolicy:
        return cls(
            timedelta(seconds=store.keep_normal_days * _DAY_S),
            timedelta(seconds=store.keep_days * _DAY_S),
            timedelta(seconds=store.keep_rollup_days * _DAY_S),
            store.retention_batch_rows,
            store.retention_pause_ms / 1000,
        )


@dataclass
class StoreRetentionStats:
    deleted: dict[str, int] = field(default_factory=lambda: {"normal": 0, "old": 0, "parts": 0, "rollup": 0})
    partitions: dict[str, int] = field(default_factory=lambda: {"created": 0, "compacted": 0, "dropped": 0})
    passes: int = 0
    failures: int = 0
    longest_batch_s: float = 0.0  # the longest the forwarder could wait in the last pass: a delete, a partition swap
    last_error: str | None = None


@dataclass(frozen=True)
class SweepResult:
    normal: int  # plain normals deleted
    old: int  # other inspections deleted after keep_days
    parts: int  # part verdicts deleted after keep_days
    rollups: int  # minutes deleted after keep, hours after keep_rollups
    longest_batch_s: float


_COUNTED = ("site", "line", "frame_ts", "camera", "product", "verdict", "model_version", "score", "threshold")


def plain_normal(table: Table) -> ColumnElement[bool]:
    """The rows that go after ``keep_normal_days``: normal, unlabelled, without evidence.

    One COALESCE rather than three ``IS NULL`` terms: SQLite, without statistics, takes ``label IS NULL`` for a
    selective use of ``ix_inspections_label`` and walked every unlabelled row (nearly all of them) for each
    batch, 270 ms per SELECT and 190 ms per DELETE on 1.2 million rows; a COALESCE uses no index, so the
    SELECT walks the frame-time index and the DELETE the primary key."""
    return and_(table.c.verdict == "normal", func.coalesce(table.c.label, table.c.snapshot, table.c.heatmap).is_(None))


class StoreRetention:
    """Deletes old inspections (whole days on PostgreSQL, bounded batches of rows otherwise), counting them
    in their minutes; :meth:`run` every interval."""

    def __init__(self, engine: Engine, clock: Clock, policy: StoreRetentionPolicy) -> None:
        self._engine = engine
        self._clock = clock
        self.policy = policy
        self.stats = StoreRetentionStats()
        self._where = masked(engine.url)
        self._scope = scope_of(engine)
        postgres = engine.dialect.name == "postgresql"
        self._partitions = InspectionPartitions(engine) if postgres else None
        self._rows: Table = _DEFAULT_PARTITION if postgres else Inspection.__table__  # deleted row by row
        self._normal_floor: tuple[datetime, str] | None = None  # where the plain-normal walk goes on
        self._warned_keeps: tuple[timedelta, timedelta] | None = None  # the plant's keeps last warned about

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Sweep at once, then every ``interval_s`` until ``stop``; a failed pass is logged and retried."""
        while not stop.is_set():
            try:
                result = self.sweep(stop)
                if result.normal or result.old or result.parts or result.rollups:
                    log.info(
                        "store retention: deleted %d plain normal and %d other inspection(s) (counted per "
                        "minute), %d part verdict(s), %d roll-up row(s); longest batch %.0f ms",
                        result.normal, result.old, result.parts, result.rollups, 1000 * result.longest_batch_s,
                    )  # fmt: skip
            except DatabaseError as problem:
                self.stats.failures += 1
                self.stats.last_error = str(problem)
                log.warning("store retention: %s; trying again in %.0f s", problem, interval_s)
            if self._clock.wait(interval_s, stop):
                return

    def sweep(self, stop: threading.Event | None = None) -> SweepResult:
        """One pass: on PostgreSQL the day partitions first; then rows older than ``keep`` (so the normal walk
        starts on less), plain normals older than ``keep_normal``, part verdicts, old roll-ups. ``stop`` ends
        it between batches."""
        stop = stop or threading.Event()
        now = self._clock.now()
        self.stats.longest_batch_s = 0.0
        normal = old = 0
        if self._partitions is not None:
            keeps = self._partitions.plant_keeps(self._scope, self.policy.keep_normal, self.policy.keep)
            if keeps != (self.policy.keep_normal, self.policy.keep) and keeps != self._warned_keeps:
                log.warning(
                    "store retention: another line of this store keeps its rows longer (keep_normal_days %g, "
                    "keep_days %g); the day partitions, which hold every line's rows, follow the longest",
                    keeps[0].total_seconds() / _DAY_S, keeps[1].total_seconds() / _DAY_S,
                )  # fmt: skip
            self._warned_keeps = keeps
            days = self._partitions.maintain(now, *keeps)
            normal, old = days.normal_rows, days.old_rows
            self.stats.deleted["normal"] += normal
            self.stats.deleted["old"] += old
            for change in self.stats.partitions:
                self.stats.partitions[change] += getattr(days, change)
            self.stats.longest_batch_s = days.longest_swap_s
        old += self._delete_rows(now - self.policy.keep, true(), None, stop)
        normal += self._delete_rows(now - self.policy.keep_normal, plain_normal(self._rows), "normal", stop)
        parts = self._delete_parts(now - self.policy.keep, stop)
        rollups = self._delete_rollups(now - self.policy.keep, now - self.policy.keep_rollups, stop)
        self.stats.passes += 1
        return SweepResult(normal, old, parts, rollups, self.stats.longest_batch_s)

    def _delete_rows(
        self, cutoff: datetime, condition: ColumnElement[bool], walk: str | None, stop: threading.Event
    ) -> int:
        """Delete this line's rows older than ``cutoff`` matching ``condition``, batch by batch, each counted in
        its minute; ``walk`` set: resume from (and remember) the keyset floor of the plain-normal walk."""
        table, total = self._rows, 0
        mine = in_line(table, self._scope)
        while not stop.is_set():
            candidates = select(table.c.id, table.c.frame_ts).where(mine, table.c.frame_ts < cutoff, condition)
            floor = self._normal_floor if walk else None
            if floor is not None:
                candidates = candidates.where(
                    table.c.frame_ts >= floor[0], or_(table.c.frame_ts > floor[0], table.c.id > floor[1])
                )
            candidates = candidates.order_by(table.c.frame_ts, table.c.id).limit(self.policy.batch_rows)
            with translated(self._where, "reading old inspections"), self._engine.connect() as conn:
                found = conn.execute(candidates).all()
            if not found:
                return total
            ids = [row.id for row in found]
            started = time.monotonic()
            with translated(self._where, "deleting old inspections"), write_transaction(self._engine) as conn:
                # The condition again, under the write lock: a row labelled since the read stays.
                deleted = conn.execute(
                    delete(table)
                    .where(mine, table.c.id.in_(ids), table.c.frame_ts < cutoff, condition)
                    .returning(*(table.c[name] for name in _COUNTED))
                ).all()
                add_minutes(conn, minute_counts((row._mapping for row in deleted), deleted=True))
            self.stats.longest_batch_s = max(self.stats.longest_batch_s, time.monotonic() - started)
            self.stats.deleted["normal" if walk else "old"] += len(deleted)
            total += len(deleted)
            if walk:
                self._normal_floor = (found[-1].frame_ts, found[-1].id)
            if len(found) < self.policy.batch_rows:
                return total
            if stop.wait(self.policy.pause_s):
                return total
        return total

    def _delete_parts(self, cutoff: datetime, stop: threading.Event) -> int:
        """Part verdicts older than ``keep_days``, oldest first (``ix_parts_at``), in bounded batches. Their
        frames go with the inspections' own retention; the per-minute counts keep the frames' verdicts."""
        total = 0
        while not stop.is_set():
            candidates = (
                select(PartRecord.result_id)
                .where(in_line(PartRecord, self._scope), PartRecord.at < cutoff)
                .order_by(PartRecord.at)
            ).limit(self.policy.batch_rows)
            with translated(self._where, "reading old part verdicts"), self._engine.connect() as conn:
                ids = list(conn.scalars(candidates))
            if not ids:
                return total
            started = time.monotonic()
            with translated(self._where, "deleting old part verdicts"), write_transaction(self._engine) as conn:
                count = conn.execute(
                    delete(PartRecord).where(in_line(PartRecord, self._scope), PartRecord.result_id.in_(ids))
                ).rowcount
            self.stats.longest_batch_s = max(self.stats.longest_batch_s, time.monotonic() - started)
            self.stats.deleted["parts"] += count
            total += count
            if len(ids) < self.policy.batch_rows or stop.wait(self.policy.pause_s):
                return total
        return total

    def _delete_rollups(self, minutes_cutoff: datetime, cutoff: datetime, stop: threading.Event) -> int:
        """This line's hours (of frames and of parts) older than ``cutoff`` and minutes older than ``keep`` (the
        History plot draws minutes as long as rows are kept; the dashboards read hours), a slice of time per
        transaction."""
        total = 0
        for table, time_column, older_than in (
            (InspectionMinute.__table__, "minute", minutes_cutoff),
            (InspectionHour.__table__, "hour", cutoff),
            (PartHour.__table__, "hour", cutoff),
        ):
            mine, at = in_line(table, self._scope), table.c[time_column]
            while not stop.is_set():
                with translated(self._where, "reading old roll-ups"), self._engine.connect() as conn:
                    oldest = conn.scalar(select(func.min(at)).where(mine))
                if oldest is None or oldest >= older_than:
                    break
                upper = min(older_than, oldest + _ROLLUP_SLICE)
                started = time.monotonic()
                with translated(self._where, "deleting old roll-ups"), write_transaction(self._engine) as conn:
                    count = conn.execute(delete(table).where(mine, at < upper)).rowcount
                self.stats.longest_batch_s = max(self.stats.longest_batch_s, time.monotonic() - started)
                self.stats.deleted["rollup"] += count
                total += count
                if stop.wait(self.policy.pause_s):
                    return total
        return total

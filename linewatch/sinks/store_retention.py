"""Retention of the main store's inspections, with roll-ups that outlive them.

Every frame becomes an ``inspections`` row: 3.5 million a day on a line of 4 cameras at 10 fps. Rows go by
age, in two classes:

- plain normals (scorer's verdict normal, no operator label, no evidence) after ``keep_normal_days``: the
  bulk, and the least telling;
- everything else (defects, close calls and every frame with evidence, labelled frames: what an operator
  may want to look at again, and retraining's material) after ``keep_days``.

Part verdicts (``parts``) go after ``keep_days`` too.

Before a row goes, it is counted into ``inspection_minutes`` (per minute, camera, product, verdict and
model version: frames, score sum and maximum, the threshold, labels) in the same transaction that deletes it, so the
counts are exact whatever crashes when: a batch is either deleted and counted, or neither. The History
page and the dashboards add those counts to the rows still there. Roll-ups go after ``keep_rollup_days``.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, delete, func, or_, select, true
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from linewatch.clock import Clock
from linewatch.config import StoreSection
from linewatch.sinks.db import DatabaseError, masked, translated, write_transaction
from linewatch.sinks.db_schema import Inspection, InspectionMinute, PartRecord

log = logging.getLogger(__name__)

_DAY_S = 86400.0
_ROLLUP_SLICE = timedelta(hours=6)  # roll-ups deleted per transaction: 6 h of minutes at most


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
    passes: int = 0
    failures: int = 0
    longest_batch_s: float = 0.0  # the longest delete transaction of the last pass
    last_error: str | None = None


@dataclass(frozen=True)
class SweepResult:
    normal: int  # plain normals deleted (rolled up)
    old: int  # other inspections deleted after keep_days (rolled up)
    parts: int  # part verdicts deleted after keep_days
    rollups: int  # roll-up rows deleted after keep_rollups
    longest_batch_s: float


_ROLLED_COLUMNS = (
    Inspection.id,
    Inspection.frame_ts,
    Inspection.camera,
    Inspection.product,
    Inspection.verdict,
    Inspection.model_version,
    Inspection.score,
    Inspection.threshold,
    Inspection.label,
)


def plain_normal() -> ColumnElement[bool]:
    """The rows that go after ``keep_normal_days``: normal, unlabelled, without evidence.

    One COALESCE rather than three ``IS NULL`` terms: SQLite, without statistics, takes ``label IS NULL`` for a
    selective use of ``ix_inspections_label`` and walked every unlabelled row (nearly all of them) for each
    batch, 270 ms per SELECT and 190 ms per DELETE on 1.2 million rows; a COALESCE uses no index, so the
    SELECT walks the frame-time index and the DELETE the primary key."""
    return and_(
        Inspection.verdict == "normal",
        func.coalesce(Inspection.label, Inspection.snapshot, Inspection.heatmap).is_(None),
    )


def minute_rollups(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Deleted rows (with the :data:`_ROLLED_COLUMNS`) as ``inspection_minutes`` rows, one per key, sorted."""
    groups: dict[tuple[datetime, str, str, str, str], dict[str, Any]] = {}
    for row in rows:
        minute = row.frame_ts.replace(second=0, microsecond=0)
        key = (minute, row.camera, row.product, row.verdict, row.model_version)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {
                "minute": minute,
                "camera": row.camera,
                "product": row.product,
                "verdict": row.verdict,
                "model_version": row.model_version,
                "frames": 0,
                "score_sum": 0.0,
                "score_max": row.score,
                "threshold": row.threshold,
                "labelled_normal": 0,
                "labelled_defect": 0,
            }
        group["frames"] += 1
        group["score_sum"] += row.score
        group["score_max"] = max(group["score_max"], row.score)
        group["threshold"] = max(group["threshold"], row.threshold)  # one value per version and product
        group["labelled_normal"] += row.label == "normal"
        group["labelled_defect"] += row.label == "defect"
    return [groups[key] for key in sorted(groups)]


class StoreRetention:
    """Deletes old inspections in bounded batches, rolling each batch up first; :meth:`run` every interval."""

    def __init__(self, engine: Engine, clock: Clock, policy: StoreRetentionPolicy) -> None:
        self._engine = engine
        self._clock = clock
        self.policy = policy
        self.stats = StoreRetentionStats()
        self._where = masked(engine.url)
        postgres = engine.dialect.name == "postgresql"
        self._insert = pg_insert if postgres else sqlite_insert
        self._greatest = func.greatest if postgres else func.max  # SQLite's two-argument max() is scalar
        self._normal_floor: tuple[datetime, str] | None = None  # where the plain-normal walk goes on

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Sweep at once, then every ``interval_s`` until ``stop``; a failed pass is logged and retried."""
        while not stop.is_set():
            try:
                result = self.sweep(stop)
                if result.normal or result.old or result.parts or result.rollups:
                    log.info(
                        "store retention: deleted %d plain normal and %d other inspection(s) (rolled up per "
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
        """One pass: everything older than ``keep`` first (so the normal walk starts on less), then plain
        normals older than ``keep_normal``, then old roll-ups. ``stop`` ends it between batches."""
        stop = stop or threading.Event()
        now = self._clock.now()
        self.stats.longest_batch_s = 0.0
        old = self._delete_rolled(now - self.policy.keep, true(), None, stop)
        normal = self._delete_rolled(now - self.policy.keep_normal, plain_normal(), "normal", stop)
        parts = self._delete_parts(now - self.policy.keep, stop)
        rollups = self._delete_rollups(now - self.policy.keep_rollups, stop)
        self.stats.passes += 1
        return SweepResult(normal, old, parts, rollups, self.stats.longest_batch_s)

    def _delete_rolled(
        self, cutoff: datetime, condition: ColumnElement[bool], walk: str | None, stop: threading.Event
    ) -> int:
        """Delete rows older than ``cutoff`` matching ``condition``, batch by batch, rolling each up; ``walk``
        set: resume from (and remember) the keyset floor of the plain-normal walk."""
        total = 0
        while not stop.is_set():
            candidates = select(Inspection.id, Inspection.frame_ts).where(Inspection.frame_ts < cutoff, condition)
            floor = self._normal_floor if walk else None
            if floor is not None:
                candidates = candidates.where(
                    Inspection.frame_ts >= floor[0], or_(Inspection.frame_ts > floor[0], Inspection.id > floor[1])
                )
            candidates = candidates.order_by(Inspection.frame_ts, Inspection.id).limit(self.policy.batch_rows)
            with translated(self._where, "reading old inspections"), self._engine.connect() as conn:
                found = conn.execute(candidates).all()
            if not found:
                return total
            ids = [row.id for row in found]
            started = time.monotonic()
            with translated(self._where, "deleting old inspections"), write_transaction(self._engine) as conn:
                # The condition again, under the write lock: a row labelled since the read stays.
                deleted = conn.execute(
                    delete(Inspection)
                    .where(Inspection.id.in_(ids), Inspection.frame_ts < cutoff, condition)
                    .returning(*_ROLLED_COLUMNS)
                ).all()
                rollups = minute_rollups(deleted)
                if rollups:
                    conn.execute(self._add_rollups(rollups))
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

    def _add_rollups(self, rows: list[dict[str, Any]]) -> Any:
        """An upsert that adds to a minute's existing counts (another class's rows may be there already)."""
        table = InspectionMinute.__table__
        statement = self._insert(table).values(rows)
        added = statement.excluded
        return statement.on_conflict_do_update(
            index_elements=["minute", "camera", "product", "verdict", "model_version"],
            set_={
                "frames": table.c.frames + added.frames,
                "score_sum": table.c.score_sum + added.score_sum,
                "score_max": self._greatest(table.c.score_max, added.score_max),
                "threshold": self._greatest(table.c.threshold, added.threshold),
                "labelled_normal": table.c.labelled_normal + added.labelled_normal,
                "labelled_defect": table.c.labelled_defect + added.labelled_defect,
            },
        )

    def _delete_parts(self, cutoff: datetime, stop: threading.Event) -> int:
        """Part verdicts older than ``keep_days``, oldest first (``ix_parts_at``), in bounded batches. Their
        frames go with the inspections' own retention; the per-minute counts keep the frames' verdicts."""
        total = 0
        while not stop.is_set():
            candidates = (
                select(PartRecord.result_id).where(PartRecord.at < cutoff).order_by(PartRecord.at)
            ).limit(self.policy.batch_rows)
            with translated(self._where, "reading old part verdicts"), self._engine.connect() as conn:
                ids = list(conn.scalars(candidates))
            if not ids:
                return total
            started = time.monotonic()
            with translated(self._where, "deleting old part verdicts"), write_transaction(self._engine) as conn:
                count = conn.execute(delete(PartRecord).where(PartRecord.result_id.in_(ids))).rowcount
            self.stats.longest_batch_s = max(self.stats.longest_batch_s, time.monotonic() - started)
            self.stats.deleted["parts"] += count
            total += count
            if len(ids) < self.policy.batch_rows or stop.wait(self.policy.pause_s):
                return total
        return total

    def _delete_rollups(self, cutoff: datetime, stop: threading.Event) -> int:
        total = 0
        while not stop.is_set():
            with translated(self._where, "reading old roll-ups"), self._engine.connect() as conn:
                oldest = conn.scalar(select(func.min(InspectionMinute.minute)))
            if oldest is None or oldest >= cutoff:
                return total
            upper = min(cutoff, oldest + _ROLLUP_SLICE)
            started = time.monotonic()
            with translated(self._where, "deleting old roll-ups"), write_transaction(self._engine) as conn:
                count = conn.execute(delete(InspectionMinute).where(InspectionMinute.minute < upper)).rowcount
            self.stats.longest_batch_s = max(self.stats.longest_batch_s, time.monotonic() - started)
            self.stats.deleted["rollup"] += count
            total += count
            if stop.wait(self.policy.pause_s):
                return total
        return total

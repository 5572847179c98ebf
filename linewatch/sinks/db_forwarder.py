"""The journal's DB forwarder: verdicts, defect-episode messages and operator labels into the main store.

One transaction per chunk, in journal order, idempotent upserts keyed on the daemon's stable ids (dialect
``INSERT .. ON CONFLICT`` on SQLite and PostgreSQL), so the runner may offer a chunk any number of times. A
run of consecutive verdicts is one executemany (the common case, and the one that has to be fast); event
messages and labels, rare, are written one by one because each reads state the previous one may have set.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from linewatch.journal import JournalError, JournalRecord, parse_ts
from linewatch.sinks.db import DatabaseError, masked, reason, write_transaction
from linewatch.sinks.db_schema import EVENT_TYPES, LABEL_TARGETS, VERDICTS, DefectEvent, Inspection, LabelRecord

log = logging.getLogger(__name__)


@dataclass
class DbStats:
    """What committed chunks carried since start; replays count again (they are rewritten, idempotently)."""

    chunks: int = 0
    inspections: int = 0  # verdict records upserted
    events: int = 0  # event messages folded into their episode row
    labels: int = 0  # label records stored and applied
    orphan_labels: int = 0  # of those, labels whose target row is missing (kept in the history only)
    skipped: int = 0  # malformed records, logged and skipped so that one cannot wedge the forwarder


class DbForwarder:
    """Writes journal records (verdicts, event messages, labels) into the main store, one transaction per chunk,
    in journal order, idempotently: a replayed chunk leaves the same rows.

    - verdict: upsert of the inspection row; a replay rewrites the scorer's fields, never the label ones.
    - event: folded into one row per episode. A message older than the row's ``last_seq`` (a replay) changes
      nothing, so state never moves backwards; ``new`` always restores the start; ``update`` sets the peak
      (and its evidence); ``end`` sets ``ended_at``.
    - label: stored in the history (once per label id), then set as the latest label on its target unless that
      already carries a later one: the inspection, or the event and every defect inspection of its camera
      inside the episode ``[started_at, ended_at or last_at]`` (the frames the operator judged).

    ``send`` raises :class:`DatabaseError` when the database fails; the runner backs off and offers the same
    chunk again.
    """

    kinds: Collection[str] | None = None

    def __init__(self, engine: Engine, name: str = "db") -> None:
        self.name = name
        self.stats = DbStats()
        self._engine = engine
        self._where = masked(engine.url)
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        table = Inspection.__table__
        upsert = self._insert(table)
        self._upsert_inspections = upsert.on_conflict_do_update(
            index_elements=["id"],
            set_={column.name: upsert.excluded[column.name] for column in table.c if column.name in _SCORER_FIELDS},
        )

    def send(self, records: Sequence[JournalRecord]) -> int:
        if not records:
            return 0
        counts = DbStats(chunks=1)
        runs = _runs(records, counts)
        try:
            with write_transaction(self._engine) as conn:
                for kind, rows in runs:
                    if kind == "verdict":
                        conn.execute(self._upsert_inspections, rows)  # the journal holds each key once
                        counts.inspections += len(rows)
                    elif kind == "event":
                        for row in rows:
                            self._write_event(conn, row)
                        counts.events += len(rows)
                    else:
                        for row in rows:
                            self._write_label(conn, row, counts)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"{self._where}: {len(records)} journal records not written: {reason(exc)}") from exc
        for field in fields(DbStats):
            setattr(self.stats, field.name, getattr(self.stats, field.name) + getattr(counts, field.name))
        return len(records)

    def _write_event(self, conn: Connection, row: dict[str, Any]) -> None:
        table = DefectEvent.__table__
        stmt = self._insert(table).values(row)
        new = stmt.excluded
        if row["last_type"] == "new":
            # Only the opening's own fields: a later message seen first created the row from itself.
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["event_id"],
                    set_={"started_at": new.started_at, "first_inspection_id": new.first_inspection_id},
                )
            )
            return
        latest = ("last_at", "last_type", "last_seq", "last_inspection_id")
        changes: dict[str, Any] = {name: new[name] for name in latest}
        if row["last_type"] == "end":
            changes["ended_at"] = new.ended_at
        else:  # an update announces a new peak (events.step emits one only above the peak so far)
            for name in ("peak_score", "threshold", "model_version", "snapshot", "heatmap"):
                changes[name] = new[name]
        conn.execute(
            stmt.on_conflict_do_update(index_elements=["event_id"], set_=changes, where=table.c.last_seq < new.last_seq)
        )

    def _write_label(self, conn: Connection, row: dict[str, Any], counts: DbStats) -> None:
        conn.execute(
            self._insert(LabelRecord.__table__).values(row).on_conflict_do_nothing(index_elements=["label_id"])
        )
        latest = {
            "label": row["label"],
            "label_source": row["source"],
            "label_user": row["username"],
            "labelled_at": row["labelled_at"],
        }
        at, target_id = row["labelled_at"], row["target_id"]
        if row["target"] == "inspection":
            done = conn.execute(
                update(Inspection).where(Inspection.id == target_id, _not_newer(Inspection, at)).values(latest)
            )
            found = (
                done.rowcount > 0 or conn.scalar(select(Inspection.id).where(Inspection.id == target_id)) is not None
            )
        else:
            episode = conn.execute(
                select(DefectEvent.camera, DefectEvent.started_at, DefectEvent.ended_at, DefectEvent.last_at).where(
                    DefectEvent.event_id == target_id
                )
            ).first()
            found = episode is not None
            if episode is not None:
                conn.execute(
                    update(DefectEvent)
                    .where(DefectEvent.event_id == target_id, _not_newer(DefectEvent, at))
                    .values(latest)
                )
                conn.execute(
                    update(Inspection)
                    .where(
                        Inspection.camera == episode.camera,
                        Inspection.verdict == "defect",
                        Inspection.frame_ts >= episode.started_at,
                        Inspection.frame_ts <= (episode.ended_at or episode.last_at),
                        _not_newer(Inspection, at),
                    )
                    .values(latest)
                )
        counts.labels += 1
        if not found:
            counts.orphan_labels += 1
            log.warning(
                "label %s: %s %r is not in the store; kept in the labels history only",
                row["label_id"],
                row["target"],
                target_id,
            )


# Inspection columns a verdict record sets; the label columns and trained_into belong to later writers.
_SCORER_FIELDS = frozenset(
    {"camera", "product", "seq", "frame_ts", "score", "threshold", "verdict", "model_version", "part_id"}
    | {"snapshot", "heatmap", "journal_position"}
)


def _not_newer(entity: type[Inspection] | type[DefectEvent], at: datetime) -> ColumnElement[bool]:
    """The target's latest label is not later than ``at`` (or there is none): replays never undo a newer label."""
    return or_(entity.labelled_at.is_(None), entity.labelled_at <= at)


def _runs(records: Sequence[JournalRecord], counts: DbStats) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows per run of consecutive records of one kind, in journal order; malformed records logged and skipped."""
    runs: list[tuple[str, list[dict[str, Any]]]] = []
    for record in records:
        try:
            parse = _ROWS.get(record.kind)
            if parse is None:
                raise ValueError(f"unknown record kind {record.kind!r}")
            row = parse(record)
        except (KeyError, TypeError, ValueError, JournalError) as exc:
            counts.skipped += 1
            log.error("db: skipping malformed %s record #%d (%s): %s", record.kind, record.position, record.key, exc)
            continue
        if runs and runs[-1][0] == record.kind:
            runs[-1][1].append(row)
        else:
            runs.append((record.kind, [row]))
    return runs


def _inspection_row(record: JournalRecord) -> dict[str, Any]:
    p = record.payload
    return {
        "id": _text(p, "inspection_id"),
        "camera": _text(p, "camera"),
        "product": _text(p, "product"),
        "seq": _integer(p, "seq"),
        "frame_ts": parse_ts(p.get("frame_ts")),
        "score": _number(p, "score"),
        "threshold": _number(p, "threshold"),
        "verdict": _one_of(p, "label", VERDICTS),
        "model_version": _text(p, "model_version"),
        "part_id": _optional_text(p, "part_id"),
        "snapshot": _optional_text(p, "snapshot"),
        "heatmap": _optional_text(p, "heatmap"),
        "journal_position": record.position,
    }


def _event_row(record: JournalRecord) -> dict[str, Any]:
    p = record.payload
    kind = _one_of(p, "type", EVENT_TYPES)
    at = parse_ts(p.get("frame_ts"))
    inspection_id = _text(p, "inspection_id")
    return {
        "event_id": _text(p, "event_id"),
        "camera": _text(p, "camera"),
        "product": _text(p, "product"),
        "started_at": at,
        "last_at": at,
        "ended_at": at if kind == "end" else None,
        "last_type": kind,
        "last_seq": _integer(p, "seq"),
        "peak_score": _number(p, "score"),
        "threshold": _number(p, "threshold"),
        "model_version": _text(p, "model_version"),
        "first_inspection_id": inspection_id,
        "last_inspection_id": inspection_id,
        "snapshot": _optional_text(p, "snapshot"),
        "heatmap": _optional_text(p, "heatmap"),
    }


def _label_row(record: JournalRecord) -> dict[str, Any]:
    p = record.payload
    return {
        "label_id": _text(p, "label_id"),
        "target": _one_of(p, "target", LABEL_TARGETS),
        "target_id": _text(p, "target_id"),
        "camera": _text(p, "camera"),
        "label": _one_of(p, "label", VERDICTS),
        "source": _text(p, "source"),
        "username": _optional_text(p, "user"),
        "labelled_at": parse_ts(p.get("labelled_at")),
    }


_ROWS = {"verdict": _inspection_row, "event": _event_row, "label": _label_row}


def _text(payload: dict[str, Any], key: str) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string, got {value!r}")
    return value


def _optional_text(payload: dict[str, Any], key: str) -> str | None:
    return None if payload.get(key) is None else _text(payload, key)


def _one_of(payload: dict[str, Any], key: str, allowed: tuple[str, ...]) -> str:
    value = payload.get(key)
    if value not in allowed:
        raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")
    return str(value)


def _integer(payload: dict[str, Any], key: str) -> int:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


def _number(payload: dict[str, Any], key: str) -> float:
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return float(value)

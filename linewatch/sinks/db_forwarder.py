"""The journal's DB forwarder: verdicts, defect-episode messages, operator labels and actions into the main store.

One transaction per chunk, in journal order, idempotent upserts keyed on the daemon's stable ids (dialect
``INSERT .. ON CONFLICT`` on SQLite and PostgreSQL), so the runner may offer a chunk any number of times. A
run of consecutive verdicts is one executemany (the common case, and the one that has to be fast); event
messages and labels, rare, are written one by one because each reads state the previous one may have set.
Payloads are read with the journal's own strict parsers (``verdict_from_payload`` & co.): one definition of
a valid record for every reader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Row, Select, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from linewatch.pipeline.journal.records import (
    JournalError,
    JournalRecord,
    action_from_payload,
    event_from_payload,
    label_from_payload,
    part_from_payload,
    verdict_from_payload,
)
from linewatch.sinks.db import DatabaseError, LineScope, in_line, masked, reason, scope_of, write_transaction
from linewatch.sinks.db_schema import ActionRecord, DefectEvent, Inspection, LabelRecord, LatestLabel, PartRecord
from linewatch.sinks.rollups import add_minutes, add_part, label_moves, minute_counts
from linewatch.types import Action, Event, EventType, Label, LabelTarget, PartResult, Verdict, VerdictLabel

log = logging.getLogger(__name__)


@dataclass
class DbStats:
    """What committed chunks carried since start; replays count again (they are rewritten, idempotently)."""

    chunks: int = 0
    inspections: int = 0  # verdict records upserted
    events: int = 0  # event messages folded into their episode row
    labels: int = 0  # label records stored and applied
    actions: int = 0  # action records stored
    parts: int = 0  # part verdicts stored
    orphan_labels: int = 0  # of those, labels whose target row is missing (kept in the history only)
    skipped: int = 0  # malformed records, logged and skipped so that one cannot wedge the forwarder


class DbForwarder:
    """Writes journal records (verdicts, event messages, labels) into the main store, one transaction per chunk,
    in journal order, idempotently: a replayed chunk leaves the same rows.

    - verdict: upsert of the inspection row; a replay rewrites the scorer's fields, never the label ones. Rows
      new to the store are added to their minute's counts (``inspection_minutes``) in the same transaction,
      so the counts never miss a row nor count a replayed one twice.
    - event: folded into one row per episode. A message older than the row's ``last_seq`` (a replay) changes
      nothing, so state never moves backwards; ``new`` always restores the start; ``update`` sets the peak
      (and its evidence); ``end`` sets ``ended_at``.
    - part: a station's verdict on one part, stored once per result id and counted into its hour
      (``part_hours``) when first stored.
    - action: stored once per action id (who switched a camera, changed a product, asked for a retrain).
    - label: stored in the history (once per label id), then set as the latest label on its target unless that
      already carries a later one: the inspection, or the event and every defect inspection of its camera
      inside the episode ``[started_at, ended_at or last_at]`` (the frames the operator judged). Each frame
      whose label changes moves between its minute's ``labelled_*`` counts.

    An operator may label an episode while it is still open: its later defect frames are not covered yet.
    So every event message folded into an episode that carries a label applies that label again over the
    episode's whole span, to the frames that carry no label or an older one. Nothing else is needed for
    the frames written after the label: the daemon journals a batch's verdicts before the event messages
    they cause, and a camera's frames in time order, so every frame inside the span an event message
    announces is already in the store when that message is folded; the ``end`` message closes the span.
    (Only a wall clock stepped back mid-episode could journal a frame inside a span already folded; that
    frame would keep no label.)

    Every row is stamped with the engine's line (:func:`linewatch.sinks.db.scope_of`) and every lookup stays
    inside it. ``send`` raises :class:`DatabaseError` when the database fails; the runner backs off and offers
    the same chunk again.
    """

    kinds: Collection[str] | None = None

    def __init__(self, engine: Engine, name: str = "db") -> None:
        self.name = name
        self.stats = DbStats()
        self._engine = engine
        self._scope = scope_of(engine)
        self._where = masked(engine.url)
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
        table = Inspection.__table__
        key = ["site", "line", "id", "frame_ts"]
        self._insert_new = self._insert(table).on_conflict_do_nothing(index_elements=key).returning(table.c.id)
        upsert = self._insert(table)
        self._rewrite_replayed = upsert.on_conflict_do_update(
            index_elements=key,
            set_={column.name: upsert.excluded[column.name] for column in table.c if column.name in _SCORER_FIELDS},
        )
        parts = PartRecord.__table__
        self._insert_part = (
            self._insert(parts)
            .on_conflict_do_nothing(index_elements=["site", "line", "result_id"])
            .returning(parts.c.result_id)
        )

    def send(self, records: Sequence[JournalRecord]) -> int:
        if not records:
            return 0
        counts = DbStats(chunks=1)
        parsed = _parse(records, counts)
        try:
            with write_transaction(self._engine) as conn:
                verdicts: list[dict[str, Any]] = []  # the current run of consecutive verdicts
                for position, value in parsed:
                    if isinstance(value, Verdict):
                        verdicts.append(_inspection_row(value, position, self._scope))
                        continue
                    self._write_inspections(conn, verdicts, counts)
                    verdicts = []
                    if isinstance(value, Event):
                        self._write_event(conn, value)
                        counts.events += 1
                    elif isinstance(value, Action):
                        self._write_action(conn, value)
                        counts.actions += 1
                    elif isinstance(value, PartResult):
                        self._write_part(conn, value)
                        counts.parts += 1
                    else:
                        self._write_label(conn, value, counts)
                self._write_inspections(conn, verdicts, counts)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"{self._where}: {len(records)} journal records not written: {reason(exc)}") from exc
        for field in fields(DbStats):
            setattr(self.stats, field.name, getattr(self.stats, field.name) + getattr(counts, field.name))
        return len(records)

    def _write_inspections(self, conn: Connection, rows: list[dict[str, Any]], counts: DbStats) -> None:
        """Insert the rows new to the store and count them into their minutes; rewrite the scorer's fields of
        the others (a replayed chunk), which are not counted again. Inserting first and learning which rows
        were new from RETURNING costs one statement where the usual chunk holds only new rows (PostgreSQL
        cannot return ``xmax`` from a partitioned table, which would tell an upsert's inserts apart)."""
        if not rows:
            return
        inserted = set(conn.scalars(self._insert_new, rows))  # the journal holds each key once
        replayed = [row for row in rows if row["id"] not in inserted]
        if replayed:
            conn.execute(self._rewrite_replayed, replayed)
        add_minutes(conn, minute_counts(row for row in rows if row["id"] in inserted))
        counts.inspections += len(rows)

    def _write_event(self, conn: Connection, event: Event) -> None:
        table = DefectEvent.__table__
        stmt = self._insert(table).values(_event_row(event, self._scope))
        new = stmt.excluded
        if event.type is EventType.NEW:
            # Only the opening's own fields: a later message seen first created the row from itself.
            fold = stmt.on_conflict_do_update(
                index_elements=_EVENT_KEY,
                set_={"started_at": new.started_at, "first_inspection_id": new.first_inspection_id},
            )
        else:
            latest = ("last_at", "last_type", "last_seq", "last_inspection_id")
            changes: dict[str, Any] = {name: new[name] for name in latest}
            if event.type is EventType.END:
                changes["ended_at"] = new.ended_at
                changes["end_reason"] = new.end_reason
            else:  # an update announces a new peak (events.step emits one only above the peak so far)
                for name in ("peak_score", "threshold", "model_version", "snapshot", "heatmap"):
                    changes[name] = new[name]
            fold = stmt.on_conflict_do_update(
                index_elements=_EVENT_KEY, set_=changes, where=table.c.last_seq < new.last_seq
            )
        conn.execute(fold)
        episode = self._episode(conn, event.event_id)
        if episode is not None and episode.labelled_at is not None:
            # Frames already carrying this very label (labelled_at equal) are left as they are: no rewrite.
            self._label_frames(conn, episode, _latest(episode), _older_than(Inspection, episode.labelled_at))

    def _write_action(self, conn: Connection, action: Action) -> None:
        row = {
            **self._scope.columns(),
            "action_id": action.action_id,
            "kind": action.kind,
            "actor": action.by,
            "at": action.at,
            "camera": action.camera,
            "detail": action.detail,
        }
        conn.execute(
            self._insert(ActionRecord.__table__)
            .values(row)
            .on_conflict_do_nothing(index_elements=["site", "line", "action_id"])
        )

    def _write_part(self, conn: Connection, part: PartResult) -> None:
        row = {
            **self._scope.columns(),
            "result_id": part.result_id,
            "station": part.station,
            "part_id": part.part_id,
            "verdict": part.verdict,
            "score": part.score,
            "reason": part.reason,
            "at": part.at,
            "model_version": part.model_version,
            "product": part.product,
            "inspections": list(part.inspections),
        }
        if conn.scalar(self._insert_part, row) is not None:  # new to the store: a replay is not counted again
            add_part(conn, row)

    def _write_label(self, conn: Connection, label: Label, counts: DbStats) -> None:
        conn.execute(
            self._insert(LabelRecord.__table__)
            .values(_label_row(label, self._scope))
            .on_conflict_do_nothing(index_elements=["site", "line", "label_id"])
        )
        latest = {
            "label": label.label.value,
            "label_source": label.source,
            "label_user": label.user,
            "labelled_at": label.labelled_at,
        }
        at, target_id = label.labelled_at, label.target_id
        mine = in_line(Inspection, self._scope)
        if label.target is LabelTarget.INSPECTION:
            changed = self._relabel(conn, [mine, Inspection.id == target_id, _not_newer(Inspection, at)], latest)
            found = (
                changed > 0 or conn.scalar(select(Inspection.id).where(mine, Inspection.id == target_id)) is not None
            )
        else:
            conn.execute(
                update(DefectEvent)
                .where(
                    in_line(DefectEvent, self._scope), DefectEvent.event_id == target_id, _not_newer(DefectEvent, at)
                )
                .values(latest)
            )
            episode = self._episode(conn, target_id)
            found = episode is not None
            if episode is not None:
                self._label_frames(conn, episode, latest, _not_newer(Inspection, at))
        counts.labels += 1
        if not found:
            counts.orphan_labels += 1
            log.warning(
                "label %s: %s %r is not in the store; kept in the labels history only",
                label.label_id,
                label.target.value,
                target_id,
            )

    def _episode(self, conn: Connection, event_id: str) -> Row[Any] | None:
        """The episode's span and its latest label; None when the store has no such episode."""
        names = ("camera", "started_at", "last_at", "ended_at", *_LATEST_LABEL)
        where = in_line(DefectEvent, self._scope), DefectEvent.event_id == event_id
        return conn.execute(select(*(getattr(DefectEvent, name) for name in names)).where(*where)).first()

    def _label_frames(
        self, conn: Connection, episode: Row[Any], latest: dict[str, Any], replaces: ColumnElement[bool]
    ) -> None:
        """Set ``latest`` on the episode's defect frames (its camera's defect inspections within its span) that
        ``replaces`` selects."""
        where = [
            in_line(Inspection, self._scope),
            Inspection.camera == episode.camera,
            Inspection.verdict == VerdictLabel.DEFECT.value,
            Inspection.frame_ts >= episode.started_at,
            Inspection.frame_ts <= (episode.ended_at or episode.last_at),
            replaces,
        ]
        self._relabel(conn, where, latest)

    def _relabel(self, conn: Connection, where: list[ColumnElement[bool]], latest: dict[str, Any]) -> int:
        """Set ``latest`` on the inspections ``where`` selects and move each between its minute's labelled
        counts; returns how many rows changed. The rows are read first, and locked on PostgreSQL (retention may
        be deleting them), since an UPDATE cannot return the values it replaced on both dialects."""
        rows = conn.execute(_minute_columns().where(*where).with_for_update()).all()
        for start in range(0, len(rows), _ID_CHUNK):
            chunk = rows[start : start + _ID_CHUNK]
            keys = (
                Inspection.id.in_([row.id for row in chunk]),
                Inspection.frame_ts.in_({row.frame_ts for row in chunk}),
            )
            conn.execute(update(Inspection).where(*where, *keys).values(latest))
        add_minutes(conn, label_moves((row, row.label, latest["label"]) for row in rows))
        return len(rows)


# Inspection columns a verdict record sets; the label columns and trained_into belong to later writers.
# (frame_ts is part of the key.)
_SCORER_FIELDS = frozenset(
    {"camera", "product", "seq", "score", "threshold", "verdict", "model_version", "part_id"}
    | {"snapshot", "heatmap", "journal_position"}
)
_EVENT_KEY = ["site", "line", "event_id"]
_ID_CHUNK = 500  # ids per UPDATE (bound-parameter limits)


def _minute_columns() -> Select[Any]:
    """What a relabelled inspection's minute needs: its key columns, score, threshold and current label."""
    names = ("id", "site", "line", "frame_ts", "camera", "product", "verdict", "model_version", "score", "threshold")
    return select(*(getattr(Inspection, name) for name in names), Inspection.label)


_LATEST_LABEL = ("label", "label_source", "label_user", "labelled_at")


def _latest(episode: Row[Any]) -> dict[str, Any]:
    return {name: getattr(episode, name) for name in _LATEST_LABEL}


def _not_newer(entity: type[LatestLabel], at: datetime) -> ColumnElement[bool]:
    """The row's latest label is not later than ``at`` (or there is none): replays never undo a newer label."""
    return or_(entity.labelled_at.is_(None), entity.labelled_at <= at)


def _older_than(entity: type[LatestLabel], at: datetime) -> ColumnElement[bool]:
    """The row has no label or one strictly older than ``at``."""
    return or_(entity.labelled_at.is_(None), entity.labelled_at < at)


_PARSERS: dict[str, Callable[[dict[str, Any]], Verdict | Event | Label | Action | PartResult]] = {
    "verdict": verdict_from_payload,
    "event": event_from_payload,
    "label": label_from_payload,
    "action": action_from_payload,
    "part": part_from_payload,
}


def _parse(
    records: Sequence[JournalRecord], counts: DbStats
) -> list[tuple[int, Verdict | Event | Label | Action | PartResult]]:
    """(position, typed value) per record, in journal order; malformed records are logged, counted and skipped
    so that one cannot wedge the forwarder."""
    parsed: list[tuple[int, Verdict | Event | Label | Action | PartResult]] = []
    for record in records:
        parse = _PARSERS.get(record.kind)
        try:
            if parse is None:
                raise JournalError(f"unknown record kind {record.kind!r}")
            parsed.append((record.position, parse(record.payload)))
        except JournalError as exc:
            counts.skipped += 1
            log.error("db: skipping malformed %s record #%d (%s): %s", record.kind, record.position, record.key, exc)
    return parsed


def _inspection_row(verdict: Verdict, position: int, scope: LineScope) -> dict[str, Any]:
    return {
        **scope.columns(),
        "id": verdict.inspection_id,
        "camera": verdict.camera,
        "product": verdict.product,
        "seq": verdict.seq,
        "frame_ts": verdict.frame_ts,
        "score": verdict.score,
        "threshold": verdict.threshold,
        "verdict": verdict.label.value,
        "model_version": verdict.model_version,
        "part_id": verdict.part_id,
        "snapshot": verdict.snapshot,
        "heatmap": verdict.heatmap,
        "journal_position": position,
    }


def _event_row(event: Event, scope: LineScope) -> dict[str, Any]:
    """The episode row as this message alone describes it; _write_event folds it into the stored one."""
    return {
        **scope.columns(),
        "event_id": event.event_id,
        "camera": event.camera,
        "product": event.product,
        "started_at": event.frame_ts,
        "last_at": event.frame_ts,
        "ended_at": event.frame_ts if event.type is EventType.END else None,
        "end_reason": None if event.end_reason is None else event.end_reason.value,
        "last_type": event.type.value,
        "last_seq": event.seq,
        "peak_score": event.score,
        "threshold": event.threshold,
        "model_version": event.model_version,
        "first_inspection_id": event.inspection_id,
        "last_inspection_id": event.inspection_id,
        "snapshot": event.snapshot,
        "heatmap": event.heatmap,
    }


def _label_row(label: Label, scope: LineScope) -> dict[str, Any]:
    return {
        **scope.columns(),
        "label_id": label.label_id,
        "target": label.target.value,
        "target_id": label.target_id,
        "camera": label.camera,
        "label": label.label.value,
        "source": label.source,
        "username": label.user,
        "labelled_at": label.labelled_at,
    }

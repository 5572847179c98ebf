"""The per-minute and per-hour counts of ``inspection_minutes`` and ``inspection_hours``: how a set of
inspection rows adds to them, as upserts.

The DB forwarder adds the rows it inserts (:func:`minute_counts`, :func:`add_minutes`) and moves frames
between ``labelled_*`` when labels change (:func:`label_moves`); retention adds the rows it deletes to the
minutes' ``deleted`` (hours do not track it). All of them add to what a minute or hour already holds, so
writers never read-modify-write one and any order of them gives the same counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Insert, Table, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from linewatch.sinks.db_schema import InspectionHour, InspectionMinute

MINUTE_KEY = ("site", "line", "minute", "camera", "product", "verdict", "model_version")
_COUNTS = ("frames", "score_sum", "labelled_normal", "labelled_defect")
_ROWS_PER_STATEMENT = 500  # 14 parameters a row: well inside SQLite's 32766 and PostgreSQL's 65535
_LABELLED = {"normal": "labelled_normal", "defect": "labelled_defect"}


def minute_of(frame_ts: datetime) -> datetime:
    return frame_ts.replace(second=0, microsecond=0)


def _empty(key: tuple[Any, ...], score: float, threshold: float) -> dict[str, Any]:
    row = dict(zip(MINUTE_KEY, key, strict=True))
    row.update(frames=0, score_sum=0.0, score_max=score, threshold=threshold, labelled_normal=0)
    row.update(labelled_defect=0, deleted=0)
    return row


def minute_counts(rows: Iterable[Mapping[str, Any]], deleted: bool = False) -> list[dict[str, Any]]:
    """Inspection rows (site, line, frame_ts, camera, product, verdict, model_version, score, threshold and,
    unless ``deleted``, label) as ``inspection_minutes`` additions, one per key, in key order. ``deleted``:
    rows retention deleted, so only ``deleted`` grows (they were counted when they arrived)."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (row["site"], row["line"], minute_of(row["frame_ts"]), row["camera"], row["product"])
        key += (row["verdict"], row["model_version"])
        score, threshold = row["score"], row["threshold"]
        group = groups.get(key)
        if group is None:
            group = groups[key] = _empty(key, score, threshold)
        if deleted:
            group["deleted"] += 1
            continue
        group["frames"] += 1
        group["score_sum"] += score
        group["score_max"] = max(group["score_max"], score)
        group["threshold"] = max(group["threshold"], threshold)  # one value per version and product
        label = row.get("label")  # a new row carries none
        if label in _LABELLED:
            group[_LABELLED[label]] += 1
    return [groups[key] for key in sorted(groups)]


def label_moves(changes: Iterable[tuple[Any, str | None, str]]) -> list[dict[str, Any]]:
    """(row, old label, new label) per relabelled inspection as additions that move each frame from its old
    ``labelled_*`` count (if any) to its new one; rows with the same label before and after add nothing."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row, old, new in changes:
        if old == new:
            continue
        key = (row.site, row.line, minute_of(row.frame_ts), row.camera, row.product, row.verdict, row.model_version)
        group = groups.get(key)
        if group is None:
            group = groups[key] = _empty(key, row.score, row.threshold)
        if old in _LABELLED:
            group[_LABELLED[old]] -= 1
        group[_LABELLED[new]] += 1
    return [groups[key] for key in sorted(groups)]


def add_minutes(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Add ``rows`` (from :func:`minute_counts` or :func:`label_moves`) to the stored minutes, and what they
    add to frames and labels to the stored hours, in upserts of at most :data:`_ROWS_PER_STATEMENT` rows
    (bound-parameter limits), inside the caller's transaction."""
    hours = _hours(rows)
    for table, additions in ((InspectionMinute.__table__, rows), (InspectionHour.__table__, hours)):
        for start in range(0, len(additions), _ROWS_PER_STATEMENT):
            conn.execute(_adding(conn.dialect.name, table, additions[start : start + _ROWS_PER_STATEMENT]))


def _hours(minutes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Minute additions summed per hour; those that only count deletions add nothing to an hour."""
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for minute in minutes:
        if not any(minute[name] for name in _COUNTS):
            continue
        hour = minute["minute"].replace(minute=0)
        key = (minute["site"], minute["line"], hour, *(minute[name] for name in MINUTE_KEY[3:]))
        group = groups.get(key)
        if group is None:
            group = groups[key] = {name: minute[name] for name in MINUTE_KEY if name != "minute"}
            group.update(hour=hour, score_max=minute["score_max"], threshold=minute["threshold"])
            group.update(dict.fromkeys(_COUNTS, 0))
        for name in _COUNTS:
            group[name] += minute[name]
        group["score_max"] = max(group["score_max"], minute["score_max"])
        group["threshold"] = max(group["threshold"], minute["threshold"])
    return [groups[key] for key in sorted(groups)]


def _adding(dialect: str, table: Table, rows: list[dict[str, Any]]) -> Insert:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    greatest = func.greatest if dialect == "postgresql" else func.max  # SQLite's two-argument max() is scalar
    statement = insert(table).values(rows)
    added = statement.excluded
    changes: dict[str, Any] = {name: table.c[name] + added[name] for name in _COUNTS}
    if "deleted" in table.c:
        changes["deleted"] = table.c.deleted + added.deleted
    changes["score_max"] = greatest(table.c.score_max, added.score_max)
    changes["threshold"] = greatest(table.c.threshold, added.threshold)
    key = [column.name for column in table.primary_key.columns]
    return statement.on_conflict_do_update(index_elements=key, set_=changes)

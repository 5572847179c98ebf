"""The per-minute and per-hour counts of ``inspection_minutes`` and ``inspection_hours``, and the parts per
hour of ``part_hours``: how a set of rows adds to them, as upserts.

The DB forwarder adds the rows it inserts (:func:`minute_counts`, :func:`add_minutes`), moves frames between
``labelled_*`` when labels change (:func:`label_moves`) and counts each new part verdict (:func:`add_part`);
retention adds the rows it deletes to the minutes' ``deleted`` (hours do not track it). All of them add to
what a minute or hour already holds, so writers never read-modify-write one and any order of them gives the
same counts.

Each table's upsert is one statement, built once (:func:`_adding`) and run with the rows as parameter sets:
psycopg pipelines them in one round trip, SQLite steps one prepared statement. A statement carrying the rows
as literal VALUES is compiled anew for every chunk, and that was most of the forwarder's CPU (a 4-verdict
chunk took 7.6 ms of CPU before, 1.9 ms after, with the forwarder's INSERT ... RETURNING).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Insert, Table, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from linewatch.sinks.db_schema import InspectionHour, InspectionMinute, PartHour

MINUTE_KEY = ("site", "line", "minute", "camera", "product", "verdict", "model_version")
_COUNTS = ("frames", "score_sum", "labelled_normal", "labelled_defect")
_SUMMED = (*_COUNTS, "deleted", "parts")  # an upsert adds these to the stored row's ...
_HIGHEST = ("score_max", "threshold")  # ... and keeps the greater of these
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
    add to frames and labels to the stored hours, inside the caller's transaction."""
    for table, additions in ((InspectionMinute.__table__, rows), (InspectionHour.__table__, _hours(rows))):
        if additions:
            conn.execute(_adding(conn.dialect.name, table), additions)


def add_part(conn: Connection, part: Mapping[str, Any]) -> None:
    """Count one part verdict new to the store (a ``parts`` row: site, line, at, station, verdict) into its
    hour, inside the caller's transaction."""
    row = {name: part[name] for name in ("site", "line", "station", "verdict")}
    row.update(hour=part["at"].astimezone(UTC).replace(minute=0, second=0, microsecond=0), parts=1)
    conn.execute(_adding(conn.dialect.name, PartHour.__table__), row)


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


@cache
def _adding(dialect: str, table: Table) -> Insert:
    """The upsert that adds a parameter set's counts to the stored row of its key, or inserts it."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    greatest = func.greatest if dialect == "postgresql" else func.max  # SQLite's two-argument max() is scalar
    statement = insert(table)
    added = statement.excluded
    changes: dict[str, Any] = {name: table.c[name] + added[name] for name in _SUMMED if name in table.c}
    changes.update({name: greatest(table.c[name], added[name]) for name in _HIGHEST if name in table.c})
    key = [column.name for column in table.primary_key.columns]
    return statement.on_conflict_do_update(index_elements=key, set_=changes)

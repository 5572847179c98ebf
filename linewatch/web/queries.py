"""The operator page's read-only queries on the main store: the review queue, one item, the history table
(keyset pages), the score plot, a target's label history and the latest actions (who did what).

Decisions:

- Every query reads only the rows of the engine's own line (:func:`linewatch.sinks.db.scope_of`,
  :func:`~linewatch.sinks.db.in_line`): one store may serve many lines, two of them may both have a ``cam1``,
  and ids are unique only within a line, so a lookup by id names the line too. The ``site = ? AND line = ?``
  terms are equalities on the leading columns of the indexes these queries walk, so each plan below still
  seeks into and walks the same index it did before the store was shared.
- Every function raises :class:`DatabaseError` (URL password masked) when the database fails, and
  ``ValueError`` for arguments refused before touching it (naive datetime, unknown target or filter value,
  negative band, limit below 1), so the page can tell "the store is down" from a bad request.
- The review queue is two queries, each ordered and limited on its own, merged here: episodes (a small
  table) and close calls (the big one). Each keeps a plan that is easy to check on both dialects.
- Defect frames inside an episode of their camera are not close calls: labelling the episode labels them
  (see :class:`linewatch.sinks.db_forwarder.DbForwarder`), so showing them too would ask the operator the
  same question twice. Normal-verdict frames near the threshold stay, even inside an episode: the episode's
  label does not cover them.
- Newest first is ``(time desc, id desc)`` everywhere: frames of several cameras share timestamps, and a
  page boundary must split them the same way every time. History pages are keyset pages on that order
  (``frame_ts <= t AND (frame_ts < t OR id < i)``: the ``frame_ts`` bound alone is what an index on
  ``(site, line, frame_ts)`` can seek to on both dialects; a row-value comparison needs one on both columns).
- The history's "unlabelled" filter writes ``label IS NULL`` so SQLite cannot use ``ix_inspections_label``
  for it: without ANALYZE statistics SQLite takes any equality on an indexed column for a selective one and
  would read every unlabelled row (nearly the whole table) through that index and sort them, instead of
  walking the time index and stopping after ``limit`` rows (benchmarks/web_queries.py: 0.9 s against 1 ms
  for the unlabelled history page on 1M rows). PostgreSQL, which has statistics, walks the time index
  either way.
- Close calls are walked newest first down the partial index ``ix_inspections_site_frame_ts_unlabelled_snapshot``
  (unlabelled rows with a snapshot, :data:`linewatch.sinks.db_schema.REVIEWABLE`) and stopped at ``limit`` rows or at
  the window's start. Close calls are rare, so the walk usually reaches the window's start: down
  ``ix_inspections_site_frame_ts`` it read every frame of the window, down the partial index only the ~1% with
  evidence (benchmarks/web_queries.py, 24 h of a 4-camera line, 333k rows: the queue took 100 ms -> 6 ms on SQLite,
  150 ms -> 5 ms on PostgreSQL). The index also holds the id and every column the close-call test reads, so on
  PostgreSQL the walk fetches no row (an index-only scan, on pages autovacuum marked visible): the count reads the
  index alone, and a page's keys are picked the same way before its rows, ``limit`` at most, are fetched by key. A day
  of a busy line, 100,000 evidence frames whose rows are not all cached: page and count took 160 ms fetching each
  walked row, 28 ms from the index alone (benchmarks/review_queue_day.py). SQLite still reads each walked row (it
  checks the index's own terms on it), quick from its page cache on a one-line file. A planner uses a partial index
  only when the query's WHERE holds the index's terms, so the query says ``label IS NULL`` and ``snapshot IS NOT
  NULL`` literally. On SQLite the plain ``label IS NULL`` would fall into that same trap (it picks
  ``ix_inspections_label`` and reads nearly the whole table), and the ``coalesce`` disguise would hide the term from
  the partial index too; so there it is ``likely(label IS NULL)``: SQLite's documented hint that a term is usually
  true, which it is (nearly every row is unlabelled). The planner then judges ``ix_inspections_label`` useless for it,
  while the partial-index match still sees the bare term (SQLite strips ``likely()`` off WHERE terms). PostgreSQL,
  which has no ``likely()`` and does not need it, gets the bare term (the ``coalesce`` form cost it too: estimating 6
  matching rows, it priced the limited walk like a full one, over ``jit_above_cost``, and spent ~100 ms of each call
  compiling it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, Select, and_, exists, func, or_, select, text

from linewatch.sinks.db import LineScope, in_line, masked, require_aware, require_one_of, scope_of, translated
from linewatch.sinks.db_schema import (
    LABEL_TARGETS,
    ROLLED,
    VERDICTS,
    ActionRecord,
    DefectEvent,
    Inspection,
    InspectionMinute,
    LabelRecord,
)
from linewatch.web.rows import HistoryFilter, InspectionRow, ReviewItem, ScorePoint

LABEL_FILTERS = ("normal", "defect", "unlabelled")

_HALF_MINUTE = timedelta(seconds=30)  # a rolled-up minute is drawn at its middle
_EVENT_COLUMNS = (
    DefectEvent.event_id,
    DefectEvent.camera,
    DefectEvent.product,
    DefectEvent.started_at,
    DefectEvent.last_at,
    DefectEvent.peak_score,
    DefectEvent.threshold,
    DefectEvent.model_version,
    DefectEvent.snapshot,
    DefectEvent.heatmap,
    DefectEvent.label,
    DefectEvent.label_user,
    DefectEvent.labelled_at,
    DefectEvent.ended_at,
)
_INSPECTION_COLUMNS = (
    Inspection.id,
    Inspection.camera,
    Inspection.product,
    Inspection.frame_ts,
    Inspection.score,
    Inspection.threshold,
    Inspection.verdict,
    Inspection.model_version,
    Inspection.part_id,
    Inspection.snapshot,
    Inspection.heatmap,
    Inspection.label,
    Inspection.label_user,
    Inspection.labelled_at,
)


ReviewCursor = tuple[datetime, str]  # (ts, target_id) of the last item shown: the next page starts after it


def review_queue(
    engine: Engine,
    now: datetime,
    window: timedelta,
    band: float,
    limit: int = 50,
    after: ReviewCursor | None = None,
) -> list[ReviewItem]:
    """What an operator should judge, newest first (``ts`` desc, then id desc), at most ``limit`` items,
    after the item ``after`` names when given (keyset pages, like the history's).

    - unlabelled defect episodes whose latest frame is at or after ``now - window``;
    - unlabelled "close calls" since ``now - window``: inspections with a snapshot (without an image there is
      nothing to judge) scored within ``band * |threshold|`` of their threshold, except defect frames inside
      an episode of their camera (the episode's label covers them).
    """
    with translated(masked(engine.url), "reading the review queue"), engine.connect() as conn:
        return _read_queue(conn, engine, now, window, band, limit, after)


def review_page(
    engine: Engine,
    now: datetime,
    window: timedelta,
    band: float,
    limit: int = 50,
    after: ReviewCursor | None = None,
) -> tuple[list[ReviewItem], int]:
    """A page of :func:`review_queue` and the whole queue's size, read from one snapshot. Read one after the
    other, the count could miss items the page showed: the newest defect frame of an open episode is a close
    call until the episode's next update covers it, and the page said "17 waiting; showing 1-20"."""
    with translated(masked(engine.url), "reading the review queue"), engine.connect() as conn:
        if engine.dialect.name == "postgresql":  # SQLite: one transaction is one snapshot already (WAL)
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            items = _read_queue(conn, engine, now, window, band, limit, after)
            return items, _count_queue(conn, engine, now, window, band)


def _read_queue(
    conn: Connection,
    engine: Engine,
    now: datetime,
    window: timedelta,
    band: float,
    limit: int,
    after: ReviewCursor | None,
) -> list[ReviewItem]:
    _check_limit(limit)
    events, close_call_keys = _review_queries(engine, now, window, band)
    if after is not None:
        ts, target_id = require_aware("after", after[0]), after[1]
        events = events.where(
            DefectEvent.started_at <= ts, or_(DefectEvent.started_at < ts, DefectEvent.event_id < target_id)
        )
        close_call_keys = close_call_keys.where(
            Inspection.frame_ts <= ts, or_(Inspection.frame_ts < ts, Inspection.id < target_id)
        )
    events = events.order_by(DefectEvent.started_at.desc(), DefectEvent.event_id.desc()).limit(limit)
    keys = close_call_keys.order_by(Inspection.frame_ts.desc(), Inspection.id.desc()).limit(limit).subquery()
    close_calls = (
        select(*_INSPECTION_COLUMNS)
        .join(keys, and_(Inspection.id == keys.c.id, Inspection.frame_ts == keys.c.frame_ts))
        .where(in_line(Inspection, scope_of(engine)))
    )
    items = [_event_item(row) for row in conn.execute(events)]
    items += [_inspection_item(row) for row in conn.execute(close_calls)]
    items.sort(key=lambda item: (item.ts, item.target_id, item.target), reverse=True)
    return items[:limit]


def review_count(engine: Engine, now: datetime, window: timedelta, band: float) -> int:
    """How many items the whole review queue holds (all pages)."""
    with translated(masked(engine.url), "counting the review queue"), engine.connect() as conn:
        return _count_queue(conn, engine, now, window, band)


def _count_queue(conn: Connection, engine: Engine, now: datetime, window: timedelta, band: float) -> int:
    events, close_call_keys = _review_queries(engine, now, window, band)
    counts = [select(func.count()).select_from(query.subquery()) for query in (events, close_call_keys)]
    return sum(int(conn.scalar(query) or 0) for query in counts)


def _review_queries(engine: Engine, now: datetime, window: timedelta, band: float) -> tuple[Select[Any], Select[Any]]:
    """The episodes of the queue, and the keys (id, frame_ts) of its close calls, unordered and unlimited. The
    close calls' test reads only columns the partial index holds, so on PostgreSQL counting them or picking a
    page of them is an index-only scan (SQLite still reads each walked row; see the module docstring)."""
    since = require_aware("now", now) - window
    if band < 0:
        raise ValueError(f"band must be at least 0, got {band}")
    scope = scope_of(engine)
    events = select(*_EVENT_COLUMNS).where(
        in_line(DefectEvent, scope), DefectEvent.label.is_(None), DefectEvent.last_at >= since
    )
    covered = exists().where(  # down ix_events_site_camera_started_at: the frame's own line and camera
        in_line(DefectEvent, scope),
        DefectEvent.camera == Inspection.camera,
        DefectEvent.started_at <= Inspection.frame_ts,
        func.coalesce(DefectEvent.ended_at, DefectEvent.last_at) >= Inspection.frame_ts,
    )
    close_call_keys = select(Inspection.id, Inspection.frame_ts).where(
        in_line(Inspection, scope),
        _reviewable(engine),
        Inspection.frame_ts >= since,
        func.abs(Inspection.score - Inspection.threshold) <= band * func.abs(Inspection.threshold),
        or_(Inspection.verdict != "defect", ~covered),
    )
    return events, close_call_keys


def review_item(engine: Engine, target: str, target_id: str) -> ReviewItem | None:
    """One episode or inspection as a review item, labelled or not (the page re-renders it after a label);
    None when there is no such row."""
    require_one_of("target", target, LABEL_TARGETS)
    scope = scope_of(engine)
    if target == "event":
        query = select(*_EVENT_COLUMNS).where(in_line(DefectEvent, scope), DefectEvent.event_id == target_id)
    else:
        query = select(*_INSPECTION_COLUMNS).where(in_line(Inspection, scope), Inspection.id == target_id)
    with translated(masked(engine.url), f"reading {target} {target_id!r}"), engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    return _event_item(row) if target == "event" else _inspection_item(row)


def history_page(
    engine: Engine, filter: HistoryFilter, limit: int = 100, before: tuple[datetime, str] | None = None
) -> tuple[list[InspectionRow], tuple[datetime, str] | None]:
    """One page of inspections matching ``filter``, newest first (``frame_ts`` desc, id desc), and the cursor
    of the next page: the (frame_ts, id) of this page's last row, None when no older row matches. ``before``
    is the cursor a previous call returned; the page holds only rows strictly after it in that order."""
    _check_limit(limit)
    query = _matching(scope_of(engine), filter)
    if before is not None:
        ts, inspection_id = require_aware("before", before[0]), before[1]
        query = query.where(Inspection.frame_ts <= ts, or_(Inspection.frame_ts < ts, Inspection.id < inspection_id))
    query = query.order_by(Inspection.frame_ts.desc(), Inspection.id.desc()).limit(limit + 1)
    with translated(masked(engine.url), "reading a history page"), engine.connect() as conn:
        rows = [InspectionRow(*row) for row in conn.execute(query)]
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, (rows[-1].frame_ts, rows[-1].inspection_id)


def score_series(engine: Engine, filter: HistoryFilter, limit: int = 2000) -> list[ScorePoint]:
    """The newest ``limit`` points matching ``filter``, oldest first: inspections, and the minutes some of whose
    rows retention deleted (their highest score, ``rolled``), so a long window still shows its old days. Roll-ups
    have no labels or parts: a filter on those shows inspections only."""
    _check_limit(limit)
    scope = scope_of(engine)
    query = (
        _matching(
            scope,
            filter,
            Inspection.frame_ts,
            Inspection.score,
            Inspection.threshold,
            Inspection.product,
            Inspection.verdict,
            Inspection.label,
        )
        .order_by(Inspection.frame_ts.desc(), Inspection.id.desc())
        .limit(limit)
    )
    with translated(masked(engine.url), "reading the score series"), engine.connect() as conn:
        points = [ScorePoint(*row) for row in conn.execute(query)]
        if filter.label is None and filter.part_id is None:
            minutes = _rolled_minutes(scope, filter).order_by(InspectionMinute.minute.desc()).limit(limit)
            points += [
                ScorePoint(
                    row.minute + _HALF_MINUTE, row.score_max, row.threshold, row.product, row.verdict, None, rolled=True
                )
                for row in conn.execute(minutes)
            ]
    points.sort(key=lambda point: point.ts, reverse=True)
    del points[limit:]
    points.reverse()
    return points


def _rolled_minutes(scope: LineScope, filter: HistoryFilter) -> Select[Any]:
    """The line's roll-up rows matching the filter's camera, product, verdict and time. Only minutes some of whose
    rows retention deleted: the forwarder counts every frame into its minute as it arrives, so any other minute's
    rows are all still there, drawn as themselves. Newest first down a partial index of just those minutes
    (``ix_inspection_minutes_site_camera_minute_deleted``, or ``..._site_minute_deleted`` for every camera): a
    year of a line's minutes is millions of rows. The term is :data:`ROLLED`'s literal text, as for the review
    queue's index, since SQLite uses a partial index only for a WHERE that holds its very terms."""
    table = InspectionMinute
    conditions: list[ColumnElement[bool]] = [in_line(table, scope), text(ROLLED)]
    if filter.camera is not None:
        conditions.append(table.camera == filter.camera)
    if filter.product is not None:
        conditions.append(table.product == filter.product)
    if filter.verdict is not None:
        conditions.append(table.verdict == filter.verdict)
    if filter.since is not None:
        conditions.append(table.minute >= require_aware("since", filter.since))
    if filter.until is not None:
        conditions.append(table.minute < require_aware("until", filter.until))
    columns = table.minute, table.score_max, table.threshold, table.product, table.verdict
    return select(*columns).where(and_(*conditions))


def label_history(engine: Engine, target: str, target_id: str, limit: int = 20) -> list[dict[str, Any]]:
    """Every label submitted for one episode or inspection, newest first (label id breaks ties), as dicts of
    label, source, username and labelled_at: the page shows who judged it and who changed their mind."""
    require_one_of("target", target, LABEL_TARGETS)
    _check_limit(limit)
    query = (
        select(LabelRecord.label, LabelRecord.source, LabelRecord.username, LabelRecord.labelled_at)
        .where(in_line(LabelRecord, scope_of(engine)), LabelRecord.target == target, LabelRecord.target_id == target_id)
        .order_by(LabelRecord.labelled_at.desc(), LabelRecord.label_id.desc())
        .limit(limit)
    )
    with translated(masked(engine.url), f"reading the labels of {target} {target_id!r}"), engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def recent_actions(engine: Engine, kinds: tuple[str, ...], limit: int = 30) -> list[dict[str, Any]]:
    """The line's latest actions of ``kinds``, newest first, as dicts of kind, actor, at, camera and detail (down
    ``ix_actions_site_at``: a few rows however long the history)."""
    _check_limit(limit)
    columns = ActionRecord.kind, ActionRecord.actor, ActionRecord.at, ActionRecord.camera, ActionRecord.detail
    query = (
        select(*columns)
        .where(in_line(ActionRecord, scope_of(engine)), ActionRecord.kind.in_(kinds))
        .order_by(ActionRecord.at.desc(), ActionRecord.action_id.desc())
        .limit(limit)
    )
    with translated(masked(engine.url), "reading the actions"), engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def _matching(scope: LineScope, filter: HistoryFilter, *columns: Any) -> Select[Any]:
    """The line's inspections matching the filter; the InspectionRow columns unless others are given."""
    conditions: list[ColumnElement[bool]] = [in_line(Inspection, scope)]
    if filter.camera is not None:
        conditions.append(Inspection.camera == filter.camera)
    if filter.product is not None:
        conditions.append(Inspection.product == filter.product)
    if filter.verdict is not None:
        require_one_of("verdict", filter.verdict, VERDICTS)
        conditions.append(Inspection.verdict == filter.verdict)
    if filter.label is not None:
        require_one_of("label", filter.label, LABEL_FILTERS)
        conditions.append(_unlabelled() if filter.label == "unlabelled" else Inspection.label == filter.label)
    if filter.part_id is not None:  # ix_inspections_site_part_id
        conditions.append(Inspection.part_id == filter.part_id)
    if filter.since is not None:
        conditions.append(Inspection.frame_ts >= require_aware("since", filter.since))
    if filter.until is not None:
        conditions.append(Inspection.frame_ts < require_aware("until", filter.until))
    return select(*(columns or _INSPECTION_COLUMNS)).where(and_(*conditions))


def _reviewable(engine: Engine) -> ColumnElement[bool]:
    """The partial index's terms, written so that each dialect's planner walks it; see the module docstring."""
    unlabelled = Inspection.label.is_(None)
    usually = func.likely(unlabelled) if engine.dialect.name == "sqlite" else unlabelled
    return and_(usually, Inspection.snapshot.is_not(None))


def _unlabelled() -> ColumnElement[bool]:
    # coalesce hides the column from SQLite's index chooser; see the module docstring.
    return func.coalesce(Inspection.label, "") == ""


def _event_item(row: Any) -> ReviewItem:
    return ReviewItem(
        target="event",
        target_id=row.event_id,
        camera=row.camera,
        product=row.product,
        ts=row.started_at,
        last_ts=row.last_at,
        score=row.peak_score,
        threshold=row.threshold,
        verdict="defect",
        model_version=row.model_version,
        snapshot=row.snapshot,
        heatmap=row.heatmap,
        label=row.label,
        label_user=row.label_user,
        labelled_at=row.labelled_at,
        open=row.ended_at is None,
    )


def _inspection_item(row: Any) -> ReviewItem:
    return ReviewItem(
        target="inspection",
        target_id=row.id,
        camera=row.camera,
        product=row.product,
        ts=row.frame_ts,
        last_ts=row.frame_ts,
        score=row.score,
        threshold=row.threshold,
        verdict=row.verdict,
        model_version=row.model_version,
        snapshot=row.snapshot,
        heatmap=row.heatmap,
        label=row.label,
        label_user=row.label_user,
        labelled_at=row.labelled_at,
        open=False,
    )


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")

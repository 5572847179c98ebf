"""The operator page's queries (linewatch.web.queries) on a real SQLite file and a real PostgreSQL (``store_url``)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, MetaData, event, insert, inspect, update

from linewatch.cli.main import main
from linewatch.clock import FakeClock
from linewatch.sinks import rollups
from linewatch.sinks.db import DatabaseError, LineScope, make_engine, scope_of, write_transaction
from linewatch.sinks.db_migrate import alembic_config, database_revision, upgrade_database
from linewatch.sinks.db_schema import (
    REVIEW_INDEX_COLUMNS,
    REVIEWABLE,
    ActionRecord,
    DefectEvent,
    InspectionMinute,
    LabelRecord,
)
from linewatch.sinks.store_retention import StoreRetention, StoreRetentionPolicy
from linewatch.sinks.users import add_user, authenticate
from linewatch.web.queries import (
    history_page,
    label_history,
    recent_actions,
    review_count,
    review_item,
    review_page,
    review_queue,
    score_series,
)
from linewatch.web.rows import HistoryFilter, InspectionRow, ReviewItem, ScorePoint
from tests.services.ports import free_port
from tests.services.postgres import PASSWORD
from tests.store_rows import insert_inspections, inspection_row

T0 = datetime(2026, 3, 2, 8, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
REVIEW_INDEX = "ix_inspections_site_frame_ts_unlabelled_snapshot"


@pytest.fixture
def engine(store_url: str, tmp_path: Path) -> Iterator[Engine]:
    upgrade_database(store_url, tmp_path / "backups")
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def line2(engine: Engine, store_url: str) -> Iterator[Engine]:
    """A second line of the same store (``engine`` migrated it): same site, line "line2"."""
    other = make_engine(store_url, LineScope("site", "line2"))
    yield other
    other.dispose()


@pytest.fixture
def unmigrated(tmp_path: Path) -> Iterator[Engine]:
    """A store without the schema: arguments refused before any query never find out."""
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    yield engine
    engine.dispose()


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def inspection_rows(engine: Engine, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Inspection rows of the engine's line (tests/store_rows.py defaults); each row sets at least id and
    frame_ts and may override any column. A label brings its user and time with it."""
    full = []
    for position, row in enumerate(rows):
        labelled = {"label_source": "web", "label_user": "ana", "labelled_at": row["frame_ts"] + HOUR}
        fields = {**scope_of(engine).columns(), **(labelled if row.get("label") is not None else {}), **row}
        full.append(inspection_row(fields.pop("id"), fields.pop("frame_ts"), position, **fields))
    return full


def add_inspections(engine: Engine, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Inserts :func:`inspection_rows`; returns them."""
    full = inspection_rows(engine, rows)
    insert_inspections(engine, full)
    return full


def event_rows(engine: Engine, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Episode rows of the engine's line on cam1, unlabelled; each sets event_id, started_at and last_at (ended_at
    None: open)."""
    full = []
    for row in rows:
        label = row.get("label")
        full.append(
            {
                **scope_of(engine).columns(),
                "camera": "cam1",
                "product": "metal plate",
                "ended_at": None,
                "last_type": "update" if row.get("ended_at") is None else "end",
                "last_seq": 3,
                "peak_score": 0.9,
                "threshold": 0.5,
                "model_version": "v1",
                "first_inspection_id": f"{row['event_id']}-first",
                "last_inspection_id": f"{row['event_id']}-last",
                "snapshot": f"cam1/{row['event_id']}.jpg",
                "heatmap": f"cam1/{row['event_id']}-heatmap.jpg",
                "label": None,
                "label_source": None if label is None else "web",
                "label_user": None if label is None else "bo",
                "labelled_at": None if label is None else row["last_at"] + HOUR,
                **row,
            }
        )
    return full


def add_events(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(DefectEvent), event_rows(engine, rows))


def ids(items: list[ReviewItem]) -> list[str]:
    return [item.target_id for item in items]


def walk(engine: Engine, filter: HistoryFilter, limit: int) -> list[list[InspectionRow]]:
    """Every page of the history, following the cursors to the end."""
    pages = []
    rows, cursor = history_page(engine, filter, limit)
    pages.append(rows)
    while cursor is not None:
        rows, cursor = history_page(engine, filter, limit, before=cursor)
        pages.append(rows)
    return pages


# --- review queue --------------------------------------------------------------------------------------------


def test_the_queue_holds_unlabelled_episodes_and_close_calls_of_the_window_and_nothing_else(engine: Engine) -> None:
    """now = at(0), window 1 h, band 0.1 against threshold 0.5: close means a score within 0.05 of 0.5."""
    add_events(
        engine,
        [
            {"event_id": "ev-open", "started_at": at(-20), "last_at": at(-15)},
            {"event_id": "ev-ended", "started_at": at(-40), "last_at": at(-38), "ended_at": at(-37)},
            {"event_id": "ev-long", "started_at": at(-90), "last_at": at(-59)},  # began before the window
            {"event_id": "ev-labelled", "started_at": at(-10), "last_at": at(-9), "label": "defect"},
            {"event_id": "ev-old", "started_at": at(-80), "last_at": at(-61), "ended_at": at(-61)},
            {"event_id": "ev-cam2", "camera": "cam2", "started_at": at(-50), "last_at": at(-45), "ended_at": at(-44)},
        ],
    )
    defect = {"verdict": "defect", "score": 0.52}
    add_inspections(
        engine,
        [
            {"id": "close-low", "frame_ts": at(-5), "score": 0.46},
            {"id": "close-high", "frame_ts": at(-6), "score": 0.54, "verdict": "defect"},  # outside any episode
            {"id": "far", "frame_ts": at(-7), "score": 0.3},
            {"id": "labelled", "frame_ts": at(-8), "score": 0.49, "label": "normal"},
            {"id": "old", "frame_ts": at(-61), "score": 0.49},
            {"id": "no-snapshot", "frame_ts": at(-9), "score": 0.49, "snapshot": None},
            {"id": "in-open-episode", "frame_ts": at(-17), **defect},  # between started_at and last_at
            {"id": "after-open-episode", "frame_ts": at(-14), **defect},  # after its latest frame: not covered
            {"id": "in-ended-episode", "frame_ts": at(-37), **defect},  # its end is inclusive
            {"id": "in-ended-start", "frame_ts": at(-40), **defect},  # its start too
            {"id": "normal-in-episode", "frame_ts": at(-39), "score": 0.47},  # the episode's label won't cover it
            {"id": "other-camera", "frame_ts": at(-39), "camera": "cam3", **defect},
            {"id": "cam2-in-episode", "frame_ts": at(-46), "camera": "cam2", **defect},
        ],
    )

    queue = review_queue(engine, at(0), HOUR, 0.1)

    assert ids(queue) == [
        "close-low",
        "close-high",
        "after-open-episode",
        "ev-open",
        "other-camera",
        "normal-in-episode",
        "ev-ended",
        "ev-cam2",
        "ev-long",
    ]
    items = {item.target_id: item for item in queue}
    assert items["ev-open"] == ReviewItem(
        target="event",
        target_id="ev-open",
        camera="cam1",
        product="metal plate",
        ts=at(-20),
        last_ts=at(-15),
        score=0.9,
        threshold=0.5,
        verdict="defect",
        model_version="v1",
        snapshot="cam1/ev-open.jpg",
        heatmap="cam1/ev-open-heatmap.jpg",
        label=None,
        label_user=None,
        labelled_at=None,
        open=True,
    )
    assert not items["ev-ended"].open
    assert items["close-low"] == ReviewItem(
        target="inspection",
        target_id="close-low",
        camera="cam1",
        product="metal plate",
        ts=at(-5),
        last_ts=at(-5),
        score=0.46,
        threshold=0.5,
        verdict="normal",
        model_version="v1",
        snapshot="cam1/close-low.jpg",
        heatmap=None,
        label=None,
        label_user=None,
        labelled_at=None,
        open=False,
    )
    assert all(item.ts.utcoffset() == timedelta(0) for item in queue)


def test_the_band_and_the_window_include_their_edges(engine: Engine) -> None:
    """band 0.25 of |threshold| 2.0 (negative: the band is measured on its size) is 0.5: all exact in binary."""
    add_inspections(
        engine,
        [
            {"id": "at-upper-edge", "frame_ts": at(-1), "score": -1.5, "threshold": -2.0},
            {"id": "at-lower-edge", "frame_ts": at(-2), "score": -2.5, "threshold": -2.0},
            {"id": "above-upper", "frame_ts": at(-3), "score": -1.4999, "threshold": -2.0},
            {"id": "below-lower", "frame_ts": at(-4), "score": -2.5001, "threshold": -2.0},
            {"id": "at-window-start", "frame_ts": at(-60), "score": -2.0, "threshold": -2.0},
            {"id": "before-window", "frame_ts": at(-60.001), "score": -2.0, "threshold": -2.0},
        ],
    )
    add_events(engine, [{"event_id": "ev-edge", "started_at": at(-70), "last_at": at(-60), "ended_at": at(-60)}])

    assert ids(review_queue(engine, at(0), HOUR, 0.25)) == [
        "at-upper-edge",
        "at-lower-edge",
        "at-window-start",
        "ev-edge",
    ]
    assert ids(review_queue(engine, at(0), HOUR, 0.0)) == ["at-window-start", "ev-edge"]  # exactly on the threshold


def test_the_queue_is_newest_first_across_both_kinds_and_cut_at_the_limit(engine: Engine) -> None:
    add_events(
        engine,
        [
            {"event_id": "ev-a", "started_at": at(-30), "last_at": at(-1)},
            {"event_id": "ev-b", "started_at": at(-10), "last_at": at(-9), "ended_at": at(-9)},
        ],
    )
    add_inspections(
        engine,
        [
            {"id": "i-1", "frame_ts": at(-5), "score": 0.5},
            {"id": "i-2", "frame_ts": at(-10), "score": 0.5},  # same time as ev-b: the larger id comes first
            {"id": "i-3", "frame_ts": at(-20), "score": 0.5},
            {"id": "i-4", "frame_ts": at(-40), "score": 0.5},
        ],
    )

    assert ids(review_queue(engine, at(0), HOUR, 0.1)) == ["i-1", "i-2", "ev-b", "i-3", "ev-a", "i-4"]
    assert ids(review_queue(engine, at(0), HOUR, 0.1, limit=3)) == ["i-1", "i-2", "ev-b"]
    assert ids(review_queue(engine, at(0), HOUR, 0.1, limit=1)) == ["i-1"]


def test_queue_pages_walk_the_whole_queue_once_in_order_and_the_count_is_its_size(engine: Engine) -> None:
    """Issue 21: the page showed the first 50 of 136 and did not say so."""
    add_events(engine, [{"event_id": f"ev-{n}", "started_at": at(-n), "last_at": at(-n + 0.5)} for n in range(1, 8)])
    # Close calls, two per minute, several at the very time of an episode's start (ties across kinds).
    add_inspections(engine, [{"id": f"i-{n:02d}", "frame_ts": at(-(n // 2)), "score": 0.5} for n in range(2, 30)])
    everything = ids(review_queue(engine, at(0), HOUR, 0.1, limit=1000))
    assert review_count(engine, at(0), HOUR, 0.1) == len(everything) == 7 + 28
    pages, after = [], None
    while True:
        page = review_queue(engine, at(0), HOUR, 0.1, limit=4, after=after)
        if not page:
            break
        pages.append(ids(page))
        after = (page[-1].ts, page[-1].target_id)
    assert [item for page in pages for item in page] == everything
    assert all(len(page) == 4 for page in pages[:-1])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"band": -0.01}, r"band must be at least 0"),
        ({"limit": 0}, r"limit must be at least 1"),
        ({"now": datetime(2026, 3, 2, 8, 0)}, r"now must be a timezone-aware datetime"),
    ],
)
def test_the_queue_refuses_bad_arguments(unmigrated: Engine, arguments: dict[str, Any], message: str) -> None:
    call: dict[str, Any] = {"now": at(0), "window": HOUR, "band": 0.1, **arguments}
    with pytest.raises(ValueError, match=message):
        review_queue(unmigrated, **call)


def busy_rows(count: int) -> tuple[list[dict[str, Any]], list[str]]:
    """``count`` seeded frames of 4 cameras over the last hour before at(0), a snapshot on every 100th like the
    evidence sampler, a few labelled, no episodes (:func:`add_inspections` rows), and the ids of their close
    calls (band 0.1) newest first."""
    rng = random.Random(11)
    rows = []
    for number in range(count):
        camera = f"cam{number % 4}"
        rows.append(
            {
                "id": f"{camera}-{number:06d}",
                "camera": camera,
                "frame_ts": at(-60 * (count - number) / count),
                "score": rng.choice([0.2, 0.3, 0.47, 0.53]),
                "snapshot": f"{camera}/{number}.jpg" if number % 100 < 4 else None,
                "label": "normal" if rng.random() < 0.05 else None,
            }
        )
    close = [row for row in rows if row["snapshot"] and row["label"] is None and row["score"] in (0.47, 0.53)]
    return rows, [row["id"] for row in sorted(close, key=lambda row: (row["frame_ts"], row["id"]), reverse=True)]


def busy_line(engine: Engine, count: int) -> list[str]:
    """:func:`busy_rows` in the engine's line; returns the ids of the close calls newest first."""
    rows, close_calls = busy_rows(count)
    add_inspections(engine, rows)
    return close_calls


def inspections_plan(engine: Engine, call: Callable[[], object]) -> str:
    """The plan (EXPLAIN QUERY PLAN / EXPLAIN) of the statements ``call`` ran on the inspections table."""
    statements: list[tuple[str, Any]] = []

    def capture(_conn: object, _cursor: object, statement: str, parameters: Any, *_rest: object) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        plans = [conn.exec_driver_sql(explain + sql, parameters).all() for sql, parameters in statements]
    return "\n".join(str(row[-1]) for plan in plans for row in plan if "inspections" in str(row[-1]))


def plan_indexes(plan: str) -> set[str]:
    """The indexes an :func:`inspections_plan` reads inspections through (on PostgreSQL, its partitions')."""
    sqlite = re.findall(r"USING (?:COVERING )?INDEX (\S+)", plan)
    postgres = re.findall(r"Index (?:Only )?Scan(?: Backward)? using (\S+) on inspections", plan)
    return {*sqlite, *postgres, *re.findall(r"Bitmap Index Scan on (\S+)", plan)}


def review_indexes(engine: Engine) -> set[str]:
    """The review queue's partial index (and its partitions' copies on PostgreSQL)."""
    return _with_partition_copies(engine, REVIEW_INDEX)


def lookup_indexes(engine: Engine) -> set[str]:
    """The indexes a lookup of a row by its key (site, line, id, frame_ts) may take: the primary key's, or the
    time index's (the frame time alone finds a row or two); with their partitions' copies on PostgreSQL."""
    time_index = _with_partition_copies(engine, "ix_inspections_site_frame_ts")
    if engine.dialect.name == "sqlite":
        return {"sqlite_autoindex_inspections_1", *time_index}
    return _with_partition_copies(engine, "pk_inspections") | time_index


def _with_partition_copies(engine: Engine, index: str) -> set[str]:
    """``index`` and, on PostgreSQL, where ``inspections`` is partitioned by day, the partitions' own copies of
    it (the indexes a plan names)."""
    if engine.dialect.name == "sqlite":
        return {index}
    partitions = (
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = CAST(%(name)s AS regclass)"
    )
    with engine.connect() as conn:
        return {index, *conn.exec_driver_sql(partitions, {"name": index}).scalars()}


def test_close_calls_are_read_through_the_partial_index_on_both_dialects(engine: Engine, line2: Engine) -> None:
    """The plans each planner really picks for the review page (its page and its count) on a store shaped like
    two lines (PostgreSQL with the statistics its autovacuum would have gathered, SQLite with none, as in
    production): the close calls are walked down the partial index, and only the page's rows are then read by
    key. Without the literal index terms SQLite walks the time index, and with a bare ``label IS NULL`` it reads
    ``ix_inspections_label``."""
    expected = busy_line(engine, 4000)
    add_inspections(line2, busy_rows(4000)[0])  # the same frames on another line: the index seeks past them
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE inspections")
    queue = lambda: review_page(engine, at(0), HOUR, 0.1)  # noqa: E731

    plan = inspections_plan(engine, queue)

    used = plan_indexes(plan)
    walked = used & review_indexes(engine)
    assert walked and used - walked <= lookup_indexes(engine), plan  # then the page's rows fetched by key
    assert len(expected) > 50
    assert ids(review_queue(engine, at(0), HOUR, 0.1, limit=1000)) == expected
    assert ids(review_queue(engine, at(0), HOUR, 0.1)) == expected[:50]


def unlined(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as a store before migration 0008 held them: without site and line."""
    return [{name: value for name, value in row.items() if name not in ("site", "line")} for row in rows]


def test_a_0001_store_with_rows_upgrades_to_the_partial_index_and_its_queue_is_the_upgrading_lines(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``linewatch db upgrade`` on a store that 0001 made and the forwarder filled (no site or line then): the
    index is built over the rows already there, with the model's WHERE, and the rows are the queue of the line
    that ran the upgrade (the ``[site]`` defaults here) and of no other. 0008 has no way back down."""
    engine = make_engine(store_url)
    other = make_engine(store_url, LineScope("site", "line2"))
    try:
        with write_transaction(engine) as conn:
            command.upgrade(alembic_config(conn), "0001")
        rows, expected = busy_rows(600)
        rows.append({"id": "in-episode", "frame_ts": at(-27), "verdict": "defect", "score": 0.52})  # ev-1 covers it
        episode = {"event_id": "ev-1", "started_at": at(-30), "last_at": at(-25), "ended_at": at(-25)}
        tables = MetaData()
        tables.reflect(engine, only=["inspections", "events"])  # 0001's tables, keyed on the ids alone
        with engine.begin() as conn:
            conn.execute(insert(tables.tables["inspections"]), unlined(inspection_rows(engine, rows)))
            conn.execute(insert(tables.tables["events"]), unlined(event_rows(engine, [episode])))
        config = tmp_path / "linewatch.toml"
        config.write_text(f'[site]\ndata_dir = "{tmp_path / "data"}"\n\n[store]\nurl = "{store_url}"\n')

        assert main(["db", "upgrade", "--config", str(config)]) == 0

        assert "database upgraded from 0001 to 0009" in capsys.readouterr().out
        assert database_revision(engine) == "0009"
        index = {index["name"]: index for index in inspect(engine).get_indexes("inspections")}[REVIEW_INDEX]
        assert index["column_names"] == list(REVIEW_INDEX_COLUMNS) and not index["unique"]
        where = str(index["dialect_options"][f"{engine.dialect.name}_where"])
        if engine.dialect.name == "sqlite":
            assert where == REVIEWABLE  # SQLite keeps the text it was given
        else:
            assert where == "((label IS NULL) AND (snapshot IS NOT NULL))"  # PostgreSQL's rendering of it
        queue = ids(review_queue(engine, at(0), HOUR, 0.1))
        assert [item for item in queue if item != "ev-1"] == expected and "ev-1" in queue
        assert review_queue(other, at(0), HOUR, 0.1) == []
    finally:
        other.dispose()
        engine.dispose()


# --- one item ------------------------------------------------------------------------------------------------


def test_review_item_reads_either_target_labelled_or_not(engine: Engine) -> None:
    add_events(engine, [{"event_id": "ev-1", "started_at": at(-90), "last_at": at(-80), "label": "normal"}])
    add_inspections(
        engine,
        [{"id": "i-1", "frame_ts": at(-500), "score": 0.7, "verdict": "defect", "label": "defect", "heatmap": "h.jpg"}],
    )

    event = review_item(engine, "event", "ev-1")
    assert event is not None
    assert (event.target, event.ts, event.last_ts, event.open) == ("event", at(-90), at(-80), True)
    assert (event.label, event.label_user, event.labelled_at) == ("normal", "bo", at(-20))
    inspection = review_item(engine, "inspection", "i-1")
    assert inspection == ReviewItem(
        target="inspection",
        target_id="i-1",
        camera="cam1",
        product="metal plate",
        ts=at(-500),
        last_ts=at(-500),
        score=0.7,
        threshold=0.5,
        verdict="defect",
        model_version="v1",
        snapshot="cam1/i-1.jpg",
        heatmap="h.jpg",
        label="defect",
        label_user="ana",
        labelled_at=at(-440),
        open=False,
    )
    assert review_item(engine, "inspection", "ev-1") is None  # ids of one target never name the other
    assert review_item(engine, "event", "nope") is None
    with pytest.raises(ValueError, match=r"target must be one of inspection, event; got 'episode'"):
        review_item(engine, "episode", "ev-1")


# --- history -------------------------------------------------------------------------------------------------


def seeded_line(engine: Engine, count: int = 60) -> list[InspectionRow]:
    """A seeded mix of cameras, products, verdicts and labels, many rows sharing a frame time; returns them as
    the history should show them (newest first, id breaking ties)."""
    rng = random.Random(7)
    rows = []
    for number in range(count):
        verdict = rng.choice(["normal", "normal", "defect"])
        label = rng.choice([None, None, "normal", "defect"])
        rows.append(
            {
                "id": f"i-{number:03d}",
                "frame_ts": at(rng.randrange(12)),  # 12 distinct times for 60 rows
                "camera": rng.choice(["cam1", "cam2"]),
                "product": rng.choice(["metal plate", "screw"]),
                "verdict": verdict,
                "score": rng.random(),
                "part_id": rng.choice([None, f"P-{number}"]),
                "label": label,
            }
        )
    add_inspections(engine, rows)
    expected = [
        InspectionRow(
            inspection_id=row["id"],
            camera=row["camera"],
            product=row["product"],
            frame_ts=row["frame_ts"],
            score=row["score"],
            threshold=0.5,
            verdict=row["verdict"],
            model_version="v1",
            part_id=row["part_id"],
            snapshot=f"cam1/{row['id']}.jpg",
            heatmap=None,
            label=row["label"],
            label_user=None if row["label"] is None else "ana",
            labelled_at=None if row["label"] is None else row["frame_ts"] + HOUR,
        )
        for row in rows
    ]
    return sorted(expected, key=lambda row: (row.frame_ts, row.inspection_id), reverse=True)


def matches(row: InspectionRow, filter: HistoryFilter) -> bool:
    label = "unlabelled" if row.label is None else row.label
    return (
        filter.camera in (None, row.camera)
        and filter.product in (None, row.product)
        and filter.verdict in (None, row.verdict)
        and filter.label in (None, label)
        and (filter.since is None or row.frame_ts >= filter.since)
        and (filter.until is None or row.frame_ts < filter.until)
        and filter.part_id in (None, row.part_id)
    )


FILTERS = {
    "everything": HistoryFilter(),
    "camera": HistoryFilter(camera="cam2"),
    "product": HistoryFilter(product="screw"),
    "verdict": HistoryFilter(verdict="defect"),
    "label normal": HistoryFilter(label="normal"),
    "label defect": HistoryFilter(label="defect"),
    "unlabelled": HistoryFilter(label="unlabelled"),
    "since": HistoryFilter(since=at(5)),
    "until": HistoryFilter(until=at(5)),
    "combined": HistoryFilter(camera="cam1", product="metal plate", verdict="normal", since=at(2), until=at(10)),
    "combined unlabelled": HistoryFilter(camera="cam2", label="unlabelled", until=at(8)),
    "nothing matches": HistoryFilter(camera="cam9"),
    "part": HistoryFilter(part_id="P-3"),
    "part and camera": HistoryFilter(part_id="P-3", camera="cam1"),
}


def test_history_pages_walk_every_matching_row_once_newest_first(engine: Engine) -> None:
    """Each filter alone and combined, on one seeded line (one store per dialect keeps this fast)."""
    line = seeded_line(engine)
    for name, filter in FILTERS.items():
        expected = [row for row in line if matches(row, filter)]

        pages = walk(engine, filter, limit=4)

        assert [row for page in pages for row in page] == expected, name
        full, rest = divmod(len(expected), 4)
        assert [len(page) for page in pages] == ([4] * full + [rest] * (rest > 0) or [0]), name  # no empty last page
        assert history_page(engine, filter, limit=1000) == (expected, None), name


def test_a_page_cursor_is_its_last_row_and_the_last_full_page_has_none(engine: Engine) -> None:
    """Six rows at one frame time, pages of three: the cursor splits equal times by id, and a page that ends
    exactly at the last row says so rather than promising an empty page."""
    add_inspections(engine, [{"id": f"i-{n}", "frame_ts": at(0)} for n in range(6)])

    first, cursor = history_page(engine, HistoryFilter(), limit=3)
    assert [row.inspection_id for row in first] == ["i-5", "i-4", "i-3"]
    assert cursor == (at(0), "i-3") and cursor[0].utcoffset() == timedelta(0)
    second, cursor = history_page(engine, HistoryFilter(), limit=3, before=cursor)
    assert [row.inspection_id for row in second] == ["i-2", "i-1", "i-0"]
    assert cursor is None


def test_since_is_inclusive_and_until_exclusive(engine: Engine) -> None:
    add_inspections(engine, [{"id": f"i-{minute}", "frame_ts": at(minute)} for minute in range(5)])

    rows, _ = history_page(engine, HistoryFilter(since=at(1), until=at(3)))
    assert [row.inspection_id for row in rows] == ["i-2", "i-1"]
    rows, _ = history_page(engine, HistoryFilter(since=at(3), until=at(3)))
    assert rows == []


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: history_page(e, HistoryFilter(since=datetime(2026, 3, 2))), r"since must be a timezone-aware"),
        (lambda e: score_series(e, HistoryFilter(until=datetime(2026, 3, 2))), r"until must be a timezone-aware"),
        (lambda e: history_page(e, HistoryFilter(), before=(datetime(2026, 3, 2), "i")), r"before must be a"),
        (lambda e: history_page(e, HistoryFilter(verdict="bad")), r"verdict must be one of normal, defect"),
        (lambda e: history_page(e, HistoryFilter(label="ok")), r"label must be one of normal, defect, unl"),
        (lambda e: history_page(e, HistoryFilter(), limit=0), r"limit must be at least 1"),
        (lambda e: score_series(e, HistoryFilter(), limit=0), r"limit must be at least 1"),
    ],
)
def test_history_refuses_bad_arguments(unmigrated: Engine, call: Callable[[Engine], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(unmigrated)


# --- score series --------------------------------------------------------------------------------------------


def test_the_score_series_is_the_newest_matching_points_in_time_order(engine: Engine) -> None:
    line = seeded_line(engine)
    filter = HistoryFilter(camera="cam1")
    newest = [row for row in line if matches(row, filter)][:10]

    points = score_series(engine, filter, limit=10)

    assert points == [
        ScorePoint(row.frame_ts, row.score, row.threshold, row.product, row.verdict, row.label)
        for row in reversed(newest)
    ]
    assert len(score_series(engine, HistoryFilter())) == len(line)


# --- label history -------------------------------------------------------------------------------------------


def label_record(
    label_id: str, target: str, target_id: str, label: str, source: str, user: str | None, minute: int
) -> dict[str, Any]:
    return {
        "label_id": label_id,
        "target": target,
        "target_id": target_id,
        "camera": "cam1",
        "label": label,
        "source": source,
        "username": user,
        "labelled_at": at(minute),
    }


def add_labels(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Label rows (:func:`label_record`) of the engine's line."""
    with engine.begin() as conn:
        conn.execute(insert(LabelRecord), [{**scope_of(engine).columns(), **row} for row in rows])


def test_label_history_lists_one_targets_labels_newest_first(engine: Engine) -> None:
    add_labels(
        engine,
        [
            label_record("l-1", "event", "ev-1", "defect", "mqtt", "ana", 1),
            label_record("l-2", "event", "ev-1", "normal", "web", "bo", 3),
            label_record("l-3", "event", "ev-1", "defect", "cli", None, 2),
            label_record("l-4", "inspection", "ev-1", "normal", "web", "bo", 9),  # the other target, same id
            label_record("l-5", "event", "ev-2", "normal", "web", "bo", 9),
        ],
    )

    assert label_history(engine, "event", "ev-1") == [
        {"label": "normal", "source": "web", "username": "bo", "labelled_at": at(3)},
        {"label": "defect", "source": "cli", "username": None, "labelled_at": at(2)},
        {"label": "defect", "source": "mqtt", "username": "ana", "labelled_at": at(1)},
    ]
    assert [row["labelled_at"] for row in label_history(engine, "event", "ev-1", limit=2)] == [at(3), at(2)]
    assert label_history(engine, "inspection", "nope") == []
    with pytest.raises(ValueError, match=r"target must be one of"):
        label_history(engine, "label", "ev-1")


# --- failures ------------------------------------------------------------------------------------------------

CALLS: dict[str, tuple[Callable[[Engine], object], str]] = {
    "review_queue": (lambda e: review_queue(e, T0, HOUR, 0.1), "reading the review queue"),
    "review_item": (lambda e: review_item(e, "event", "ev-1"), "reading event 'ev-1'"),
    "history_page": (lambda e: history_page(e, HistoryFilter()), "reading a history page"),
    "score_series": (lambda e: score_series(e, HistoryFilter()), "reading the score series"),
    "label_history": (lambda e: label_history(e, "inspection", "i-1"), "reading the labels of inspection 'i-1'"),
}


@pytest.mark.parametrize("name", CALLS)
def test_an_unreachable_store_is_a_database_error_with_the_password_masked(name: str) -> None:
    call, what = CALLS[name]
    engine = make_engine(f"postgresql+psycopg://linewatch:{PASSWORD}@127.0.0.1:{free_port()}/linewatch")  # closed
    try:
        with pytest.raises(DatabaseError, match=rf"{re.escape(what)} failed: \w+: ") as error:
            call(engine)
    finally:
        engine.dispose()
    assert PASSWORD not in str(error.value)


@pytest.mark.parametrize("name", CALLS)
def test_a_store_without_the_schema_is_a_database_error(store_url: str, name: str) -> None:
    call, what = CALLS[name]
    engine = make_engine(store_url)
    try:
        with pytest.raises(DatabaseError, match=rf"{re.escape(what)} failed: \w+: "):
            call(engine)
    finally:
        engine.dispose()


def test_a_review_page_and_its_count_come_from_one_snapshot(engine: Engine) -> None:
    """The count and the items were read one after the other: an episode update landing in between covered a
    close call the page had shown, and the page said "17 waiting; showing 1-20"."""
    add_events(engine, [{"event_id": "ev-open", "started_at": at(-20), "last_at": at(-15)}])
    add_inspections(engine, [{"id": "after-update", "frame_ts": at(-14), "verdict": "defect", "score": 0.52}])
    reads: list[int] = []

    @event.listens_for(engine, "after_cursor_execute")
    def move_the_episode_on(*_args: Any) -> None:
        reads.append(1)
        if len(reads) == 2:  # the page's two item reads are done: the episode's next update lands now
            with engine.begin() as writer:
                writer.execute(update(DefectEvent).where(DefectEvent.event_id == "ev-open").values(last_at=at(-13)))

    try:
        items, waiting = review_page(engine, at(0), HOUR, 0.1)
    finally:
        event.remove(engine, "after_cursor_execute", move_the_episode_on)
    assert ids(items) == ["after-update", "ev-open"] and waiting == len(items) == 2
    assert review_count(engine, at(0), HOUR, 0.1) == 1  # afterwards the update covers the frame


def test_the_score_series_adds_the_minutes_retention_rolled_up(engine: Engine) -> None:
    """After retention, a window still shows its old minutes (their highest score), not a gap; a minute whose
    rows are still there (all of them: "old-defect" is kept for keep_days) is drawn from them."""
    rows = add_inspections(
        engine,
        [
            {"id": "old-1", "frame_ts": at(0) + timedelta(seconds=5), "score": 0.2, "snapshot": None},
            {"id": "old-2", "frame_ts": at(0) + timedelta(seconds=9), "score": 0.3, "snapshot": None},
            {"id": "old-bolt", "frame_ts": at(1), "score": 0.1, "snapshot": None, "product": "bolt"},
            {"id": "old-defect", "frame_ts": at(2), "score": 0.9, "verdict": "defect"},  # kept: keep_days
            {"id": "recent", "frame_ts": at(60 * 24 * 40), "score": 0.25, "snapshot": None},
        ],
    )
    with engine.begin() as conn:  # counted into their minutes as the forwarder counts rows when they arrive
        rollups.add_minutes(conn, rollups.minute_counts(rows))
    policy = StoreRetentionPolicy(timedelta(days=30), timedelta(days=365), timedelta(days=3650), 100, 0.0)
    StoreRetention(engine, FakeClock(at(60 * 24 * 41)), policy).sweep()

    points = score_series(engine, HistoryFilter())
    assert [(p.ts, p.score, p.product, p.rolled) for p in points] == [
        (at(0) + timedelta(seconds=30), pytest.approx(0.3), "metal plate", True),
        (at(1) + timedelta(seconds=30), pytest.approx(0.1), "bolt", True),
        (at(2), 0.9, "metal plate", False),
        (at(60 * 24 * 40), 0.25, "metal plate", False),
    ]
    assert [p.rolled for p in score_series(engine, HistoryFilter(product="bolt"))] == [True]
    assert score_series(engine, HistoryFilter(until=at(1))) == points[:1]
    assert not any(p.rolled for p in score_series(engine, HistoryFilter(label="unlabelled")))  # roll-ups have none
    assert [p.rolled for p in score_series(engine, HistoryFilter(), limit=2)] == [False, False]  # the newest two


# --- two lines in one store ----------------------------------------------------------------------------------


def add_minutes(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Roll-up rows of the engine's line: 3 frames of cam1, metal plate, normal, v1, scored up to 0.3 against
    0.5, all 3 rows deleted by retention unless a row says otherwise; each row sets at least ``minute``."""
    defaults: dict[str, Any] = {
        "camera": "cam1",
        "product": "metal plate",
        "verdict": "normal",
        "model_version": "v1",
        "frames": 3,
        "score_sum": 0.6,
        "score_max": 0.3,
        "threshold": 0.5,
        "labelled_normal": 0,
        "labelled_defect": 0,
        "deleted": 3,
    }
    with engine.begin() as conn:
        conn.execute(insert(InspectionMinute), [{**scope_of(engine).columns(), **defaults, **row} for row in rows])


def test_the_score_series_draws_only_the_minutes_some_of_whose_rows_retention_deleted(engine: Engine) -> None:
    """The forwarder counts every frame into its minute as it arrives: a minute whose rows are all still there
    is drawn from them alone, not as a roll-up too."""
    add_inspections(
        engine,
        [
            {"id": "half-kept", "frame_ts": at(1) + timedelta(seconds=20), "score": 0.1},
            {"id": "kept", "frame_ts": at(2) + timedelta(seconds=10), "score": 0.25},
        ],
    )
    add_minutes(
        engine,
        [
            {"minute": at(0)},  # every row deleted
            {"minute": at(1), "frames": 2, "deleted": 1, "score_max": 0.4},  # one of its two rows deleted
            {"minute": at(2), "frames": 1, "deleted": 0, "score_max": 0.25},  # its one row is "kept"
        ],
    )

    points = score_series(engine, HistoryFilter())

    assert [(p.ts, p.score, p.rolled) for p in points] == [
        (at(0) + timedelta(seconds=30), 0.3, True),
        (at(1) + timedelta(seconds=20), 0.1, False),
        (at(1) + timedelta(seconds=30), 0.4, True),
        (at(2) + timedelta(seconds=10), 0.25, False),
    ]


def two_lines(engine: Engine, line2: Engine) -> None:
    """Two lines with a cam1 each and some ids alike, different in everything else. Line 1 has a defect close
    call at -10 min that line 2's open episode on its own cam1 spans: only line 2's frames are covered by it."""
    add_events(
        engine,
        [
            {"event_id": "ev-shared", "started_at": at(-20), "last_at": at(-15)},
            {"event_id": "ev-line1", "started_at": at(-30), "last_at": at(-25), "ended_at": at(-25)},
        ],
    )
    add_inspections(
        engine,
        [
            {"id": "i-shared", "frame_ts": at(-10), "score": 0.52, "verdict": "defect", "part_id": "P-7"},
            {"id": "i-line1", "frame_ts": at(-12), "score": 0.48},
        ],
    )
    add_minutes(engine, [{"minute": at(-100), "score_max": 0.31}])
    add_events(
        line2,
        [
            {"event_id": "ev-shared", "started_at": at(-40), "last_at": at(-35), "ended_at": at(-35)},
            {"event_id": "ev-line2", "started_at": at(-50), "last_at": at(-5)},
        ],
    )
    add_inspections(
        line2,
        [
            {"id": "i-shared", "frame_ts": at(-11), "score": 0.47, "part_id": "P-7"},
            {"id": "i-line2", "frame_ts": at(-13), "score": 0.53, "verdict": "defect", "part_id": "P-7"},  # covered
            {"id": "i-line2-close", "frame_ts": at(-14), "score": 0.46},
        ],
    )
    add_minutes(line2, [{"minute": at(-90), "score_max": 0.32}])


def test_each_line_reviews_only_its_own_episodes_and_close_calls(engine: Engine, line2: Engine) -> None:
    two_lines(engine, line2)

    ours, waiting = review_page(engine, at(0), HOUR, 0.1)
    theirs = review_queue(line2, at(0), HOUR, 0.1)

    assert ids(ours) == ["i-shared", "i-line1", "ev-shared", "ev-line1"] and waiting == 4
    assert ids(theirs) == ["i-shared", "i-line2-close", "ev-shared", "ev-line2"]  # i-line2: inside ev-line2
    assert review_count(line2, at(0), HOUR, 0.1) == 4
    assert [(item.ts, item.score) for item in ours[:1] + theirs[:1]] == [(at(-10), 0.52), (at(-11), 0.47)]

    line1_episode, line2_episode = review_item(engine, "event", "ev-shared"), review_item(line2, "event", "ev-shared")
    assert line1_episode is not None and (line1_episode.ts, line1_episode.open) == (at(-20), True)
    assert line2_episode is not None and (line2_episode.ts, line2_episode.open) == (at(-40), False)
    line1_frame = review_item(engine, "inspection", "i-shared")
    line2_frame = review_item(line2, "inspection", "i-shared")
    assert line1_frame is not None and (line1_frame.score, line1_frame.verdict) == (0.52, "defect")
    assert line2_frame is not None and (line2_frame.score, line2_frame.verdict) == (0.47, "normal")
    assert review_item(engine, "inspection", "i-line2") is None and review_item(engine, "event", "ev-line2") is None
    assert review_item(line2, "inspection", "i-line1") is None and review_item(line2, "event", "ev-line1") is None


def test_each_line_pages_and_plots_only_its_own_history_of_a_camera_named_alike(engine: Engine, line2: Engine) -> None:
    two_lines(engine, line2)

    def page(bind: Engine, filter: HistoryFilter) -> list[tuple[str, float]]:
        rows, cursor = history_page(bind, filter)
        assert cursor is None
        return [(row.inspection_id, row.score) for row in rows]

    assert page(engine, HistoryFilter(camera="cam1")) == [("i-shared", 0.52), ("i-line1", 0.48)]
    assert page(line2, HistoryFilter(camera="cam1")) == [("i-shared", 0.47), ("i-line2", 0.53), ("i-line2-close", 0.46)]
    assert page(engine, HistoryFilter(part_id="P-7")) == [("i-shared", 0.52)]  # a part's frames: this line's
    assert page(line2, HistoryFilter(part_id="P-7")) == [("i-shared", 0.47), ("i-line2", 0.53)]
    first, cursor = history_page(engine, HistoryFilter(), limit=1)
    assert [row.inspection_id for row in first] == ["i-shared"] and cursor == (at(-10), "i-shared")
    older, _ = history_page(engine, HistoryFilter(), before=cursor)  # line 2's frames at -11, -13, -14 are not ours
    assert [row.inspection_id for row in older] == ["i-line1"]

    plotted = [(p.ts, p.score, p.rolled) for p in score_series(engine, HistoryFilter(camera="cam1"))]
    assert plotted == [(at(-100) + timedelta(seconds=30), 0.31, True), (at(-12), 0.48, False), (at(-10), 0.52, False)]
    plotted = [(p.ts, p.score, p.rolled) for p in score_series(line2, HistoryFilter(camera="cam1"))]
    assert plotted == [
        (at(-90) + timedelta(seconds=30), 0.32, True),
        (at(-14), 0.46, False),
        (at(-13), 0.53, False),
        (at(-11), 0.47, False),
    ]


def test_each_line_reads_only_its_own_labels_and_actions(engine: Engine, line2: Engine) -> None:
    """Label and action ids alike on both lines; an account is the plant's, its change the line's that made it."""
    add_labels(engine, [label_record("l-1", "event", "ev-shared", "defect", "web", "ana", 1)])
    add_labels(line2, [label_record("l-1", "event", "ev-shared", "normal", "mqtt", "bo", 2)])
    action = {"action_id": "a-1", "kind": "camera_disabled", "camera": "cam1", "detail": None}
    with engine.begin() as conn:
        conn.execute(insert(ActionRecord), [{**scope_of(engine).columns(), **action, "actor": "web: ana", "at": at(1)}])
    with line2.begin() as conn:
        conn.execute(insert(ActionRecord), [{**scope_of(line2).columns(), **action, "actor": "web: bo", "at": at(2)}])
    add_user(line2, "erin", "admin", "a long password", "cli: root", now=at(3))

    assert label_history(engine, "event", "ev-shared") == [
        {"label": "defect", "source": "web", "username": "ana", "labelled_at": at(1)}
    ]
    assert label_history(line2, "event", "ev-shared") == [
        {"label": "normal", "source": "mqtt", "username": "bo", "labelled_at": at(2)}
    ]
    kinds = ("camera_disabled", "user_added")
    assert [(row["kind"], row["actor"]) for row in recent_actions(engine, kinds)] == [("camera_disabled", "web: ana")]
    assert [(row["kind"], row["actor"]) for row in recent_actions(line2, kinds)] == [
        ("user_added", "cli: root"),
        ("camera_disabled", "web: bo"),
    ]
    assert authenticate(engine, "erin", "a long password") == "admin"  # the account logs in on every line

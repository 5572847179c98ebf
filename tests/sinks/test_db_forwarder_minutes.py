"""What the DB forwarder adds to ``inspection_minutes`` as verdicts and labels arrive, and to ``part_hours`` as
part verdicts do, and two lines writing one store (SQLite file and a real PostgreSQL): the counts always equal
what the stored rows say, however often a chunk is replayed, and a line never sees or changes the other's
rows."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from linewatch.clock import FakeClock
from linewatch.pipeline.journal.outbox import Journal
from linewatch.sinks.db import LineScope, inspection_counts, make_engine
from linewatch.sinks.db_forwarder import DbForwarder
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.db_schema import Inspection, InspectionHour, InspectionMinute, PartHour
from linewatch.sinks.rollups import minute_counts
from linewatch.types import LabelTarget, PartResult
from tests.sinks.test_db_forwarder import SCORES, T0, Line, all_records, drain, label

LINE_A = LineScope("plant", "line-a")
LINE_B = LineScope("plant", "line-b")


@pytest.fixture
def stores(store_url: str, tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """Two lines' engines on one store."""
    upgrade_database(store_url, tmp_path / "backups", scope=LINE_A)
    engines = make_engine(store_url, LINE_A), make_engine(store_url, LINE_B)
    yield engines
    for engine in engines:
        engine.dispose()


def _journal(tmp_path: Path, name: str) -> Journal:
    journal = Journal(tmp_path / f"{name}.sqlite3", FakeClock(T0))
    journal.register_forwarder("db")
    return journal


def _minutes(engine: Engine, scope: LineScope) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    with engine.connect() as conn:
        table = InspectionMinute.__table__
        rows = conn.execute(select(table).where(table.c.site == scope.site, table.c.line == scope.line)).all()
        return {
            (m.minute, m.camera, m.product, m.verdict, m.model_version): (
                m.frames, round(m.score_sum, 9), m.score_max, m.labelled_normal, m.labelled_defect, m.deleted,
            )
            for m in rows
        }  # fmt: skip


def _minutes_from_rows(engine: Engine, scope: LineScope) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """What the minutes must say: the stored rows counted afresh."""
    with engine.connect() as conn:
        table = Inspection.__table__
        rows = conn.execute(select(table).where(table.c.site == scope.site, table.c.line == scope.line))
        counted = minute_counts(rows.mappings())
    return {
        (m["minute"], m["camera"], m["product"], m["verdict"], m["model_version"]): (
            m["frames"], round(m["score_sum"], 9), m["score_max"], m["labelled_normal"], m["labelled_defect"], 0,
        )
        for m in counted
    }  # fmt: skip


def _hours(engine: Engine, scope: LineScope) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    with engine.connect() as conn:
        table = InspectionHour.__table__
        rows = conn.execute(select(table).where(table.c.site == scope.site, table.c.line == scope.line)).all()
    return {(h.hour, h.camera, h.verdict): (h.frames, h.labelled_normal, h.labelled_defect) for h in rows}


def _hours_from(minutes: dict[tuple[Any, ...], tuple[Any, ...]]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The minutes summed per hour, camera and verdict (one product and one model version here)."""
    hours: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for (minute, camera, _product, verdict, _version), (frames, _, _, normal, defect, _) in minutes.items():
        key = (minute.replace(minute=0), camera, verdict)
        before = hours.get(key, (0, 0, 0))
        hours[key] = (before[0] + frames, before[1] + normal, before[2] + defect)
    return hours


def test_minutes_count_every_row_once_through_replays_and_label_changes(
    stores: tuple[Engine, Engine], tmp_path: Path
) -> None:
    engine, _ = stores
    rng = random.Random(7)
    with _journal(tmp_path, "a") as journal:
        for camera in ("cam1", "cam2"):
            line = Line(journal, camera)
            line.run(SCORES)
            line.run([rng.random() * 0.4 for _ in range(150)])  # 75 s: two minutes more
        _, events = Line(journal, "cam3").run(SCORES)
        journal.append_batch([], [], [label(LabelTarget.INSPECTION, "cam1-boot1-2", "normal", 1, "l1")])
        journal.append_batch([], [], [label(LabelTarget.INSPECTION, "cam1-boot1-2", "defect", 2, "l2")])  # changed
        journal.append_batch([], [], [label(LabelTarget.INSPECTION, "cam2-boot1-5", "normal", 3, "l3")])
        journal.append_batch([], [], [label(LabelTarget.EVENT, events[0].event_id, "normal", 4, "l4", "cam3")])
        forwarder = DbForwarder(engine)
        records = all_records(journal)

        assert forwarder.send(records[:31]) == 31  # stored before the journal's cursor moved (a crash, say) ...
        drain(journal, forwarder, batch_size=7)  # ... so one chunk holds stored rows and new ones (28..34)
        expected = _minutes_from_rows(engine, LINE_A)
        assert _minutes(engine, LINE_A) == expected
        assert sum(frames for frames, *_ in expected.values()) == 2 * (len(SCORES) + 150) + len(SCORES)
        labelled = {key: counts[3:5] for key, counts in expected.items() if counts[3:5] != (0, 0)}
        assert sum(n + d for n, d in labelled.values()) == 2 + 4  # two frames, and the episode's 4 defect frames

        assert forwarder.send(records) == len(records)  # the whole journal replayed
        assert forwarder.send(records[40:90]) == 50  # and a chunk from another boundary
        assert _minutes(engine, LINE_A) == expected
        assert _hours(engine, LINE_A) == _hours_from(expected)


def test_two_lines_with_the_same_camera_and_ids_share_a_store_apart(
    stores: tuple[Engine, Engine], tmp_path: Path
) -> None:
    engine_a, engine_b = stores
    with _journal(tmp_path, "a") as journal_a, _journal(tmp_path, "b") as journal_b:
        Line(journal_a, "cam1").run(SCORES)
        Line(journal_b, "cam1").run([0.1] * 8)  # the same camera name and inspection ids cam1-boot1-1..8
        journal_b.append_batch([], [], [label(LabelTarget.INSPECTION, "cam1-boot1-2", "defect", 1, "l1")])
        drain(journal_a, DbForwarder(engine_a))
        drain(journal_b, DbForwarder(engine_b))

    assert inspection_counts(engine_a) == {
        "inspections": 12, "defects": 4, "labelled": 0, "events": 1, "open_events": 0, "labels": 0,
    }  # fmt: skip
    assert inspection_counts(engine_b) == {
        "inspections": 8, "defects": 0, "labelled": 1, "events": 0, "open_events": 0, "labels": 1,
    }  # fmt: skip
    with engine_a.connect() as conn:
        rows = {(r.line, r.id): r for r in conn.execute(select(Inspection).where(Inspection.id == "cam1-boot1-2"))}
    assert set(rows) == {("line-a", "cam1-boot1-2"), ("line-b", "cam1-boot1-2")}
    assert (rows["line-a", "cam1-boot1-2"].label, rows["line-b", "cam1-boot1-2"].label) == (None, "defect")
    assert (rows["line-a", "cam1-boot1-2"].score, rows["line-b", "cam1-boot1-2"].score) == (0.2, 0.1)
    for engine, scope in ((engine_a, LINE_A), (engine_b, LINE_B)):
        assert _minutes(engine, scope) == _minutes_from_rows(engine, scope)


def test_parts_are_counted_per_hour_station_and_verdict_once_through_replays(
    stores: tuple[Engine, Engine], tmp_path: Path
) -> None:
    engine_a, engine_b = stores
    rng = random.Random(3)
    verdicts = ("OK", "OK", "NOK", "incomplete")
    parts = [  # 12 parts over 5 hours, so most hours hold several
        PartResult(f"st{rng.randrange(2)}", f"P{i}", rng.choice(verdicts), 0.5, "why", T0 + timedelta(minutes=25 * i),
                   "v1", "plate", (), result_id=f"r{i}")
        for i in range(12)
    ]  # fmt: skip
    with _journal(tmp_path, "a") as journal_a, _journal(tmp_path, "b") as journal_b:
        journal_a.append_batch([], [], parts=parts)
        journal_b.append_batch([], [], parts=parts[:3])  # the same result ids on another line
        forwarder = DbForwarder(engine_a)
        drain(journal_a, forwarder, batch_size=5)
        records = all_records(journal_a)
        assert forwarder.send(records) == 12 and forwarder.send(records[4:7]) == 3  # replays
        drain(journal_b, DbForwarder(engine_b))

    def per_hour(counted: list[PartResult]) -> dict[tuple[Any, ...], int]:
        hours: dict[tuple[Any, ...], int] = {}
        for part in counted:
            key = (part.at.replace(minute=0, second=0, microsecond=0), part.station, part.verdict)
            hours[key] = hours.get(key, 0) + 1
        return hours

    assert max(per_hour(parts).values()) > 1
    for engine, scope, counted in ((engine_a, LINE_A, parts), (engine_b, LINE_B, parts[:3])):
        with engine.connect() as conn:
            table = PartHour.__table__
            stored = conn.execute(select(table).where(table.c.site == scope.site, table.c.line == scope.line))
            assert {(h.hour, h.station, h.verdict): h.parts for h in stored} == per_hour(counted)

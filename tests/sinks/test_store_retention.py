"""Store retention with roll-ups, on SQLite and on a real PostgreSQL (the store_url fixture)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, insert, select

from linewatch.clock import FakeClock
from linewatch.sinks.db import DEFAULT_SCOPE, make_engine
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.db_schema import Inspection, InspectionHour, InspectionMinute, PartRecord
from linewatch.sinks.store_retention import StoreRetention, StoreRetentionPolicy
from tests.store_rows import insert_counted_inspections, inspection_row

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
POLICY = StoreRetentionPolicy(
    keep_normal=timedelta(days=30), keep=timedelta(days=365), keep_rollups=timedelta(days=3650), batch_rows=1000,
    pause_s=0.0,
)  # fmt: skip


@pytest.fixture
def engine(store_url: str, tmp_path: Path) -> Iterator[Engine]:
    upgrade_database(store_url, tmp_path / "backups")
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


def _plain(inspection_id: str, frame_ts: datetime, **values: object) -> dict[str, object]:
    """A normal frame without evidence or label: the rows that go first."""
    return inspection_row(inspection_id, frame_ts, snapshot=None, **values)


def _ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(Inspection.id)))


def _count(engine: Engine, entity: type) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(entity)) or 0)


def _rollups(engine: Engine) -> list[InspectionMinute]:
    with engine.connect() as conn:
        return [
            row
            for row in conn.execute(
                select(InspectionMinute).order_by(InspectionMinute.minute, InspectionMinute.verdict)
            )
        ]


def test_plain_normals_go_after_keep_normal_days_and_the_rest_after_keep_days(engine: Engine) -> None:
    old = NOW - timedelta(days=40)
    ancient = NOW - timedelta(days=400)
    insert_counted_inspections(
        engine,
        [
            _plain("plain-old", old),
            _plain("plain-recent", NOW - timedelta(days=29)),
            inspection_row("evidence-old", old),  # a sampled normal with its snapshot: kept for keep_days
            _plain("defect-old", old, verdict="defect", score=0.9),
            _plain("labelled-old", old, label="normal", label_source="web", labelled_at=old),
            _plain("plain-ancient", ancient),
            inspection_row("defect-ancient", ancient, verdict="defect", score=0.8),
        ],
    )
    retention = StoreRetention(engine, FakeClock(NOW), POLICY)

    result = retention.sweep()

    assert _ids(engine) == {"plain-recent", "evidence-old", "defect-old", "labelled-old"}
    assert (result.normal, result.old, result.rollups) == (1, 2, 2)  # the ancient minutes went with their rows
    assert retention.stats.deleted == {"normal": 1, "old": 2, "parts": 0, "rollup": 2}
    # Every frame was counted when it arrived; retention counts which of them went.
    counted = {(row.minute, row.verdict): (row.frames, row.deleted) for row in _rollups(engine)}
    assert counted == {
        (old.replace(second=0), "normal"): (3, 1),  # plain-old went; evidence-old and labelled-old stay
        (old.replace(second=0), "defect"): (1, 0),
        ((NOW - timedelta(days=29)).replace(second=0), "normal"): (1, 0),
    }
    assert retention.sweep() == type(result)(0, 0, 0, 0, retention.stats.longest_batch_s)  # nothing left to do


def test_nothing_is_lost_each_minute_counts_its_frames_and_which_of_them_went(engine: Engine) -> None:
    generator = random.Random(7)
    rows = []
    for index in range(600):
        frame_ts = NOW - timedelta(days=generator.uniform(0, 500), seconds=generator.randrange(60))
        defect = generator.random() < 0.05
        rows.append(
            inspection_row(
                f"i{index:04d}",
                frame_ts,
                index,
                camera=generator.choice(["cam1", "cam2"]),
                product=generator.choice(["plate", "bolt"]),
                verdict="defect" if defect else "normal",
                score=round(generator.uniform(0.5, 1.0) if defect else generator.uniform(0.0, 0.5), 6),
                snapshot=f"cam1/i{index}.jpg" if generator.random() < 0.1 else None,
                model_version=generator.choice(["v1", "v2"]),
            )
        )
    insert_counted_inspections(engine, rows)
    retention = StoreRetention(engine, FakeClock(NOW), replace(POLICY, batch_rows=37))

    result = retention.sweep()

    left = _ids(engine)
    gone = [row for row in rows if row["id"] not in left]
    assert result.normal + result.old == len(gone) > 300
    rollups = [row for row in _rollups(engine) if row.minute >= NOW - POLICY.keep]  # older minutes went too
    expected: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for row in rows:
        minute = row["frame_ts"].replace(second=0, microsecond=0)  # type: ignore[attr-defined]
        if minute >= NOW - POLICY.keep:
            key = (minute, row["camera"], row["product"], row["verdict"], row["model_version"])
            expected.setdefault(key, []).append(row)
    assert {(r.minute, r.camera, r.product, r.verdict, r.model_version) for r in rollups} == set(expected)
    for rollup in rollups:
        frames = expected[(rollup.minute, rollup.camera, rollup.product, rollup.verdict, rollup.model_version)]
        assert rollup.frames == len(frames)
        assert rollup.deleted == sum(frame["id"] not in left for frame in frames)
        assert rollup.score_sum == pytest.approx(sum(frame["score"] for frame in frames))  # type: ignore[misc]
    for row in rows:  # what stays is exactly what the policy keeps
        age = NOW - row["frame_ts"]  # type: ignore[operator]
        plain = row["verdict"] == "normal" and row["snapshot"] is None
        assert (row["id"] in left) == (age < (POLICY.keep_normal if plain else POLICY.keep))


def test_a_minute_keeps_its_counts_when_some_of_its_rows_go(engine: Engine) -> None:
    """The plain normal of a minute goes at keep_normal_days, its labelled normal and its defect stay until
    keep_days: the minute still counts all three frames, its label and score, and says one went."""
    minute = NOW - timedelta(days=40)
    insert_counted_inspections(
        engine,
        [
            _plain("n1", minute + timedelta(seconds=1), score=0.2),
            _plain("n2", minute + timedelta(seconds=2), score=0.3, label="defect", labelled_at=minute),
            _plain("d1", minute + timedelta(seconds=3), verdict="defect", score=0.9),
        ],
    )
    StoreRetention(engine, FakeClock(NOW), POLICY).sweep()

    assert _ids(engine) == {"n2", "d1"}
    rows = _rollups(engine)
    assert [(r.verdict, r.frames, r.deleted, r.labelled_defect) for r in rows] == [
        ("defect", 1, 0, 0),
        ("normal", 2, 1, 1),
    ]
    assert rows[1].score_sum == pytest.approx(0.5)
    assert rows[1].score_max == pytest.approx(0.3)


def test_roll_ups_go_after_keep_rollup_days_and_a_stop_ends_a_pass_between_batches(engine: Engine) -> None:
    start = NOW - timedelta(days=3)
    insert_counted_inspections(engine, [_plain(f"p{i}", start + timedelta(minutes=i)) for i in range(50)])
    short = StoreRetentionPolicy(timedelta(days=1), timedelta(days=1), timedelta(days=4), batch_rows=10, pause_s=0.0)
    clock = FakeClock(NOW)
    stop = threading.Event()
    stop.set()
    assert StoreRetention(engine, clock, short).sweep(stop).normal == 0  # stopped before the first batch

    retention = StoreRetention(engine, clock, short)
    first = retention.sweep()
    assert first.old == 50  # older than keep_days too: the keep pass takes them, in batches of 10
    assert first.rollups == 50 and _rollups(engine) == []  # their minutes go at keep_days too
    assert _count(engine, InspectionHour) == 1  # the hour they fell in stays for keep_rollup_days
    clock.advance(timedelta(days=1.5).total_seconds())
    second = retention.sweep()
    assert second.rollups == 1 and _count(engine, InspectionHour) == 0


def test_retention_runs_in_the_daemon_thread_and_reports_failures(tmp_path: Path) -> None:
    """A store that cannot be read (no schema) makes a pass fail, counted, and the loop goes on."""
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    stop = threading.Event()

    class StopAfterTwo(FakeClock):
        calls = 0

        def wait(self, seconds: float, stop_event: threading.Event) -> bool:
            self.calls += 1
            if self.calls >= 2:
                stop_event.set()
            return super().wait(seconds, stop_event)

    retention = StoreRetention(engine, StopAfterTwo(NOW), POLICY)
    retention.run(stop, 60.0)
    engine.dispose()
    assert retention.stats.failures == 2
    assert "inspections" in (retention.stats.last_error or "")


def test_part_verdicts_go_after_keep_days_in_batches(engine: Engine) -> None:
    def part(result_id: str, at: datetime) -> dict[str, object]:
        return {**DEFAULT_SCOPE.columns(), "result_id": result_id, "station": "s1", "part_id": result_id,
                "verdict": "OK", "score": 0.2, "reason": "", "at": at, "model_version": "v1", "product": "plate",
                "inspections": []}  # fmt: skip

    rows = [part(f"old-{i}", NOW - timedelta(days=400, minutes=i)) for i in range(7)]
    rows.append(part("recent", NOW - timedelta(days=364)))
    with engine.begin() as conn:
        conn.execute(insert(PartRecord), rows)
    retention = StoreRetention(engine, FakeClock(NOW), replace(POLICY, batch_rows=3))

    assert retention.sweep().parts == 7
    with engine.connect() as conn:
        assert list(conn.scalars(select(PartRecord.result_id))) == ["recent"]
    assert retention.stats.deleted["parts"] == 7

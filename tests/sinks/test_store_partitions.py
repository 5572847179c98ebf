"""The daily partitions of ``inspections`` on a real PostgreSQL: created ahead (taking in what the default
partition caught), compacted at keep_normal_days, dropped at keep_days, each change whole or not at all; rows
written by the real DB forwarder, counted in their minutes before and after."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text

from linewatch.clock import FakeClock
from linewatch.pipeline.journal.records import JournalRecord, verdict_payload
from linewatch.sinks.db import LineScope, make_engine
from linewatch.sinks.db_forwarder import DbForwarder
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.db_schema import Inspection, InspectionMinute, RetentionPolicy
from linewatch.sinks.store_partitions import DAYS_AHEAD, InspectionPartitions, day_name
from linewatch.sinks.store_retention import StoreRetention, StoreRetentionPolicy
from linewatch.types import Verdict, VerdictLabel

DAY0 = datetime(2026, 1, 10, tzinfo=UTC)
KEEP_NORMAL, KEEP = timedelta(days=30), timedelta(days=365)
# Per day: 30 frames a minute apart; every 5th a defect with evidence, every 7th a normal with evidence.
FRAMES_PER_DAY = 30


@pytest.fixture
def store(postgres_url: str, tmp_path: Path) -> Iterator[Engine]:
    upgrade_database(postgres_url, tmp_path / "backups")
    engine = make_engine(postgres_url)
    yield engine
    engine.dispose()


def _verdict(day: int, index: int) -> Verdict:
    defect, evidence = index % 5 == 0, index % 5 == 0 or index % 7 == 0
    inspection_id = f"cam1-boot-{day}-{index}"
    return Verdict(
        inspection_id=inspection_id,
        camera="cam1",
        product="plate",
        seq=index,
        frame_ts=DAY0 + timedelta(days=day, hours=8, minutes=index, seconds=index % 60),
        captured_mono=float(index),
        score=0.9 if defect else 0.1 + index / 1000,
        threshold=0.5,
        label=VerdictLabel.DEFECT if defect else VerdictLabel.NORMAL,
        model_version="v1",
        part_id=None,
        snapshot=f"cam1/{inspection_id}.jpg" if evidence else None,
        heatmap=None,
    )


def _write_days(engine: Engine, days: int) -> list[Verdict]:
    verdicts = [_verdict(day, index) for day in range(days) for index in range(FRAMES_PER_DAY)]
    records = [
        JournalRecord(n, "verdict", v.inspection_id, v.camera, verdict_payload(v), "2026-01-10T00:00:00Z")
        for n, v in enumerate(verdicts, 1)
    ]
    DbForwarder(engine).send(records)
    return verdicts


def _where_rows_are(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT tableoid::regclass::text, count(*) FROM inspections GROUP BY 1"))
        return {name: count for name, count in rows}


def _totals(engine: Engine) -> tuple[int, int]:
    with engine.connect() as conn:
        return conn.execute(select(func.sum(InspectionMinute.frames), func.sum(InspectionMinute.deleted))).one()


def test_partitions_are_created_ahead_then_compacted_then_dropped(store: Engine) -> None:
    verdicts = _write_days(store, 3)  # before their days have partitions: into the default one
    assert _where_rows_are(store) == {"inspections_default": 3 * FRAMES_PER_DAY}
    partitions = InspectionPartitions(store)

    made = partitions.maintain(DAY0, KEEP_NORMAL, KEEP)

    assert made.created == DAYS_AHEAD + 1 and (made.compacted, made.dropped) == (0, 0)
    assert [p.name for p in partitions.partitions()][: DAYS_AHEAD + 1] == [
        day_name((DAY0 + timedelta(days=n)).date()) for n in range(DAYS_AHEAD + 1)
    ]
    assert _where_rows_are(store) == {day_name((DAY0 + timedelta(days=n)).date()): FRAMES_PER_DAY for n in range(3)}
    assert partitions.maintain(DAY0, KEEP_NORMAL, KEEP).created == 0  # nothing twice

    # Day 1's frames labelled afterwards stay for keep_days like any labelled frame.
    with store.begin() as conn:
        conn.execute(
            Inspection.__table__.update()
            .where(Inspection.id.in_([f"cam1-boot-1-{i}" for i in (1, 2)]))
            .values(label="normal", labelled_at=DAY0)
        )
    kept = {v.inspection_id for v in verdicts if v.snapshot is not None} | {"cam1-boot-1-1", "cam1-boot-1-2"}
    compacted = partitions.maintain(DAY0 + timedelta(days=2) + KEEP_NORMAL, KEEP_NORMAL, KEEP)

    kept_of_first_two_days = [v for v in verdicts[: 2 * FRAMES_PER_DAY] if v.inspection_id in kept]
    assert (compacted.compacted, compacted.dropped) == (2, 0)
    assert 0 < compacted.longest_swap_s < 2.0  # the forwarders wait for the swap only, not for the copy
    assert compacted.normal_rows == 2 * FRAMES_PER_DAY - len(kept_of_first_two_days)
    with store.connect() as conn:
        left = set(conn.scalars(select(Inspection.id)))
    day2 = {v.inspection_id for v in verdicts[2 * FRAMES_PER_DAY :]}
    assert left == (kept - day2) | day2  # day 2 is not old enough yet
    assert [p.compacted for p in partitions.partitions()][:3] == [True, True, False]
    frames, deleted = _totals(store)
    assert (frames, deleted) == (3 * FRAMES_PER_DAY, compacted.normal_rows)  # every frame still counted

    dropped = partitions.maintain(DAY0 + timedelta(days=3) + KEEP, KEEP_NORMAL, KEEP)

    assert dropped.dropped == 3  # the three days older than keep_days; the empty ones after them were compacted
    assert dropped.old_rows + compacted.normal_rows == 3 * FRAMES_PER_DAY
    with store.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Inspection)) == 0
    assert _totals(store) == (3 * FRAMES_PER_DAY, 3 * FRAMES_PER_DAY)


def test_a_change_that_cannot_get_its_lock_in_time_changes_nothing(store: Engine) -> None:
    _write_days(store, 1)
    partitions = InspectionPartitions(store, lock_timeout_ms=200)
    partitions.maintain(DAY0, KEEP_NORMAL, KEEP)
    before = _where_rows_are(store), _totals(store)
    with store.connect() as reader, reader.begin():
        reader.execute(text("SELECT count(*) FROM inspections"))  # a long dashboard query holds ACCESS SHARE

        refused = partitions.maintain(DAY0 + timedelta(days=1) + KEEP_NORMAL, KEEP_NORMAL, KEEP)

        # Creating a day (ATTACH checks the default partition) and the swap both wait for the reader: refused.
        assert (refused.created, refused.compacted, refused.refused) == (0, 0, DAYS_AHEAD + 1 + 1)
    assert (_where_rows_are(store), _totals(store)) == before  # the counts rolled back with the swap
    assert partitions.maintain(DAY0 + timedelta(days=1) + KEEP_NORMAL, KEEP_NORMAL, KEEP).compacted == 1


def test_another_daemon_changing_partitions_makes_this_one_wait_a_pass(store: Engine) -> None:
    partitions = InspectionPartitions(store)
    with store.connect() as other, other.begin():
        other.execute(text("SELECT pg_advisory_xact_lock(x'6C777074'::int)"))

        skipped = partitions.maintain(DAY0, KEEP_NORMAL, KEEP)

        assert (skipped.created, skipped.refused) == (0, 0)
    assert partitions.maintain(DAY0, KEEP_NORMAL, KEEP).created == DAYS_AHEAD + 1


def test_retention_on_postgresql_compacts_whole_days_and_reports_them(store: Engine) -> None:
    """The daemon's StoreRetention pass: the days' partitions first, then its row-by-row pass has nothing left
    (what was in the default partition moved into the new days)."""
    verdicts = _write_days(store, 2)
    policy = StoreRetentionPolicy(KEEP_NORMAL, KEEP, timedelta(days=3650), batch_rows=50, pause_s=0.0)
    clock = FakeClock(DAY0)
    retention = StoreRetention(store, clock, policy)
    retention.sweep()
    assert retention.stats.partitions["created"] == DAYS_AHEAD + 1
    clock.advance((timedelta(days=2) + KEEP_NORMAL).total_seconds())

    result = retention.sweep()

    plain = [v for v in verdicts if v.snapshot is None]
    assert result.normal == len(plain) and result.old == 0
    assert retention.stats.deleted["normal"] == len(plain) and retention.stats.partitions["compacted"] == 2
    with store.connect() as conn:
        assert set(conn.scalars(select(Inspection.id))) == {v.inspection_id for v in verdicts if v.snapshot}


def test_the_days_follow_the_longest_keeps_any_line_of_the_store_recorded(
    store: Engine, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A day partition holds every line's frames: a line that keeps its plain normals 7 days compacts a day
    only once the line that keeps them 30 (whose retention ran before) no longer wants it, and says so."""
    _write_days(store, 2)  # the default line's frames, on January 10 and 11
    careful = StoreRetention(store, FakeClock(DAY0), StoreRetentionPolicy(KEEP_NORMAL, KEEP, KEEP * 10, 50, 0.0))
    careful.sweep()
    hasty_engine = make_engine(postgres_url, LineScope("site", "line-7d"))
    clock = FakeClock(DAY0 + timedelta(days=12))
    hasty = StoreRetention(hasty_engine, clock, StoreRetentionPolicy(timedelta(days=7), KEEP, KEEP * 10, 50, 0.0))
    try:
        with caplog.at_level(logging.WARNING, logger="linewatch.sinks.store_retention"):
            assert hasty.sweep().normal == 0  # 12 days on: past the 7, not the 30
        assert "keeps its rows longer (keep_normal_days 30, keep_days 365)" in caplog.text
        assert _where_rows_are(store) == {day_name(DAY0.date()): 30, day_name(DAY0.date() + timedelta(days=1)): 30}
        with store.connect() as conn:
            recorded = conn.execute(select(RetentionPolicy.line, RetentionPolicy.keep_normal_days)).all()
        assert sorted(recorded) == [("line-7d", 7.0), ("line1", 30.0)]

        clock.advance(timedelta(days=21).total_seconds())  # 33 days on: past the 30
        assert hasty.sweep().normal == 2 * sum(1 for i in range(FRAMES_PER_DAY) if i % 5 and i % 7)
    finally:
        hasty_engine.dispose()

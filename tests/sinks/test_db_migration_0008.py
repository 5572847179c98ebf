"""Migration 0008 on a store with data (SQLite file and a real PostgreSQL): every row of a one-line store at
0007 is still there afterwards, filed under the line that ran the upgrade; the roll-ups count the deleted and
the stored frames; on PostgreSQL the rows sit in their days' partitions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import Engine, MetaData, insert, select, text

from linewatch.sinks.db import LineScope, make_engine, write_transaction
from linewatch.sinks.db_migrate import alembic_config, database_revision, head_revision, upgrade_database
from linewatch.sinks.db_schema import InspectionMinute
from linewatch.sinks.rollups import minute_counts

SCOPE = LineScope("plant-7", "press-2")
T0 = datetime(2026, 9, 1, 6, 0, tzinfo=UTC)
_TABLES = ("inspections", "events", "labels", "model_versions", "retrain_runs", "actions", "parts")


def _rows_at_0007(rng: random.Random) -> dict[str, list[dict[str, Any]]]:
    """What a line's store held at 0007: three days of frames, an episode, labels, versions, a run, an action,
    a part and the roll-ups of frames retention had already deleted."""
    inspections = []
    for n in range(300):
        defect = rng.random() < 0.1
        labelled = rng.choice([None, None, None, "normal", "defect"])
        inspections.append({
            "id": f"cam{n % 2 + 1}-boot-{n}", "camera": f"cam{n % 2 + 1}", "product": rng.choice(["a", "b"]),
            "seq": n, "frame_ts": T0 + timedelta(minutes=13 * n, microseconds=n), "score": round(rng.random(), 6),
            "threshold": 0.5, "verdict": "defect" if defect else "normal", "model_version": "v1", "part_id": None,
            "snapshot": "x.jpg" if defect else None, "heatmap": None, "label": labelled,
            "label_source": labelled and "web", "label_user": labelled and "ana",
            "labelled_at": labelled and T0, "trained_into": None, "journal_position": n,
        })  # fmt: skip
    return {
        "inspections": inspections,
        "events": [{
            "event_id": "e1", "camera": "cam1", "product": "a", "started_at": T0, "last_at": T0, "ended_at": None,
            "last_type": "new", "last_seq": 0, "peak_score": 0.9, "threshold": 0.5, "model_version": "v1",
            "first_inspection_id": "cam1-boot-0", "last_inspection_id": "cam1-boot-0", "snapshot": None,
            "heatmap": None, "label": None, "label_source": None, "label_user": None, "labelled_at": None,
            "end_reason": None,
        }],
        "labels": [{
            "label_id": "l1", "target": "inspection", "target_id": "cam1-boot-0", "camera": "cam1",
            "label": "normal", "source": "web", "username": "ana", "labelled_at": T0,
        }],
        "model_versions": [{
            "version": "v1", "artifact_path": "m/v1", "backbone": "tiny", "backbone_sha256": "0" * 64,
            "manifest_sha256": "1" * 64, "thresholds": {"a": 0.5}, "metrics": None, "status": "active",
            "reason": None, "created_at": T0, "activated_at": T0,
        }],
        "retrain_runs": [{
            "trigger": "cli", "started_at": T0, "finished_at": T0, "status": "accepted", "reason": None,
            "candidate_version": "v1", "metrics": None,
        }],
        "actions": [{"action_id": "a1", "kind": "rollback", "actor": "cli", "at": T0, "camera": None, "detail": "v1"}],
        "parts": [{
            "result_id": "r1", "station": "s1", "part_id": "P1", "verdict": "OK", "score": 0.2, "reason": "all",
            "at": T0, "model_version": "v1", "product": "a", "inspections": ["cam1-boot-0"],
        }],
        "inspection_minutes": [{
            "minute": T0 - timedelta(days=40), "camera": "cam1", "product": "a", "verdict": "normal",
            "model_version": "v0", "frames": 2400, "score_sum": 240.0, "score_max": 0.3, "threshold": 0.5,
            "labelled_normal": 3, "labelled_defect": 0,
        }],
    }  # fmt: skip


def _upgrade_to_0007(url: str) -> None:
    engine = make_engine(url)
    try:
        with write_transaction(engine) as conn:
            command.upgrade(alembic_config(conn), "0007")
    finally:
        engine.dispose()


def _insert_0007(engine: Engine, data: dict[str, list[dict[str, Any]]]) -> None:
    """Insert through 0007's own tables, reflected: the declarative classes describe 0008 already."""
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.begin() as conn:
        for name, rows in data.items():
            target = metadata.tables[name]
            # Reflected UTC columns are plain DateTime: bind SQLite's text form, PostgreSQL's aware value.
            if engine.dialect.name == "sqlite":
                rows = [{k: _sqlite_value(v) for k, v in row.items()} for row in rows]
            conn.execute(insert(target), rows)


def _sqlite_value(value: Any) -> Any:
    return value.astimezone(UTC).replace(tzinfo=None) if isinstance(value, datetime) else value


def _dump(engine: Engine, name: str) -> list[dict[str, Any]]:
    metadata = MetaData()
    metadata.reflect(engine, only=[name])
    target = metadata.tables[name]
    with engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(select(target)).mappings()]
    return sorted(rows, key=lambda row: str(row.get("id", "")) + str(row.get("event_id", "")))


def test_a_store_with_data_upgrades_without_losing_a_row(store_url: str, tmp_path: Path) -> None:
    _upgrade_to_0007(store_url)
    engine = make_engine(store_url, SCOPE)
    data = _rows_at_0007(random.Random(3))
    try:
        _insert_0007(engine, data)
        before = {name: _dump(engine, name) for name in _TABLES}

        upgrade_database(store_url, tmp_path / "backups", scope=SCOPE)

        assert database_revision(engine) == head_revision()
        for name in _TABLES:
            after = _dump(engine, name)
            assert [{k: v for k, v in row.items() if k not in ("site", "line")} for row in after] == before[name]
            assert {(row["site"], row["line"]) for row in after} == {("plant-7", "press-2")}, name
        with engine.connect() as conn:
            minutes = {
                (m.minute, m.camera, m.product, m.verdict, m.model_version): m
                for m in conn.execute(select(InspectionMinute.__table__))
            }
        old = minutes.pop((T0 - timedelta(days=40), "cam1", "a", "normal", "v0"))
        assert (old.site, old.line, old.frames, old.deleted, old.labelled_normal) == (
            "plant-7",
            "press-2",
            2400,
            2400,
            3,
        )
        stored = {
            (m["minute"], m["camera"], m["product"], m["verdict"], m["model_version"]): m
            for m in minute_counts({**row, **SCOPE.columns()} for row in data["inspections"])
        }
        assert set(minutes) == set(stored)
        for key, minute in minutes.items():
            expected = stored[key]
            assert (minute.frames, minute.deleted, minute.score_max) == (expected["frames"], 0, expected["score_max"])
            assert (minute.labelled_normal, minute.labelled_defect) == (
                expected["labelled_normal"], expected["labelled_defect"],
            )  # fmt: skip
            assert abs(minute.score_sum - expected["score_sum"]) < 1e-9
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                query = text("SELECT tableoid::regclass::text, count(*) FROM inspections GROUP BY 1")
                placed = {where: count for where, count in conn.execute(query)}
            days = {row["frame_ts"].date() for row in data["inspections"]}
            assert placed == {
                f"inspections_p{day:%Y%m%d}": sum(row["frame_ts"].date() == day for row in data["inspections"])
                for day in days
            }
    finally:
        engine.dispose()

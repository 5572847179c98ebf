"""deploy/grafana/linewatch-analytics.json runs on a real PostgreSQL store: every panel's SQL, with Grafana's
macros and the dashboard's variables filled in as Grafana would, against rows still stored and rows that
retention rolled up; and the provisioning files name what the dashboards use."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, text

from linewatch.clock import FakeClock
from linewatch.sinks.db import make_engine
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.db_schema import PartRecord
from linewatch.sinks.store_retention import StoreRetention, StoreRetentionPolicy
from tests.services.grafana import VARIABLE, dashboard, panel_queries, render
from tests.store_rows import insert_inspections, inspection_row

yaml = pytest.importorskip("yaml", reason="PyYAML (installed with huggingface_hub and timm) reads the provisioning")

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=40)  # rolled up by retention (keep_normal_days 30)
RECENT = NOW - timedelta(days=1)


@pytest.fixture
def store(postgres_url: str, tmp_path: Path) -> Iterator[Engine]:
    """Two cameras, two products, two model versions; the old day rolled up, the recent one still rows."""
    upgrade_database(postgres_url, tmp_path / "backups")
    engine = make_engine(postgres_url)
    rows = []
    for day, version in ((OLD, "v1"), (RECENT, "v2")):
        for index in range(40):
            camera = "cam1" if index < 30 else "cam2"
            defect = index % 10 == 0  # cam1: 3 defects, cam2: 1 per day
            label = "normal" if index == 0 else ("defect" if index == 10 else None)  # one false alarm, one confirmed
            rows.append(
                inspection_row(
                    f"{version}-{index}",
                    day.replace(hour=5, minute=30) + timedelta(minutes=index),  # 05:30 UTC onwards
                    index,
                    camera=camera,
                    product="plate" if index % 2 else "bolt",
                    verdict="defect" if defect else "normal",
                    score=0.9 if defect else 0.1,
                    model_version=version,
                    label=label,
                    labelled_at=day if label else None,
                    snapshot=None,
                )
            )
    insert_inspections(engine, rows)
    policy = StoreRetentionPolicy(timedelta(days=30), timedelta(days=30), timedelta(days=3650), 500, 0.0)
    result = StoreRetention(engine, FakeClock(NOW), policy).sweep()
    assert result.normal + result.old == 40  # the old day is only roll-ups now
    parts = [
        {"result_id": f"p{i}", "station": "s1", "part_id": f"P{i}", "verdict": "NOK" if i < 2 else "OK", "score": 0.5,
         "reason": "", "at": RECENT.replace(hour=9, minute=i), "model_version": "v2", "product": "plate",
         "inspections": []}
        for i in range(5)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(insert(PartRecord), parts)
    yield engine
    engine.dispose()


def run(engine: Engine, title: str, **variables: str) -> list[Any]:
    sql = render(panel_queries()[title], OLD - timedelta(days=1), NOW, **variables)
    with engine.connect() as conn:
        return list(conn.execute(text(sql)))


def test_every_panel_reads_the_store_with_its_variables_filled_in(store: Engine) -> None:
    for title in panel_queries():
        assert run(store, title), f"{title!r} returned nothing"
    defined = {v["name"] for v in dashboard()["templating"]["list"]}
    names = {a or b for sql in panel_queries().values() for a, b in VARIABLE.findall(sql)}
    used = {name for name in names if not name.startswith("__")}  # Grafana's own macros
    assert used <= defined, f"undefined variables {used - defined}"


def test_top_cameras_count_rolled_up_and_stored_defects(store: Engine) -> None:
    assert [(row.camera, row.defects, row.frames) for row in run(store, "Top cameras by defects")] == [
        ("cam1", 6, 60),
        ("cam2", 2, 20),
    ]


def test_labels_and_false_alarms_per_model_version(store: Engine) -> None:
    rows = {row[0]: row for row in run(store, "Labels and false alarms per model version")}
    for version in ("v1", "v2"):  # v1's day is roll-ups only, v2's still rows: the same answer
        _, frames, flagged, confirmed, false_alarms, missed, share = rows[version]
        assert (frames, flagged, confirmed, false_alarms, missed) == (40, 4, 1, 1, 0)
        assert float(share) == 50.0


def test_shifts_follow_the_first_shift_and_the_time_zone(store: Engine) -> None:
    """Frames run 05:30-06:09 UTC: 30 of them before 06:00 (shift 3 of 3 from 06:00), 10 after (shift 1)."""
    by_shift = {}
    for row in run(store, "Defect rate per product and shift"):
        by_shift[row.shift] = by_shift.get(row.shift, 0) + row.frames
    assert by_shift == {1: 20, 3: 60}
    berlin = {}  # 07:30-08:09 in Berlin (summer): shifts from 08:00 local
    for row in run(store, "Defect rate per product and shift", timezone="Europe/Berlin", first_shift="8"):
        berlin[row.shift] = berlin.get(row.shift, 0) + row.frames
    assert berlin == {1: 20, 3: 60}


def test_hourly_defect_rate_and_parts_per_hour(store: Engine) -> None:
    rows = run(store, "Defect rate per product (% of frames, hourly)")
    rates = {(row.time, row.metric): float(row.value) for row in rows}
    hour = RECENT.replace(hour=5, minute=0)
    # 05:30-05:59: indexes 0-29; bolt (even) has defects at 0, 10, 20 of its 15 frames that hour
    assert rates[(hour, "bolt")] == pytest.approx(100 * 3 / 15)
    parts = {(row.time, row.metric): row.value for row in run(store, "Parts per hour, by verdict")}
    assert parts == {(RECENT.replace(hour=9, minute=0), "NOK"): 2, (RECENT.replace(hour=9, minute=0), "OK"): 3}


def test_provisioning_names_the_dashboards_data_source_types() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "linewatch.yml").read_text())["datasources"]
    types = {source["type"] for source in sources}
    for path in (GRAFANA / "linewatch.json", GRAFANA / "linewatch-analytics.json"):
        variables = json.loads(path.read_text())["templating"]["list"]
        wanted = next(v["query"] for v in variables if v["type"] == "datasource")
        assert wanted in types, f"{path.name} picks a {wanted} data source; provisioning has {sorted(types)}"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "linewatch.yml").read_text())["providers"]
    assert [provider["type"] for provider in providers] == ["file"]
    uids = {json.loads(path.read_text())["uid"] for path in GRAFANA.glob("*.json")}
    assert uids == {"linewatch", "linewatch-analytics"}  # distinct: one folder holds both

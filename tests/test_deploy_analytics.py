"""deploy/grafana/linewatch-analytics.json runs on a real PostgreSQL store of two lines: every panel's SQL, with
Grafana's macros and the dashboard's variables filled in as Grafana would, over a day whose rows retention
deleted and a day still stored (the counts are the same either way); and the provisioning files name what
the dashboards use."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from linewatch.clock import FakeClock
from linewatch.pipeline.journal.records import JournalRecord, format_ts, part_payload
from linewatch.sinks.db import LineScope, make_engine
from linewatch.sinks.db_forwarder import DbForwarder
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.store_retention import StoreRetention, StoreRetentionPolicy
from linewatch.types import PartResult
from tests.services.grafana import VARIABLE, dashboard, panel_queries, render, sql_list
from tests.store_rows import insert_counted_inspections, inspection_row

yaml = pytest.importorskip("yaml", reason="PyYAML (installed with huggingface_hub and timm) reads the provisioning")

GRAFANA = Path(__file__).resolve().parent.parent / "deploy" / "grafana"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=40)  # rolled up by retention (keep_normal_days 30)
RECENT = NOW - timedelta(days=1)
LINE_A, LINE_B = LineScope("plant", "press-1"), LineScope("plant", "press-2")


@pytest.fixture
def store(postgres_url: str, tmp_path: Path) -> Iterator[Engine]:
    """Line A: two cameras, two products, two model versions; the old day's normal rows deleted, the recent
    one's all there. Line B: one camera of the same name, with frames of the recent day only."""
    upgrade_database(postgres_url, tmp_path / "backups", scope=LINE_A)
    engine = make_engine(postgres_url, LINE_A)
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
                    **LINE_A.columns(),
                )
            )
    other = [
        inspection_row(f"v2-{index}", RECENT.replace(hour=7, minute=index), index, score=0.9 if index < 5 else 0.1,
                       verdict="defect" if index < 5 else "normal", model_version="v2", **LINE_B.columns())
        for index in range(20)
    ]  # fmt: skip
    insert_counted_inspections(engine, rows + other)
    policy = StoreRetentionPolicy(timedelta(days=30), timedelta(days=60), timedelta(days=3650), 500, 0.0)
    result = StoreRetention(engine, FakeClock(NOW), policy).sweep()
    assert (result.normal, result.old) == (36, 0)  # the old day keeps only its 4 defect rows; counts keep all 40
    parts = [
        PartResult("s1", f"P{i}", "NOK" if i < 2 else "OK", 0.5, "why", RECENT.replace(hour=9, minute=i), "v2", "plate",
                   (), result_id=f"p{i}")
        for i in range(5)
    ]  # fmt: skip
    DbForwarder(engine).send(
        [JournalRecord(i, "part", p.result_id, "", part_payload(p), format_ts(p.at)) for i, p in enumerate(parts, 1)]
    )
    yield engine
    engine.dispose()


def run(engine: Engine, title: str, lines: tuple[LineScope, ...] = (LINE_A,), **variables: str) -> list[Any]:
    chosen = {"site": sql_list("plant"), "line": sql_list(*(scope.line for scope in lines)), **variables}
    sql = render(panel_queries()[title], OLD - timedelta(days=1), NOW, **chosen)
    with engine.connect() as conn:
        return list(conn.execute(text(sql)))


def test_every_panel_reads_the_store_with_its_variables_filled_in(store: Engine) -> None:
    for title in panel_queries():
        assert run(store, title), f"{title!r} returned nothing"
    for variable in (v for v in dashboard()["templating"]["list"] if v["type"] == "query"):
        with store.connect() as conn:  # as Grafana runs it when the dashboard opens, a day after the frames
            sql = variable["query"].replace("now()", f"'{RECENT.replace(hour=12).isoformat()}'::timestamptz")
            values = set(conn.scalars(text(sql.replace("$site", sql_list("plant")))))
        assert values == ({"plant"} if variable["name"] == "site" else {"press-1", "press-2"}), variable["name"]
    defined = {v["name"] for v in dashboard()["templating"]["list"]}
    names = {a or b for sql in panel_queries().values() for a, b in VARIABLE.findall(sql)}
    used = {name for name in names if not name.startswith("__")}  # Grafana's own macros
    assert used <= defined, f"undefined variables {used - defined}"


def test_top_cameras_count_deleted_and_stored_frames_alike_per_line(store: Engine) -> None:
    assert [(row.line, row.camera, row.defects, row.frames) for row in run(store, "Top cameras by defects")] == [
        ("press-1", "cam1", 6, 60),
        ("press-1", "cam2", 2, 20),
    ]
    both = run(store, "Top cameras by defects", lines=(LINE_A, LINE_B))
    assert [(row.line, row.camera, row.defects, row.frames) for row in both] == [
        ("press-1", "cam1", 6, 60),
        ("press-2", "cam1", 5, 20),  # the same camera name, another line: counted apart
        ("press-1", "cam2", 2, 20),
    ]


def test_labels_and_false_alarms_per_model_version(store: Engine) -> None:
    rows = {row[1]: row for row in run(store, "Labels and false alarms per model version")}
    for version in ("v1", "v2"):  # v1's day has no rows left, v2's has them all: the same answer
        _, _, frames, flagged, confirmed, false_alarms, missed, share = rows[version]
        assert (frames, flagged, confirmed, false_alarms, missed) == (40, 4, 1, 1, 0)
        assert float(share) == 50.0


def test_shifts_follow_the_first_shift_and_the_time_zone(store: Engine) -> None:
    """Frames run 05:30-06:09 UTC: 30 of them before 06:00 (shift 3 of 3 from 06:00), 10 after (shift 1)."""
    by_shift = {}
    for row in run(store, "Defect rate per line, product and shift"):
        by_shift[row.shift] = by_shift.get(row.shift, 0) + row.frames
    assert by_shift == {1: 20, 3: 60}
    berlin = {}  # 07:30-08:09 in Berlin (summer): shifts from 08:00 local
    for row in run(store, "Defect rate per line, product and shift", timezone="Europe/Berlin", first_shift="8"):
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

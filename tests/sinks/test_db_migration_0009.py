"""Migration 0009 on a store with part verdicts (SQLite file and a real PostgreSQL): ``part_hours`` counts every
stored part per line, hour, station and verdict, and the forwarder's later parts add to those counts."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from sqlalchemy import insert, select

from linewatch.pipeline.journal.records import JournalRecord, format_ts, part_payload
from linewatch.sinks.db import LineScope, make_engine, write_transaction
from linewatch.sinks.db_forwarder import DbForwarder
from linewatch.sinks.db_migrate import alembic_config, upgrade_database
from linewatch.sinks.db_schema import PartHour, PartRecord
from linewatch.types import PartResult

LINES = LineScope("plant", "press-1"), LineScope("plant", "press-2")
T0 = datetime(2026, 9, 1, 6, 0, tzinfo=UTC)


def test_part_hours_count_the_parts_already_stored_and_those_after(store_url: str, tmp_path: Path) -> None:
    if store_url.startswith("postgresql"):  # a server in India: the migration's hours must still be UTC hours
        store_url += "?options=-c%20TimeZone%3DAsia%2FKolkata"
    engine = make_engine(store_url, LINES[0])
    with write_transaction(engine) as conn:
        command.upgrade(alembic_config(conn, LINES[0]), "0008")
    rng = random.Random(5)
    stored = [
        {**rng.choice(LINES).columns(), "result_id": f"r{n}", "station": rng.choice(["s1", "s2"]), "part_id": f"P{n}",
         "verdict": rng.choice(["OK", "OK", "NOK", "incomplete"]), "score": 0.2, "reason": "",
         "at": T0 + timedelta(minutes=7 * n, microseconds=n), "model_version": "v1", "product": "a",
         "inspections": []}
        for n in range(60)
    ]  # fmt: skip
    with engine.begin() as conn:  # 0008's parts table is the one the classes describe
        conn.execute(insert(PartRecord), stored)
    try:
        upgrade_database(store_url, tmp_path / "backups", scope=LINES[0])
        later = PartResult("s1", "P-late", "NOK", 1.4, "cam2", T0 + timedelta(minutes=5), "v1", "a", (), "late")
        DbForwarder(engine).send([JournalRecord(1, "part", "late", "", part_payload(later), format_ts(later.at))])

        expected = Counter(
            (row["site"], row["line"], row["at"].replace(minute=0, second=0, microsecond=0), row["station"],
             row["verdict"])
            for row in stored
        )  # fmt: skip
        expected[(*LINES[0].columns().values(), T0, "s1", "NOK")] += 1
        with engine.connect() as conn:
            hours = {(h.site, h.line, h.hour, h.station, h.verdict): h.parts for h in conn.execute(select(PartHour))}
        assert hours == dict(expected)
        assert {key[1] for key in hours} == {"press-1", "press-2"} and max(hours.values()) > 1
    finally:
        engine.dispose()

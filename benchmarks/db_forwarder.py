"""Rows/s of the DB forwarder writing verdict records, on SQLite and on a throwaway PostgreSQL.

Each case gets a fresh, migrated database and sends the same journal records (built in memory, so the
journal's own cost is not in the numbers) in chunks, one transaction per chunk, as ForwarderRunner does;
then sends them all again (a replay after an outage: every row is an upsert conflict). Both stores are
durable as configured in production: SQLite WAL with synchronous=FULL, PostgreSQL with fsync on.

    python benchmarks/db_forwarder.py                         # 20k verdicts, chunks of 64 and 256, both stores
    python benchmarks/db_forwarder.py --rows 5000 --chunks 16 64 256 --no-postgres
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from linewatch.pipeline.journal.records import JournalRecord, format_ts, verdict_payload
from linewatch.sinks.db import make_engine
from linewatch.sinks.db_forwarder import DbForwarder
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.types import Verdict, VerdictLabel

if TYPE_CHECKING:
    from tests.services.postgres import PostgresServer

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def verdict_records(count: int, cameras: int = 4) -> list[JournalRecord]:
    records = []
    for position in range(1, count + 1):
        camera, seq = f"cam{position % cameras}", position // cameras + 1
        score = (position * 7919 % 1000) / 1000
        defect = score >= 0.97
        inspection_id = f"{camera}-boot1-{seq}"
        verdict = Verdict(
            inspection_id=inspection_id,
            camera=camera,
            product="metal plate",
            seq=seq,
            frame_ts=T0 + timedelta(milliseconds=50 * position),
            captured_mono=float(position),
            score=score,
            threshold=0.97,
            label=VerdictLabel.DEFECT if defect else VerdictLabel.NORMAL,
            model_version="v1",
            part_id=f"P-{seq}",
            snapshot=f"{camera}/2026-03-02/{inspection_id}.jpg" if defect or seq % 100 == 0 else None,
            heatmap=f"{camera}/2026-03-02/{inspection_id}-heatmap.jpg" if defect else None,
        )
        payload = verdict_payload(verdict)
        records.append(JournalRecord(position, "verdict", inspection_id, camera, payload, format_ts(T0)))
    return records


def send_all(forwarder: DbForwarder, records: Sequence[JournalRecord], chunk: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(records), chunk):
        forwarder.send(records[start : start + chunk])
    return time.perf_counter() - started


def measure(url: str, records: Sequence[JournalRecord], chunk: int, backups: Path) -> tuple[float, float]:
    upgrade_database(url, backups)
    engine = make_engine(url)
    try:
        forwarder = DbForwarder(engine)
        first = send_all(forwarder, records, chunk)
        replay = send_all(forwarder, records, chunk)
        assert forwarder.stats.inspections == 2 * len(records)
        return first, replay
    finally:
        engine.dispose()


@contextlib.contextmanager
def postgres() -> Iterator[PostgresServer]:
    """A durable throwaway server from the test fixture module (tests/ is not installed: add the repo root)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.services.postgres import PostgresServer

    with PostgresServer(durable=True) as server:
        yield server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args()
    records = verdict_records(args.rows)
    results: list[tuple[str, int, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="linewatch-bench-") as folder:
        for chunk in args.chunks:
            url = f"sqlite:///{Path(folder) / f'store-{chunk}.sqlite3'}"
            results.append(("sqlite", chunk, *measure(url, records, chunk, Path(folder))))
        if not args.no_postgres:
            with postgres() as server:
                for chunk in args.chunks:
                    url = server.create_database()
                    results.append(("postgresql", chunk, *measure(url, records, chunk, Path(folder))))
    print(f"{args.rows} verdict records, one transaction per chunk")
    print(f"{'store':<11} {'chunk':>5} {'insert s':>9} {'rows/s':>8} {'replay s':>9} {'rows/s':>8}")
    for store, chunk, first, replay in results:
        print(
            f"{store:<11} {chunk:>5} {first:>9.2f} {args.rows / first:>8.0f} {replay:>9.2f} {args.rows / replay:>8.0f}"
        )


if __name__ == "__main__":
    main()

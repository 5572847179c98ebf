"""Store retention row by row against a live forwarder: does deleting old rows hold up the writes of new verdicts?

Row by row is how retention deletes on SQLite (a line PC's store), and on PostgreSQL in its default partition
(frames outside every day's partition); PostgreSQL's days go whole, measured by benchmarks/store_load.py. A
fresh, migrated store (a temporary SQLite file, or a throwaway PostgreSQL with --postgres) gets
``--history-rows`` inspections older than keep_normal_days at a line's real density, and ``--young-rows``
spread over the last 29 days (bulk inserted: 2 % defects, 3 % frames with evidence, as a line with the
evidence sampler on). Then the daemon's DbForwarder writes one
line's verdicts (4 cameras x 10 fps by default: a chunk of 4 every 0.1 s) for ``--seconds`` alone, and
again while the daemon's StoreRetention deletes everything older than keep_normal_days (30) in batches of
``--batch-rows``. Per phase: the forwarder's chunk write time (p50, p99, max) and how late the writer fell
behind its schedule (a backlog that grows would show here); for retention: rows deleted per second, its
longest delete transaction, and that every deleted row is counted in ``inspection_minutes.deleted``. Last,
the bytes per row of both tables, what that makes per line per day before and after retention, and the History
page's reads.

    python benchmarks/store_retention.py                        # SQLite, 1M rows of history
    python benchmarks/store_retention.py --postgres --history-rows 2000000
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, func, insert, select, text

from linewatch.clock import SystemClock
from linewatch.pipeline.journal.records import JournalRecord, format_ts, verdict_payload
from linewatch.sinks.db import make_engine, scope_of
from linewatch.sinks.db_forwarder import DbForwarder
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.db_schema import Inspection, InspectionMinute
from linewatch.sinks.store_retention import StoreRetention, StoreRetentionPolicy
from linewatch.types import Verdict, VerdictLabel

REPO = Path(__file__).resolve().parent.parent
CAMERAS = 4
FRAMES_PER_DAY = CAMERAS * 10 * 86400  # the line: 4 cameras at 10 fps
POLICY = StoreRetentionPolicy(timedelta(days=30), timedelta(days=365), timedelta(days=3650), 500, 0.05)


@dataclass
class Writes:
    """The live forwarder's chunk times and how far behind schedule it fell."""

    seconds: list[float] = field(default_factory=list)
    worst_lag_s: float = 0.0

    def row(self, name: str) -> str:
        ms = sorted(1000 * s for s in self.seconds)
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
        return (
            f"{name:<26} {len(ms):>7} {statistics.median(ms):>8.1f} {p99:>8.1f} {ms[-1]:>8.1f} "
            f"{1000 * self.worst_lag_s:>9.0f}"
        )


def generate_history(engine: Engine, old_rows: int, young_rows: int, now: datetime, seed: int = 3) -> None:
    """``old_rows`` at a line's real density (40 frames/s) ending 31 days ago, so retention's batches look like
    a line's (a batch spans seconds, a few minute keys), and ``young_rows`` spread over the last 29 days that
    retention must leave alone."""
    generator = random.Random(seed)
    old_end = now - timedelta(days=31)
    frame_s = CAMERAS / FRAMES_PER_DAY * 86400 / CAMERAS  # one line's frames, all cameras together
    chunk: list[dict[str, object]] = []
    line = scope_of(engine).columns()  # the forwarder's and retention's line
    for index in range(old_rows + young_rows):
        if index < old_rows:
            frame_ts = old_end - timedelta(seconds=frame_s * (old_rows - index))
        else:
            frame_ts = now - timedelta(days=29 * (1 - (index - old_rows) / max(1, young_rows)))
        camera = f"cam{index % CAMERAS}"
        draw = generator.random()
        defect = draw < 0.02
        evidence = defect or draw > 0.97
        chunk.append(
            {
                **line,
                "id": f"hist-{index}",
                "camera": camera,
                "product": "metal plate",
                "seq": index,
                "frame_ts": frame_ts,
                "score": generator.uniform(0.5, 1.0) if defect else generator.uniform(0.0, 0.5),
                "threshold": 0.5,
                "verdict": "defect" if defect else "normal",
                "model_version": "v1",
                "part_id": None,
                "snapshot": f"{camera}/{index}.jpg" if evidence else None,
                "heatmap": f"{camera}/{index}-heatmap.jpg" if defect else None,
                "journal_position": index,
            }
        )
        if len(chunk) == 20_000:
            with engine.begin() as conn:
                conn.execute(insert(Inspection), chunk)
            chunk = []
    if chunk:
        with engine.begin() as conn:
            conn.execute(insert(Inspection), chunk)


def live_records(start: int, count: int, now: datetime) -> list[JournalRecord]:
    records = []
    for position in range(start, start + count):
        camera = f"cam{position % CAMERAS}"
        inspection_id = f"live-{position}"
        verdict = Verdict(
            inspection_id=inspection_id, camera=camera, product="metal plate", seq=position, frame_ts=now,
            captured_mono=float(position), score=0.2, threshold=0.5, label=VerdictLabel.NORMAL, model_version="v1",
        )  # fmt: skip
        payload = verdict_payload(verdict)
        records.append(JournalRecord(position, "verdict", inspection_id, camera, payload, format_ts(now)))
    return records


def write_live(forwarder: DbForwarder, stop: threading.Event, rate: float, first: int) -> tuple[Writes, int]:
    """Chunks of CAMERAS records on a fixed schedule (rate records/s) until ``stop``."""
    writes, period = Writes(), CAMERAS / rate
    position, started = first, time.monotonic()
    tick = 0
    while not stop.is_set():
        due = started + tick * period
        delay = due - time.monotonic()
        if delay > 0:
            stop.wait(delay)
        writes.worst_lag_s = max(writes.worst_lag_s, time.monotonic() - due)
        records = live_records(position, CAMERAS, datetime.now(UTC))
        began = time.monotonic()
        if forwarder.send(records) != len(records):
            raise RuntimeError("the forwarder took a partial chunk")
        writes.seconds.append(time.monotonic() - began)
        position += CAMERAS
        tick += 1
    return writes, position


def count(engine: Engine, table: type) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table)) or 0)


def deleted_counted(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.coalesce(func.sum(InspectionMinute.deleted), 0))) or 0)


def table_bytes(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            return int(conn.scalar(text(f"SELECT pg_total_relation_size('{table}')")) or 0)
        # dbstat: the pages of the table and of its indexes
        query = text(
            "SELECT SUM(pgsize) FROM dbstat WHERE name IN (SELECT name FROM sqlite_master WHERE tbl_name = :t)"
        )
        return int(conn.scalar(query, {"t": table}) or 0)


@contextlib.contextmanager
def store(args: argparse.Namespace, folder: Path) -> Iterator[str]:
    if not args.postgres:
        yield f"sqlite:///{folder / 'linewatch.sqlite3'}"
        return
    sys.path.insert(0, str(REPO))
    from tests.services.postgres import PostgresServer

    server = PostgresServer()
    try:
        server.start()
        yield server.create_database()
    finally:
        server.cleanup()


def run(args: argparse.Namespace, url: str, folder: Path) -> None:
    upgrade_database(url, folder / "backups")
    engine = make_engine(url)
    now = datetime.now(UTC)
    started = time.monotonic()
    generate_history(engine, args.history_rows, args.young_rows, now)
    hours = args.history_rows / (FRAMES_PER_DAY / 24)
    print(f"{engine.dialect.name}: {args.history_rows:,} rows older than 30 days ({hours:.1f} h of a line at "
          f"{FRAMES_PER_DAY / 86400:.0f} frames/s) and {args.young_rows:,} younger, generated in "
          f"{time.monotonic() - started:.0f} s (bulk insert)")  # fmt: skip
    if engine.dialect.name == "postgresql":  # what autovacuum does to a store that grew: fresh planner statistics
        with engine.begin() as conn:
            conn.execute(text("ANALYZE inspections"))
    before_rows = count(engine, Inspection)
    row_bytes = table_bytes(engine, "inspections") / before_rows
    forwarder = DbForwarder(engine)
    print(f"\n{'phase':<26} {'chunks':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'worst lag':>9}")
    stop = threading.Event()
    timer = threading.Timer(args.seconds, stop.set)
    timer.start()
    alone, position = write_live(forwarder, stop, args.rate, 0)
    print(alone.row("forwarder alone"))

    policy = StoreRetentionPolicy(
        POLICY.keep_normal, POLICY.keep, POLICY.keep_rollups, args.batch_rows, args.pause_ms / 1000
    )
    retention = StoreRetention(engine, SystemClock(), policy)
    stop = threading.Event()
    swept: dict[str, float] = {}

    def sweep() -> None:
        began = time.monotonic()
        result = retention.sweep(stop)
        swept.update(seconds=time.monotonic() - began, normal=result.normal, old=result.old)

    sweeper = threading.Thread(target=sweep, name="store-retention")
    sweeper.start()
    timer = threading.Timer(args.seconds, stop.set)
    timer.start()
    during, _ = write_live(forwarder, stop, args.rate, position)
    sweeper.join()
    print(during.row(f"with retention ({args.batch_rows} rows)"))

    deleted = retention.stats.deleted["normal"] + retention.stats.deleted["old"]
    print(f"\nretention: deleted {deleted:,} rows in {swept['seconds']:.1f} s ({deleted / swept['seconds']:,.0f} rows/s"
          f"{', stopped at the end of the phase' if stop.is_set() and deleted < args.history_rows * 0.9 else ''}); "
          f"longest delete transaction {1000 * retention.stats.longest_batch_s:.0f} ms")  # fmt: skip
    counted, minutes = deleted_counted(engine), count(engine, InspectionMinute)
    print(f"minutes: {minutes:,} rows count {counted:,} frames deleted; deleted {deleted:,}: "
          f"{'all counted' if counted == deleted else 'MISMATCH'}")  # fmt: skip
    minute_bytes = table_bytes(engine, "inspection_minutes") / max(1, minutes)
    kept_share = 0.05  # defects and frames with evidence, kept keep_days
    minute_rows = CAMERAS * 1440 * 2  # a normal and a defect key per camera and minute, at most
    print(f"\nbytes per row (table and indexes): inspections {row_bytes:.0f}, inspection_minutes {minute_bytes:.0f}")
    day_before = FRAMES_PER_DAY * row_bytes
    day_after = FRAMES_PER_DAY * kept_share * row_bytes + minute_rows * minute_bytes
    print(
        f"per line per day ({FRAMES_PER_DAY:,} frames): {day_before / 2**30:.2f} GiB as rows; after retention "
        f"{day_after / 2**20:.0f} MiB ({kept_share:.0%} kept as rows for keep_days, {minute_rows:,} minute rows)"
    )
    time_queries(engine, now)
    engine.dispose()


def time_queries(engine: Engine, now: datetime, repeats: int = 7) -> None:
    """Milliseconds (median and max of ``repeats``) of the History page's reads on the store as retention left
    it (the analytics dashboard's: benchmarks/store_load.py)."""
    from linewatch.web.queries import history_page, score_series
    from linewatch.web.rows import HistoryFilter

    def timed(run: Callable[[], object]) -> str:
        seconds = []
        for _ in range(repeats):
            began = time.monotonic()
            run()
            seconds.append(time.monotonic() - began)
        return f"{1000 * statistics.median(seconds):7.1f} {1000 * max(seconds):7.1f}"

    print(f"\n{'query (ms)':<58} {'median':>7} {'max':>7}")
    everything, week = HistoryFilter(), HistoryFilter(camera="cam1", since=now - timedelta(days=7))
    print(f"{'History: first page, no filter':<58} {timed(lambda: history_page(engine, everything))}")
    print(f"{'History: plot, 2000 newest points, no filter':<58} {timed(lambda: score_series(engine, everything))}")
    print(f"{'History: plot, camera cam1, last 7 days':<58} {timed(lambda: score_series(engine, week))}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history-rows", type=int, default=1_000_000)
    parser.add_argument("--young-rows", type=int, default=200_000, help="rows of the last 29 days (stay)")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase")
    parser.add_argument("--rate", type=float, default=40.0, help="live verdicts per second (4 cameras x 10 fps)")
    parser.add_argument("--batch-rows", type=int, default=POLICY.batch_rows)
    parser.add_argument("--pause-ms", type=float, default=POLICY.pause_s * 1000)
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL instead of SQLite")
    args = parser.parse_args()
    if args.history_rows < 1000 or args.young_rows < 0:
        parser.error("--history-rows must be at least 1000 and --young-rows not negative")
    with tempfile.TemporaryDirectory(prefix="linewatch-retention-bench-") as folder, store(args, Path(folder)) as url:
        run(args, url, Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())

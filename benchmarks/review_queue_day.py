"""The review page (its page and its count) over a whole day of a busy line on PostgreSQL, with the review index
as migration 0008 left it (time only: every walked frame's row is fetched) and as 0009 builds it (the columns
the close-call test reads: the index alone), and with JIT compilation on and off (linewatch's sessions run
with it off, linewatch.sinks.db).

A throwaway PostgreSQL (shared_buffers at its default 128 MB, so a day's rows are not all in its cache, as on a
plant's store holding weeks of many lines) gets ``--lines`` lines of 24 hours each at full rate (4 cameras x
10 fps: 3.5 M rows a line), generated like benchmarks/store_load.py's history (2 % defects and 1 % normals
with evidence, scattered), then VACUUM ANALYZE (what autovacuum does after such a load). Each variant runs the
page ``--repeat`` times after one warm-up; best and median.

    python benchmarks/review_queue_day.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.store_load import _GENERATE, CAMERAS, FPS, SITE, line_name  # noqa: E402
from linewatch.sinks.db import LineScope, make_engine  # noqa: E402
from linewatch.sinks.db_migrate import upgrade_database  # noqa: E402
from linewatch.sinks.db_schema import REVIEW_INDEX_COLUMNS, REVIEWABLE  # noqa: E402
from linewatch.sinks.store_partitions import InspectionPartitions  # noqa: E402
from linewatch.web.queries import review_page  # noqa: E402

INDEX = "ix_inspections_site_frame_ts_unlabelled_snapshot"
WINDOW = timedelta(hours=24)  # [web] review_hours' default
BAND = 0.1  # [evidence] close_call_band's default


def rebuild_index(engine: Engine, columns: tuple[str, ...]) -> None:
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text(f"DROP INDEX {INDEX}"))
        conn.execute(text(f"CREATE INDEX {INDEX} ON inspections ({', '.join(columns)}) WHERE {REVIEWABLE}"))
        conn.execute(text("VACUUM ANALYZE inspections"))


def _jit_on(dbapi_connection: Any, _record: object) -> None:
    """PostgreSQL's default, which linewatch's sessions switch off."""
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET jit = on")
    dbapi_connection.commit()


def timed(engine: Engine, now: datetime, repeat: int) -> tuple[float, float, int]:
    """Best and median ms of the review page, and the queue's size."""
    size = review_page(engine, now, WINDOW, BAND)[1]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        review_page(engine, now, WINDOW, BAND)
        times.append(1000 * (time.perf_counter() - started))
    return min(times), statistics.median(times), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    from tests.services.postgres import PostgresServer

    server = PostgresServer(durable=False)
    try:
        server.start()
        url = server.create_database()
        scope = LineScope(SITE, line_name(0))
        upgrade_database(url, Path("/tmp"), scope=scope)
        now = datetime.now(UTC).replace(microsecond=0)
        without_jit = make_engine(url, scope)
        with_jit = make_engine(url, scope)
        event.listen(with_jit, "connect", _jit_on)
        InspectionPartitions(without_jit).maintain(now - WINDOW, timedelta(days=36500), timedelta(days=36500))
        started = time.monotonic()
        frames = int(WINDOW.total_seconds() * FPS)
        with without_jit.begin() as conn:
            for index in range(args.lines):
                conn.execute(
                    text(_GENERATE),
                    {"tag": "d", "start": now - WINDOW, "spacing": 1 / FPS, "frames": frames, "cameras": CAMERAS,
                     "site": SITE, "line": line_name(index)},
                )  # fmt: skip
        rows = args.lines * frames * CAMERAS
        print(f"{args.lines} lines x 24 h: {rows:,} rows in {time.monotonic() - started:.0f} s")
        print(f"{'review index':<40} {'JIT':<4} {'best ms':>8} {'median ms':>10} {'queue':>7}")
        for label, columns in (("0008: site, line, frame_ts", ("site", "line", "frame_ts")),
                               ("0009: + id, score, threshold, ...", REVIEW_INDEX_COLUMNS)):  # fmt: skip
            rebuild_index(without_jit, columns)
            for jit, engine in (("on", with_jit), ("off", without_jit)):
                best, median, size = timed(engine, now, args.repeat)
                print(f"{label:<40} {jit:<4} {best:>8.1f} {median:>10.1f} {size:>7}")
        with_jit.dispose()
        without_jit.dispose()
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

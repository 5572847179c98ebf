"""Time of the operator page's queries (linewatch.web.queries) on a big store: 1,000,000 inspections.

A fresh, migrated SQLite file (or, with ``--postgres``, a throwaway PostgreSQL database) is filled with a
seeded line: 4 cameras, scores around 0.2 against a 0.5 threshold, a burst of defect frames (one episode,
in the events table) every ~5000 frames per camera, snapshots on defects and every 100th normal frame as
the evidence sampler keeps them, 0.1% of frames labelled. So close calls with a snapshot are rare and the
review queue reads its whole window: its worst case. ``now`` is the last frame; the rows span
``--span-hours``. Each query runs ``--repeat`` times after one warm-up run; the best and median are shown,
with the query plan of each (EXPLAIN QUERY PLAN on SQLite, EXPLAIN on PostgreSQL).

``--without-review-index`` drops the review queue's partial index (migration 0002) after upgrading: the
store as 0001 left it, to compare plans and times in one tree. ``--inserts N`` then times the DB forwarder
writing N more verdicts of the same line in its runner's chunks (64 journal records, one transaction each),
which is what that index costs on the write side.

    python benchmarks/web_queries.py                      # 1M rows over 72 h, SQLite
    python benchmarks/web_queries.py --rows 200000 --span-hours 24 --postgres
    python benchmarks/web_queries.py --inserts 100000 --without-review-index
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, event, insert, text

from linewatch.pipeline.journal.records import JournalRecord, verdict_payload
from linewatch.sinks.db import make_engine, scope_of
from linewatch.sinks.db_forwarder import DbForwarder
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.db_schema import DefectEvent, Inspection
from linewatch.types import Verdict, VerdictLabel
from linewatch.web.queries import history_page, review_page, review_queue, score_series
from linewatch.web.rows import HistoryFilter

if TYPE_CHECKING:
    from tests.services.postgres import PostgresServer

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
CAMERAS = 4
THRESHOLD = 0.5
BURST_EVERY = 5000  # frames of one camera between defect bursts
INSERT_CHUNK = 20_000
FORWARDER_CHUNK = 64  # ForwarderRunner's default batch
REVIEW_INDEX = "ix_inspections_site_frame_ts_unlabelled_snapshot"


def fill(engine: Engine, rows: int, span: timedelta, seed: int) -> datetime:
    """Insert the seeded line; returns the newest frame time."""
    rng = random.Random(seed)
    step = span / rows
    inspections: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    burst: dict[str, dict[str, Any]] = {}  # camera -> its episode being built
    last = T0
    line = scope_of(engine).columns()  # the rows of the line the queries read
    with engine.begin() as conn:
        for position in range(rows):
            camera, seq = f"cam{position % CAMERAS}", position // CAMERAS
            last = T0 + step * position
            inspection_id = f"{camera}-boot1-{seq}"
            in_burst = seq >= BURST_EVERY and seq % BURST_EVERY < 3 + seq // BURST_EVERY % 8  # 3 to 10 frames
            score = rng.uniform(0.6, 0.9) if in_burst else abs(rng.gauss(0.2, 0.08))
            defect = score >= THRESHOLD
            labelled = rng.random() < 0.001
            inspections.append(
                {
                    **line,
                    "id": inspection_id,
                    "camera": camera,
                    "product": "metal plate" if position % 8 < 6 else "screw",
                    "seq": seq,
                    "frame_ts": last,
                    "score": score,
                    "threshold": THRESHOLD,
                    "verdict": "defect" if defect else "normal",
                    "model_version": "v1",
                    "part_id": f"P-{seq}",
                    "snapshot": f"{camera}/{inspection_id}.jpg" if defect or seq % 100 == 0 else None,
                    "heatmap": f"{camera}/{inspection_id}-heatmap.jpg" if defect else None,
                    "label": ("defect" if defect else "normal") if labelled else None,
                    "label_source": "web" if labelled else None,
                    "label_user": "ana" if labelled else None,
                    "labelled_at": last + timedelta(minutes=5) if labelled else None,
                    "trained_into": None,
                    "journal_position": position,
                }
            )
            episode = burst.get(camera)
            if in_burst:
                if episode is None:
                    burst[camera] = episode = _episode(line, camera, inspection_id, last, score)
                peak = max(score, episode["peak_score"])
                episode.update(last_at=last, last_inspection_id=inspection_id, peak_score=peak)
            elif episode is not None:
                episode.update(ended_at=last, last_type="end")
                events.append(burst.pop(camera))
            if len(inspections) == INSERT_CHUNK:
                conn.execute(insert(Inspection), inspections)
                inspections = []
        if inspections:
            conn.execute(insert(Inspection), inspections)
        events += burst.values()  # bursts still going at the end: open episodes
        if events:
            conn.execute(insert(DefectEvent), events)
    if engine.dialect.name == "postgresql":  # autovacuum would, a while after such a load: the statistics, and
        with engine.connect() as conn:  # the visibility map an index-only scan reads
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    return last


def _episode(line: dict[str, str], camera: str, inspection_id: str, at: datetime, score: float) -> dict[str, Any]:
    return {
        **line,
        "event_id": f"ev-{inspection_id}",
        "camera": camera,
        "product": "metal plate",
        "started_at": at,
        "last_at": at,
        "ended_at": None,
        "last_type": "new",
        "last_seq": 1,
        "peak_score": score,
        "threshold": THRESHOLD,
        "model_version": "v1",
        "first_inspection_id": inspection_id,
        "last_inspection_id": inspection_id,
        "snapshot": f"{camera}/{inspection_id}.jpg",
        "heatmap": None,
        "label": None,
        "label_source": None,
        "label_user": None,
        "labelled_at": None,
    }


def forward(engine: Engine, count: int, after: datetime, step: timedelta, first_position: int, seed: int) -> float:
    """Seconds the DB forwarder takes to write ``count`` more verdicts of the line (normal scores, a snapshot
    on every 100th frame of a camera, frames ``step`` apart after ``after``), sent in runner-sized chunks."""
    rng = random.Random(seed)
    records = []
    for number in range(count):
        camera, seq = f"cam{number % CAMERAS}", number // CAMERAS
        score = abs(rng.gauss(0.2, 0.08))
        verdict = Verdict(
            inspection_id=f"{camera}-boot2-{seq}",
            camera=camera,
            product="metal plate",
            seq=seq,
            frame_ts=after + step * (number + 1),
            captured_mono=float(number),
            score=score,
            threshold=THRESHOLD,
            label=VerdictLabel.DEFECT if score >= THRESHOLD else VerdictLabel.NORMAL,
            model_version="v1",
            part_id=f"P2-{seq}",
            snapshot=f"{camera}/{camera}-boot2-{seq}.jpg" if seq % 100 == 0 else None,
        )
        position = first_position + number
        records.append(JournalRecord(position, "verdict", verdict.inspection_id, camera, verdict_payload(verdict), ""))
    forwarder = DbForwarder(engine)
    started = time.perf_counter()
    for start in range(0, count, FORWARDER_CHUNK):
        forwarder.send(records[start : start + FORWARDER_CHUNK])
    return time.perf_counter() - started


def measure(engine: Engine, call: Callable[[], object], repeat: int) -> tuple[float, float, list[str]]:
    """Best and median seconds of ``call``, and the plans of the statements it ran (from its warm-up run)."""
    statements: list[tuple[str, Any]] = []

    def capture(_conn: object, _cursor: object, statement: str, parameters: Any, *_rest: object) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    plans = [line for statement, parameters in statements for line in plan(engine, statement, parameters)]
    return min(times), statistics.median(times), plans


def plan(engine: Engine, statement: str, parameters: Any) -> list[str]:
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(explain + statement, parameters).all()
    return [" ".join(str(part) for part in row[-1:]) for row in rows]


@contextlib.contextmanager
def postgres() -> Iterator[PostgresServer]:
    """A throwaway server from the test fixture module (tests/ is not installed: add the repo root)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.services.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


def run(url: str, args: argparse.Namespace, backups: Path) -> None:
    upgrade_database(url, backups)
    engine = make_engine(url)
    try:
        if args.without_review_index:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"DROP INDEX {REVIEW_INDEX}")
        started = time.perf_counter()
        span = timedelta(hours=args.span_hours)
        now = fill(engine, args.rows, span, args.seed)
        filled = time.perf_counter() - started
        store = f"{engine.dialect.name}{' without the review index' if args.without_review_index else ''}"
        print(f"{store}: {args.rows} inspections over {args.span_hours} h, filled in {filled:.0f} s")
        first_page = history_page(engine, HistoryFilter())[1]
        cases: dict[str, Callable[[], object]] = {
            "review_queue 24 h, band 0.1": lambda: review_queue(engine, now, timedelta(hours=24), 0.1),
            "review_page 24 h, with its count": lambda: review_page(engine, now, timedelta(hours=24), 0.1),
            "history_page first": lambda: history_page(engine, HistoryFilter()),
            "history_page second (keyset)": lambda: history_page(engine, HistoryFilter(), before=first_page),
            "history_page cam2 + defect": lambda: history_page(engine, HistoryFilter(camera="cam2", verdict="defect")),
            "history_page screw, last 6 h": lambda: history_page(
                engine, HistoryFilter(product="screw", since=now - timedelta(hours=6))
            ),
            "history_page unlabelled": lambda: history_page(engine, HistoryFilter(label="unlabelled")),
            "history_page labelled normal": lambda: history_page(engine, HistoryFilter(label="normal")),
            "score_series 2000": lambda: score_series(engine, HistoryFilter()),
            "score_series cam1 2000": lambda: score_series(engine, HistoryFilter(camera="cam1")),
        }
        print(f"{'query':<32} {'best ms':>8} {'median ms':>10}")
        for name, call in cases.items():
            best, median, plans = measure(engine, call, args.repeat)
            print(f"{name:<32} {best * 1000:>8.1f} {median * 1000:>10.1f}")
            if args.plans:
                for line in plans:
                    print(f"    {line}")
        if args.inserts:
            took = forward(engine, args.inserts, now, span / args.rows, args.rows, args.seed + 1)
            print(f"DbForwarder: {args.inserts} verdicts in chunks of {FORWARDER_CHUNK} in {took:.1f} s", end="")
            print(f" ({args.inserts / took:,.0f} rows/s)")
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--span-hours", type=float, default=72.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--plans", action="store_true", help="print each query's plan")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL instead of SQLite")
    parser.add_argument("--without-review-index", action="store_true", help="drop the review queue's index first")
    parser.add_argument("--inserts", type=int, default=0, help="then time the DB forwarder writing this many more")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="linewatch-bench-") as folder:
        if args.postgres:
            with postgres() as server:
                run(server.create_database(), args, Path(folder))
        else:
            run(f"sqlite:///{Path(folder) / 'store.sqlite3'}", args, Path(folder))


if __name__ == "__main__":
    main()

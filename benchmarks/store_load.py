"""One PostgreSQL for a plant: many lines' forwarders and retentions writing one store, while the page's and
the analytics dashboard's queries run against a history of more than ten million rows.

1. A throwaway PostgreSQL (durable: fsync on; ``--url`` for another), migrated; shared_buffers 2 GB.
2. History generated in bulk, server-side: ``--recent-hours`` of every line at full rate (4 cameras x 10 fps:
   3.5 h of 20 lines is 10 M rows), ``--old-days`` days just past keep_normal_days at ``--old-rows-per-day``
   (retention compacts them during the run), per-minute counts for the rows and for the 30 days before,
   and per-hour counts of frames and of parts (a part a second) for a whole year, as the daemons would have
   left them. Then ANALYZE.
3. ``--idle-seconds`` of the queries alone (below), on the store at rest.
4. For ``--seconds``, ``--lines`` lines, each as its daemon would: the real DbForwarder writes the line's
   verdicts (4 every 0.1 s; after a slow write, what is due in one chunk of at most 64 records, as the
   journal's forwarder runner sends a backlog), a station's part verdict every second and a label every 20 s,
   and the real StoreRetention runs every
   ``--retention-interval`` s (the lines' retentions take turns on the partitions, as in a plant). The lines
   run in ``--processes`` processes, as separate daemons would; on this machine they share its cores with
   PostgreSQL, which in a plant runs on a server of its own.
5. Meanwhile one client runs the page's queries for a random line and camera, and every dashboard panel over
   all lines for 24 h and 7 days, in turn, timing each, then pauses ``--query-pause`` s.

Prints: rows/s held per line and in all; the forwarders' chunk write times and how far behind schedule the
lines fell (the journal's backlog, in time: one that grows shows here); the CPU the simulated daemons took;
what retention did to the partitions and how long each change took; each query's p50/p99 at rest and under
load; that every row and part verdict written is in the store and counted in its minute or hour; bytes per
row of the tables, and
what they make per line per day before and after retention.

    python benchmarks/store_load.py                              # 20 lines, 10 minutes, 10 M rows
    python benchmarks/store_load.py --lines 4 --seconds 60 --recent-hours 0.5   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from linewatch.clock import SystemClock  # noqa: E402 (after the path: tests.services is imported below)
from linewatch.pipeline.journal.records import (  # noqa: E402
    JournalRecord,
    format_ts,
    label_payload,
    part_payload,
    verdict_payload,
)
from linewatch.sinks.db import DatabaseError, LineScope, make_engine  # noqa: E402
from linewatch.sinks.db_forwarder import DbForwarder  # noqa: E402
from linewatch.sinks.db_migrate import upgrade_database  # noqa: E402
from linewatch.sinks.db_schema import Inspection, InspectionMinute, PartHour, PartRecord  # noqa: E402
from linewatch.sinks.store_partitions import InspectionPartitions  # noqa: E402
from linewatch.sinks.store_retention import StoreRetention, StoreRetentionPolicy  # noqa: E402
from linewatch.types import Label, LabelTarget, PartResult, Verdict, VerdictLabel  # noqa: E402
from linewatch.web.queries import history_page, review_page, score_series  # noqa: E402
from linewatch.web.rows import HistoryFilter  # noqa: E402
from tests.services.grafana import panel_queries, render, sql_list  # noqa: E402

SITE = "plant"
CAMERAS = 4
FPS = 10
CHUNK_PERIOD_S = 0.1  # a batch of the line's 4 cameras every 0.1 s: 4 x 10 inspections/s
MAX_CHUNK = 64  # records per chunk at most: [journal] forwarder_batch's default
LABEL_EVERY_S = 20.0
PART_EVERY_TICKS = 10  # a part a second per line, judged by one station from the 4 cameras' frames
POLICY = dict(keep_normal_days=30, keep_days=365, keep_rollup_days=3650, batch_rows=500, pause_s=0.05)
PG_SETTINGS = {"shared_buffers": "2GB", "max_wal_size": "8GB", "checkpoint_timeout": "15min", "work_mem": "32MB"}


def line_name(index: int) -> str:
    return f"line{index:02d}"


# --- the history, generated server-side --------------------------------------------------------------------

# One line's frames between two times at a given spacing, as its forwarder would have stored them: 2 % defects
# with evidence, 1 % of the normals with evidence ([evidence] every_nth_normal's default, 100), one frame in a
# thousand labelled.
_GENERATE = """
INSERT INTO inspections (id, camera, product, seq, frame_ts, score, threshold, verdict, model_version, part_id,
                         snapshot, heatmap, label, label_source, label_user, labelled_at, trained_into,
                         journal_position, site, line)
SELECT 'h' || :tag || '-' || c || '-' || s, 'cam' || c, 'plate', s,
       :start + s * make_interval(secs => :spacing), CASE WHEN d < 0.02 THEN 0.5 + r / 2 ELSE r / 2 END, 0.5,
       CASE WHEN d < 0.02 THEN 'defect' ELSE 'normal' END, 'v1', NULL,
       CASE WHEN d < 0.03 THEN 'cam' || c || '/h' || s || '.jpg' END,
       CASE WHEN d < 0.02 THEN 'cam' || c || '/h' || s || '-heatmap.jpg' END,
       CASE WHEN d > 0.999 THEN 'normal' END, CASE WHEN d > 0.999 THEN 'web' END, NULL,
       CASE WHEN d > 0.999 THEN :start END, NULL, s, :site, :line
FROM generate_series(0, :cameras - 1) c, generate_series(0, :frames - 1) s,
     LATERAL (SELECT random() AS d, random() AS r, s AS drawn_for) draw  -- s: drawn afresh for every row
"""
_MINUTES_FROM_ROWS = """
INSERT INTO inspection_minutes (site, line, minute, camera, product, verdict, model_version, frames, score_sum,
                                score_max, threshold, labelled_normal, labelled_defect, deleted)
SELECT site, line, date_trunc('minute', frame_ts), camera, product, verdict, model_version, count(*), sum(score),
       max(score), max(threshold), count(*) FILTER (WHERE label = 'normal'),
       count(*) FILTER (WHERE label = 'defect'), 0
FROM inspections GROUP BY 1, 2, 3, 4, 5, 6, 7
"""
# Counts for every minute of the 30 days before the history's rows, for every line: 98 % normal minutes,
# a defect minute in 50.
_OLDER_MINUTES = """
INSERT INTO inspection_minutes (site, line, minute, camera, product, verdict, model_version, frames, score_sum,
                                score_max, threshold, labelled_normal, labelled_defect, deleted)
SELECT :site, 'line' || lpad(l::text, 2, '0'), m, 'cam' || c, 'plate', v, 'v1',
       CASE WHEN v = 'normal' THEN 588 ELSE 12 END, 100, 0.9, 0.5, 0, 0, 0
FROM generate_series(0, :lines - 1) l, generate_series(0, :cameras - 1) c,
     generate_series(:since, :until - interval '1 minute', interval '1 minute') m,
     (VALUES ('normal'), ('defect')) verdicts (v)
"""
_HOURS_FROM_MINUTES = """
INSERT INTO inspection_hours (site, line, hour, camera, product, verdict, model_version, frames, score_sum,
                              score_max, threshold, labelled_normal, labelled_defect)
SELECT site, line, date_trunc('hour', minute), camera, product, verdict, model_version, sum(frames),
       sum(score_sum), max(score_max), max(threshold), sum(labelled_normal), sum(labelled_defect)
FROM inspection_minutes GROUP BY 1, 2, 3, 4, 5, 6, 7
"""
# A year of part verdicts per hour for every line: a station judging a part a second (3600 an hour: 3500 OK, 90 NOK,
# 10 incomplete), as the forwarders would have counted them.
_PART_HOURS = """
INSERT INTO part_hours (site, line, hour, station, verdict, parts)
SELECT :site, 'line' || lpad(l::text, 2, '0'), h, 'st1', v, n
FROM generate_series(0, :lines - 1) l, generate_series(:since, :until - interval '1 hour', interval '1 hour') h,
     (VALUES ('OK', 3500), ('NOK', 90), ('incomplete', 10)) verdicts (v, n)
"""
# Hourly counts for the rest of a year before the minutes (kept keep_rollup_days: the dashboards' long ranges).
_OLDER_HOURS = """
INSERT INTO inspection_hours (site, line, hour, camera, product, verdict, model_version, frames, score_sum,
                              score_max, threshold, labelled_normal, labelled_defect)
SELECT :site, 'line' || lpad(l::text, 2, '0'), h, 'cam' || c, 'plate', v, 'v1',
       CASE WHEN v = 'normal' THEN 35280 ELSE 720 END, 6000, 0.9, 0.5, 0, 0
FROM generate_series(0, :lines - 1) l, generate_series(0, :cameras - 1) c,
     generate_series(:since, :until - interval '1 hour', interval '1 hour') h,
     (VALUES ('normal'), ('defect')) verdicts (v)
"""


def generate(engine: Engine, args: argparse.Namespace, now: datetime) -> int:
    """The history; returns the number of inspection rows."""
    recent_start = now - timedelta(hours=args.recent_hours)
    frames = int(args.recent_hours * 3600 * FPS)
    partitions = InspectionPartitions(engine)
    old_days = [now - timedelta(days=31 + day) for day in range(args.old_days)]
    for day in old_days:  # their days' partitions (the migration made today's and the week ahead)
        partitions.maintain(day, timedelta(days=36500), timedelta(days=36500))
    for back in range(args.past_partitions, 0, -8):  # as many days as a store keeps (empty: planning cost only)
        partitions.maintain(now - timedelta(days=back), timedelta(days=36500), timedelta(days=36500))
    old_frames = args.old_rows_per_day // (args.lines * CAMERAS)
    for index in range(args.lines):
        started = time.monotonic()
        with engine.begin() as conn:
            batches = [(f"r{index}", recent_start, 1 / FPS, frames)]
            batches += [
                (f"o{n}-{index}", day.replace(hour=0, minute=0), 86400 / old_frames, old_frames)
                for n, day in enumerate(old_days)
            ]
            for tag, start, spacing, count in batches:
                conn.execute(
                    text(_GENERATE),
                    {"tag": tag, "start": start, "spacing": spacing, "frames": count, "cameras": CAMERAS,
                     "site": SITE, "line": line_name(index)},
                )  # fmt: skip
        print(f"  {line_name(index)}: generated in {time.monotonic() - started:.0f} s", flush=True)
    minutes_since = recent_start.replace(second=0, microsecond=0) - timedelta(days=30)
    # Hours of their own before the oldest rows (the rows' hours come from their minutes).
    hours_until = min([day.replace(hour=0, minute=0) for day in old_days] + [minutes_since.replace(minute=0)])
    hours_since = hours_until - timedelta(days=335)
    with engine.begin() as conn:
        conn.execute(text(_MINUTES_FROM_ROWS))
        older = {"site": SITE, "lines": args.lines, "cameras": CAMERAS}
        conn.execute(
            text(_OLDER_MINUTES),
            {
                **older,
                "since": minutes_since,
                "until": recent_start.replace(second=0, microsecond=0) - timedelta(days=args.old_days + 1),
            },
        )
        conn.execute(text(_HOURS_FROM_MINUTES))
        conn.execute(text(_OLDER_HOURS), {**older, "since": hours_since, "until": hours_until})
        this_hour = now.replace(minute=0, second=0, microsecond=0)
        conn.execute(
            text(_PART_HOURS),
            {"site": SITE, "lines": args.lines, "since": this_hour - timedelta(days=365), "until": this_hour},
        )
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
        return int(conn.scalar(select(func.count()).select_from(Inspection)) or 0)


# --- one line, as its daemon --------------------------------------------------------------------------------


@dataclass
class LineResult:
    line: str
    chunks: list[tuple[float, float, int]] = field(default_factory=list)  # (when, seconds, records) per chunk
    lag_s: list[tuple[float, float]] = field(default_factory=list)  # (when, how far behind schedule) per chunk
    rows: int = 0
    parts: int = 0
    labels: int = 0
    failures: list[str] = field(default_factory=list)  # chunks the store refused (then written on a retry)
    retention: dict[str, Any] = field(default_factory=dict)


def _records(line: str, position: int, seq: int, now: datetime, rng: random.Random) -> list[JournalRecord]:
    records = []
    for camera in range(CAMERAS):
        defect = rng.random() < 0.02
        inspection_id = f"{line}-cam{camera}-live-{seq}"
        verdict = Verdict(
            inspection_id=inspection_id, camera=f"cam{camera}", product="plate", seq=seq, frame_ts=now,
            captured_mono=float(seq), score=0.5 + rng.random() / 2 if defect else rng.random() / 2, threshold=0.5,
            label=VerdictLabel.DEFECT if defect else VerdictLabel.NORMAL, model_version="v1",
            snapshot=f"cam{camera}/{inspection_id}.jpg" if defect else None,
        )  # fmt: skip
        records.append(
            JournalRecord(
                position + camera, "verdict", inspection_id, f"cam{camera}", verdict_payload(verdict), format_ts(now)
            )
        )
    if seq % PART_EVERY_TICKS == 0:  # the station's verdict on the part these 4 frames showed
        inspections = tuple(record.key for record in records)
        verdict = "NOK" if any(record.payload["label"] == "defect" for record in records) else "OK"
        part = PartResult("st1", f"{line}-P{seq}", verdict, 0.5, "all cameras reported", now, "v1", "plate",
                          inspections, result_id=f"{line}-r{seq}")  # fmt: skip
        records.append(
            JournalRecord(position + CAMERAS, "part", part.result_id, "", part_payload(part), format_ts(now))
        )
    return records


def _write_line(
    url: str, line: str, seconds: float, start_at: float, stop: threading.Event, result: LineResult
) -> None:
    """The line's verdicts as its journal would hold them, sent as the daemon's forwarder runner sends them:
    whatever is due in one chunk (at most MAX_CHUNK records: after a slow write the backlog goes in one
    bigger chunk), a failed chunk offered again."""
    engine = make_engine(url, LineScope(SITE, line))
    forwarder = DbForwarder(engine)
    rng = random.Random(line)
    position, tick, last_label = 1, 0, 0.0
    ticks = int(seconds / CHUNK_PERIOD_S)
    try:
        while not stop.is_set() and tick < ticks:
            due = start_at + tick * CHUNK_PERIOD_S
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            lag = time.time() - due
            result.lag_s.append((due - start_at, lag))
            records: list[JournalRecord] = []
            now = datetime.now(UTC)
            while tick < ticks and start_at + tick * CHUNK_PERIOD_S <= time.time() and len(records) < MAX_CHUNK:
                records += _records(line, position + len(records), tick, now, rng)
                tick += 1
            if time.time() - last_label >= LABEL_EVERY_S and tick > 1:
                target = f"{line}-cam0-live-{tick - 2}"
                label = Label(
                    f"{line}-l{tick}", LabelTarget.INSPECTION, target, "cam0", VerdictLabel.NORMAL, "web", now, "ana"
                )
                records.append(
                    JournalRecord(
                        position + len(records), "label", label.label_id, "cam0", label_payload(label), format_ts(now)
                    )
                )
                result.labels += 1
                last_label = time.time()
            began = time.perf_counter()
            while True:
                try:
                    forwarder.send(records)
                    break
                except DatabaseError as problem:
                    result.failures.append(str(problem))
                    time.sleep(0.1)
            result.chunks.append((due - start_at, time.perf_counter() - began, len(records)))
            result.rows += sum(record.kind == "verdict" for record in records)
            result.parts += sum(record.kind == "part" for record in records)
            position += len(records)
    finally:
        engine.dispose()


def run_lines(
    url: str, lines: list[str], seconds: float, start_at: float, retention_interval: float, queue: Any
) -> None:
    """One process: its lines' forwarders and retentions, as that many daemons."""
    changes = _PartitionLog()
    logging.getLogger("linewatch.sinks.store_partitions").addHandler(changes)
    logging.getLogger("linewatch.sinks.store_partitions").setLevel(logging.INFO)
    stop = threading.Event()
    results = [LineResult(line) for line in lines]
    writers = [threading.Thread(target=_write_line, args=(url, r.line, seconds, start_at, stop, r)) for r in results]
    retentions = []
    engines = []
    policy = StoreRetentionPolicy(
        timedelta(days=POLICY["keep_normal_days"]), timedelta(days=POLICY["keep_days"]),
        timedelta(days=POLICY["keep_rollup_days"]), POLICY["batch_rows"], POLICY["pause_s"],
    )  # fmt: skip
    for result in results:
        engine = make_engine(url, LineScope(SITE, result.line))
        engines.append(engine)
        retention = StoreRetention(engine, SystemClock(), policy)
        retentions.append(retention)
    retention_stop = threading.Event()
    retention_threads = [
        threading.Thread(target=retention.run, args=(retention_stop, retention_interval), daemon=True)
        for retention in retentions
    ]
    time.sleep(max(0.0, start_at - time.time()))
    for thread in (*writers, *retention_threads):
        thread.start()
    for thread in writers:
        thread.join()
    retention_stop.set()
    for thread in retention_threads:
        thread.join(timeout=120)
    for result, retention in zip(results, retentions, strict=True):
        stats = retention.stats
        result.retention = {
            "deleted": dict(stats.deleted), "partitions": dict(stats.partitions), "passes": stats.passes,
            "failures": stats.failures, "longest_batch_s": stats.longest_batch_s, "last_error": stats.last_error,
        }  # fmt: skip
    for engine in engines:
        engine.dispose()
    cpu = os.times()
    queue.put((results, changes.lines, cpu.user + cpu.system))


class _PartitionLog(logging.Handler):
    """What the partitions did and when (seconds since the epoch), from retention's own log lines."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.created, record.getMessage()))


# --- the queries --------------------------------------------------------------------------------------------


def query_loop(url: str, lines: int, pause_s: float, stop: threading.Event, timings: dict[str, list[float]]) -> None:
    """Each page query for a random line and camera, then each dashboard panel over all lines (24 h, 7 d),
    then a pause: operators' pages and dashboards refreshing, not a client hammering the store."""
    rng = random.Random(11)
    engines = {line_name(i): make_engine(url, LineScope(SITE, line_name(i))) for i in range(lines)}
    every_line = sql_list(*engines)
    panels = panel_queries()

    def timed(name: str, query: Callable[[], object]) -> None:
        began = time.perf_counter()
        query()
        timings.setdefault(name, []).append(time.perf_counter() - began)

    try:
        while not stop.is_set():
            engine = engines[rng.choice(list(engines))]
            camera = f"cam{rng.randrange(CAMERAS)}"
            now = datetime.now(UTC)
            hour = HistoryFilter(camera=camera, since=now - timedelta(hours=1), until=now)
            timed("page: history, 1 h of a camera", lambda e=engine, f=hour: history_page(e, f))
            timed("page: history, defects of a day", lambda e=engine, n=now: history_page(
                e, HistoryFilter(verdict="defect", since=n - timedelta(days=1), until=n)))  # fmt: skip
            timed("page: score plot, 1 h of a camera", lambda e=engine, f=hour: score_series(e, f))
            month = HistoryFilter(camera=camera, since=now - timedelta(days=30), until=now)
            timed("page: score plot, 30 days of a camera", lambda e=engine, f=month: score_series(e, f))
            timed("page: review queue", lambda e=engine, n=now: review_page(e, n, timedelta(hours=8), 0.1))
            for days in (1, 7):
                for title, sql in panels.items():
                    rendered = render(sql, now - timedelta(days=days), now, site=sql_list(SITE), line=every_line)
                    with engine.connect() as conn:
                        timed(f"dashboard {days:>1} d: {title}", lambda c=conn, s=rendered: c.execute(text(s)).all())
            stop.wait(pause_s)
    finally:
        for engine in engines.values():
            engine.dispose()


# --- the run ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def postgres(args: argparse.Namespace) -> Iterator[str]:
    if args.url:
        yield args.url
        return
    from tests.services.postgres import PostgresServer

    server = PostgresServer(durable=True)
    try:
        server.start()
        admin = make_engine(server.url)
        with admin.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            for name, value in PG_SETTINGS.items():
                conn.execute(text(f"ALTER SYSTEM SET {name} = '{value}'"))
        admin.dispose()
        server.stop()
        server.start()
        yield server.create_database()
    finally:
        server.cleanup()


def _busy_cpu_s() -> float:
    """CPU seconds this machine spent busy so far, from Linux's /proc/stat (every process: PostgreSQL's come and
    go with their connections)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user .. steal; guest is inside user


@dataclass
class Load:
    results: list[LineResult]
    timings: dict[str, list[float]]  # query name -> seconds, under load
    idle: dict[str, list[float]]  # the same at rest
    changes: list[tuple[float, str]]  # partition changes: (epoch seconds, log line)
    cpu_s: dict[str, float]  # CPU seconds of the simulated daemons and of the whole machine during the load
    start_at: float  # epoch seconds


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def relation_bytes(engine: Engine, table: str) -> int:
    """A table's bytes with its indexes; for a partitioned one, all its partitions'."""
    query = text(
        "SELECT CASE WHEN relkind = 'p' THEN (SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(oid)) "
        "ELSE pg_total_relation_size(oid) END FROM pg_class WHERE relname = :t"
    )
    with engine.connect() as conn:
        return int(conn.scalar(query, {"t": table}) or 0)


def count_rows(engine: Engine, table: Any, **where: Any) -> int:
    with engine.connect() as conn:
        query = select(func.count()).select_from(table)
        for name, value in where.items():
            query = query.where(table.c[name] == value)
        return int(conn.scalar(query) or 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an existing PostgreSQL (postgresql+psycopg://...); default: a throwaway one")
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--recent-hours", type=float, default=3.5, help="history of every line at full rate")
    parser.add_argument("--old-days", type=int, default=2, help="days just older than keep_normal_days")
    parser.add_argument("--old-rows-per-day", type=int, default=1_000_000, help="all lines together")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--past-partitions", type=int, default=0, help="empty day partitions before the history")
    parser.add_argument("--retention-interval", type=float, default=60.0)
    parser.add_argument("--query-pause", type=float, default=1.0, help="seconds between rounds of queries")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="the queries alone, before the load")
    args = parser.parse_args()

    with postgres(args) as url:
        upgrade_database(url, Path("/tmp"), scope=LineScope(SITE, line_name(0)))
        engine = make_engine(url)
        now = datetime.now(UTC)
        began = time.monotonic()
        print(f"generating the history of {args.lines} lines ...", flush=True)
        history = generate(engine, args, now)
        days = len(InspectionPartitions(engine).partitions())
        print(f"{history:,} inspection rows generated in {time.monotonic() - began:.0f} s; {days} day partitions")
        before = {t: relation_bytes(engine, t) for t in ("inspections", "inspection_minutes", "inspection_hours")}
        counts = {t: count_rows(engine, Inspection.__table__.metadata.tables[t]) for t in before}

        idle: dict[str, list[float]] = {}
        stop_idle = threading.Event()
        threading.Timer(args.idle_seconds, stop_idle.set).start()
        query_loop(url, args.lines, args.query_pause, stop_idle, idle)  # the same queries on a store at rest

        names = [line_name(i) for i in range(args.lines)]
        start_at = time.time() + 5.0  # every process ready before the first chunk
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        groups = [names[i :: args.processes] for i in range(args.processes)]
        workers = [
            context.Process(target=run_lines, args=(url, group, args.seconds, start_at, args.retention_interval, queue))
            for group in groups if group
        ]  # fmt: skip
        for worker in workers:
            worker.start()
        timings: dict[str, list[float]] = {}
        stop = threading.Event()
        querying = threading.Thread(target=query_loop, args=(url, args.lines, args.query_pause, stop, timings))
        time.sleep(max(0.0, start_at - time.time()))
        querying.start()
        busy_cpu = _busy_cpu_s()
        results: list[LineResult] = []
        changes: list[tuple[float, str]] = []
        lines_cpu = 0.0
        for _ in workers:
            worker_results, worker_changes, worker_cpu = queue.get()
            results += worker_results
            changes += worker_changes
            lines_cpu += worker_cpu
        busy_cpu = _busy_cpu_s() - busy_cpu
        stop.set()
        querying.join()
        for worker in workers:
            worker.join()
        cpu = {"lines": lines_cpu, "machine": busy_cpu}
        load = Load(results, timings, idle, sorted(changes), cpu, start_at)
        report(engine, args, load, before, counts)
        engine.dispose()
    return 0


def report(
    engine: Engine, args: argparse.Namespace, load: Load, before: dict[str, int], counts: dict[str, int]
) -> None:
    results = load.results
    target = args.lines * CAMERAS * FPS
    rows = sum(r.rows for r in results)
    slowest, fastest = (f(r.rows for r in results) / args.seconds for f in (min, max))
    labels = sum(r.labels for r in results)
    print(f"\n{args.lines} lines for {args.seconds:.0f} s: {rows:,} rows, {rows / args.seconds:.0f} rows/s "
          f"(target {target}); per line {slowest:.1f}-{fastest:.1f} rows/s; {labels} labels")  # fmt: skip
    chunks = [c for r in results for c in r.chunks]
    chunk_ms = [1000 * seconds for _, seconds, _ in chunks]
    lags = [(when, lag) for r in results for when, lag in r.lag_s]
    lag_ms = [1000 * lag for _, lag in lags]
    last_minute = [1000 * lag for when, lag in lags if when >= args.seconds - 60]
    print(f"forwarder chunks: {len(chunks):,}, {statistics.mean(n for _, _, n in chunks):.1f} records each on "
          f"average; write p50 {statistics.median(chunk_ms):.1f} ms, p99 {percentile(chunk_ms, 0.99):.1f} ms, "
          f"max {max(chunk_ms):.0f} ms")  # fmt: skip
    print(f"behind schedule (the journal's backlog, in time): p50 {statistics.median(lag_ms):.0f} ms, p99 "
          f"{percentile(lag_ms, 0.99):.0f} ms, max {max(lag_ms):.0f} ms; in the last minute max "
          f"{max(last_minute):.0f} ms")  # fmt: skip
    worst = sorted(chunks, key=lambda chunk: chunk[1], reverse=True)[:5]
    print("slowest chunks: " + ", ".join(f"{1000 * s:.0f} ms at {when:.0f} s ({n} records)" for when, s, n in worst))
    cores = {name: seconds / args.seconds for name, seconds in load.cpu_s.items()}
    print(f"CPU during the load: the machine busy {cores['machine']:.2f} of {os.cpu_count()} cores, the "
          f"{args.lines} simulated daemons {cores['lines']:.2f} of them (PostgreSQL, the query client and the "
          f"rest {cores['machine'] - cores['lines']:.2f})")  # fmt: skip
    deleted: dict[str, int] = {}
    for result in results:
        for kind, n in result.retention["deleted"].items():
            deleted[kind] = deleted.get(kind, 0) + n
    failures = sum(r.retention["failures"] for r in results)
    waited = [line for _, line in load.changes if "another daemon is changing partitions" in line]
    print(f"retention: deleted {deleted}, {failures} failed passes; {len(waited)} changes left to a later pass "
          "(another line's retention held the partition lock); partition changes:")  # fmt: skip
    for at, line in load.changes:
        if line not in waited:
            print(f"  at {at - load.start_at:6.1f} s: {line}")
    for result in results:
        if result.retention["last_error"]:
            print(f"  {result.line}: {result.retention['last_error']}")
    refused = [problem for r in results for problem in r.failures]
    print(f"chunks the store refused (written on a retry, as the daemon's runner does): {len(refused)}")
    for problem in sorted(set(refused))[:5]:
        print(f"  {problem[:300]}")
    print(f"\n{'query (ms)':<60} {'at rest p50':>11} {'p99':>6} {'under load p50':>14} {'p99':>6} {'max':>6}")
    for name, seconds in load.timings.items():
        ms, rest = [1000 * s for s in seconds], [1000 * s for s in load.idle.get(name, [0.0])]
        print(f"{name:<60} {statistics.median(rest):>11.1f} {percentile(rest, 0.99):>6.1f} "
              f"{statistics.median(ms):>14.1f} {percentile(ms, 0.99):>6.1f} {max(ms):>6.0f}")  # fmt: skip
    lost = parts_lost = 0
    load_started = datetime.fromtimestamp(load.start_at, UTC).replace(second=0, microsecond=0)
    with engine.connect() as conn:
        for result in results:
            mine = (Inspection.site == SITE, Inspection.line == result.line, Inspection.id.like(f"{result.line}-%"))
            stored = conn.scalar(select(func.count()).select_from(Inspection).where(*mine))
            minute = InspectionMinute
            counted = conn.scalar(
                select(func.coalesce(func.sum(minute.frames), 0)).where(
                    minute.site == SITE, minute.line == result.line, minute.minute >= load_started
                )
            )
            lost += result.rows - int(stored or 0)
            if int(counted or 0) != result.rows:
                print(f"  {result.line}: {result.rows} written, {counted} counted in the minutes")
            parts_stored = conn.scalar(
                select(func.count()).where(PartRecord.site == SITE, PartRecord.line == result.line)
            )
            parts_counted = conn.scalar(
                select(func.coalesce(func.sum(PartHour.parts), 0)).where(
                    PartHour.site == SITE, PartHour.line == result.line, PartHour.hour >= load_started.replace(minute=0)
                )
            )
            parts_lost += result.parts - int(parts_stored or 0)
            if int(parts_counted or 0) != result.parts:
                print(f"  {result.line}: {result.parts} part verdicts written, {parts_counted} counted per hour")
    print(f"\nrows written but missing from the store: {lost}; part verdicts: {parts_lost} of "
          f"{sum(r.parts for r in results):,}")  # fmt: skip
    per_row = {t: before[t] / max(1, counts[t]) for t in before}
    frames_per_day = CAMERAS * FPS * 86400
    kept_share = 0.03  # defects and frames with evidence (as generated): kept keep_days
    minutes_per_day = CAMERAS * 1440 * 2  # a normal and a defect key per camera and minute, at most
    hours_per_day = CAMERAS * 24 * 2
    full = frames_per_day * per_row["inspections"]
    after = frames_per_day * kept_share * per_row["inspections"]
    rollups = minutes_per_day * per_row["inspection_minutes"] + hours_per_day * per_row["inspection_hours"]
    print(f"bytes per row with indexes: inspections {per_row['inspections']:.0f}, minutes "
          f"{per_row['inspection_minutes']:.0f}, hours {per_row['inspection_hours']:.0f}")  # fmt: skip
    print(f"per line per day: {full / 2**30:.2f} GiB of rows before retention; after keep_normal_days "
          f"{after / 2**20:.0f} MiB of kept rows + {rollups / 2**20:.1f} MiB of roll-ups")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())

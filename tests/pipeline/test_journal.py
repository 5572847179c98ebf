"""The journal: payload round trips, atomic batches, cursors, the forwarder runner, reopening, SIGKILL durability."""

from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from linewatch.clock import FakeClock, SystemClock
from linewatch.pipeline.journal.forwarding import ForwarderRunner, LoggingForwarder
from linewatch.pipeline.journal.outbox import SCHEMA_VERSION, Journal
from linewatch.pipeline.journal.records import (
    JournalError,
    JournalRecord,
    event_from_payload,
    event_payload,
    verdict_from_payload,
    verdict_payload,
)
from linewatch.types import Event, EventType, Verdict, VerdictLabel

T0 = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
WRITER = Path(__file__).resolve().parent / "journal_writer.py"


def make_verdict(index: int, camera: str = "cam1", **changes: object) -> Verdict:
    fields: dict[str, object] = {
        "inspection_id": f"{camera}-boot-{index}",
        "camera": camera,
        "product": "metal plate",
        "seq": index,
        "frame_ts": T0 + timedelta(milliseconds=index),
        "captured_mono": 100.0 + index / 3,
        "score": 0.1 + index / 7,
        "threshold": 0.5,
        "label": VerdictLabel.NORMAL,
        "model_version": "v3",
    }
    fields.update(changes)
    return Verdict(**fields)  # type: ignore[arg-type]


def make_event(event_id: str, seq: int, camera: str = "cam1", **changes: object) -> Event:
    fields: dict[str, object] = {
        "event_id": event_id,
        "type": EventType.NEW if seq == 1 else EventType.UPDATE,
        "seq": seq,
        "camera": camera,
        "product": "metal plate",
        "frame_ts": T0 + timedelta(seconds=seq),
        "score": 0.9,
        "threshold": 0.5,
        "label": VerdictLabel.DEFECT,
        "model_version": "v3",
        "inspection_id": f"{camera}-boot-{seq}",
    }
    fields.update(changes)
    return Event(**fields)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0)


@pytest.fixture
def journal(tmp_path: Path, clock: FakeClock) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.db", clock) as opened:
        yield opened


def all_records(journal: Journal) -> list[JournalRecord]:
    journal.register_forwarder("_everything")
    return journal.read_after("_everything", 1_000_000)


# --- payloads ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("part_id", [None, "P-0042"])
@pytest.mark.parametrize(
    "frame_ts",
    [T0, datetime(2026, 3, 4, 7, 6, 7, 5, tzinfo=timezone(timedelta(hours=2))), datetime(2026, 1, 1, tzinfo=UTC)],
)
def test_verdict_payload_round_trips_through_json(part_id: str | None, frame_ts: datetime) -> None:
    verdict = make_verdict(7, part_id=part_id, frame_ts=frame_ts, label=VerdictLabel.DEFECT, score=1 / 3)
    payload = verdict_payload(verdict)
    back = verdict_from_payload(json.loads(json.dumps(payload)))
    assert back == verdict
    assert back.frame_ts.tzinfo is not None and back.frame_ts.utcoffset() == timedelta(0)
    assert payload["frame_ts"] == frame_ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert payload["part_id"] == part_id and payload["label"] == "defect"


@pytest.mark.parametrize("event_type", list(EventType))
@pytest.mark.parametrize("part_id", [None, "P-7"])
def test_event_payload_round_trips_through_json(event_type: EventType, part_id: str | None) -> None:
    event = make_event("ev-1", 3, type=event_type, part_id=part_id)
    payload = event_payload(event)
    assert event_from_payload(json.loads(json.dumps(payload))) == event
    assert payload["type"] == str(event_type) and payload["frame_ts"] == "2026-03-04T05:06:10.123456Z"


def test_naive_datetimes_and_bad_payloads_are_refused(journal: Journal) -> None:
    with pytest.raises(JournalError, match="naive"):
        journal.append_batch([make_verdict(1, frame_ts=datetime(2026, 1, 1))], [])
    payload = verdict_payload(make_verdict(1))
    with pytest.raises(JournalError, match="bad verdict payload"):
        verdict_from_payload({k: v for k, v in payload.items() if k != "score"})
    with pytest.raises(JournalError, match="ending in 'Z'"):
        verdict_from_payload({**payload, "frame_ts": "2026-01-01T00:00:00+02:00"})
    with pytest.raises(JournalError, match="bad event payload"):
        event_from_payload({**event_payload(make_event("e", 1)), "type": "exploded"})


# --- append_batch ------------------------------------------------------------------------------------------------


def test_positions_are_gap_free_in_commit_order_verdicts_before_events(journal: Journal, clock: FakeClock) -> None:
    first = journal.append_batch([make_verdict(1), make_verdict(2)], [make_event("e1", 1)])
    clock.advance(1.5)
    second = journal.append_batch([make_verdict(3, camera="cam2")], [make_event("e1", 2), make_event("e2", 1)])
    assert first == [1, 2, 3] and second == [4, 5, 6]
    assert journal.append_batch([], []) == []
    records = all_records(journal)
    assert [(r.position, r.kind, r.key, r.camera) for r in records] == [
        (1, "verdict", "cam1-boot-1", "cam1"),
        (2, "verdict", "cam1-boot-2", "cam1"),
        (3, "event", "e1:1", "cam1"),
        (4, "verdict", "cam2-boot-3", "cam2"),
        (5, "event", "e1:2", "cam1"),
        (6, "event", "e2:1", "cam1"),
    ]
    assert records[0].committed_at == "2026-03-04T05:06:07.123456Z"
    assert records[3].committed_at == "2026-03-04T05:06:08.623456Z"
    assert verdict_from_payload(records[3].payload) == make_verdict(3, camera="cam2")
    assert event_from_payload(records[4].payload) == make_event("e1", 2)
    assert journal.head() == 6


@pytest.mark.parametrize(
    "bad",
    [make_verdict(2, score=float("nan")), make_verdict(2, score=float("inf")), make_verdict(2, part_id=object())],
    ids=["nan", "inf", "object"],
)
def test_a_batch_with_an_unserialisable_payload_leaves_nothing(journal: Journal, bad: Verdict) -> None:
    journal.append_batch([make_verdict(0)], [])
    with pytest.raises(JournalError, match="cam1-boot-2"):
        journal.append_batch([make_verdict(1), bad, make_verdict(3)], [make_event("e", 1)])
    assert [r.key for r in all_records(journal)] == ["cam1-boot-0"]
    assert journal.append_batch([make_verdict(1)], []) == [2]


def test_a_failure_inside_the_transaction_rolls_back_the_whole_batch(journal: Journal, tmp_path: Path) -> None:
    journal.append_batch([make_verdict(0)], [])
    # A trigger makes SQLite itself fail on the third row, after two rows of the batch were inserted.
    other = sqlite3.connect(tmp_path / "journal.db")
    other.execute(
        "CREATE TRIGGER injected BEFORE INSERT ON records WHEN NEW.key = 'cam1-boot-3' "
        "BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
    )
    other.commit()
    with pytest.raises(JournalError, match="injected failure"):
        journal.append_batch([make_verdict(1), make_verdict(2), make_verdict(3)], [make_event("e", 1)])
    assert [r.key for r in all_records(journal)] == ["cam1-boot-0"]
    other.execute("DROP TRIGGER injected")
    other.commit()
    other.close()
    assert journal.append_batch([make_verdict(1), make_verdict(2), make_verdict(3)], []) == [2, 3, 4]


def test_an_exception_from_python_mid_transaction_rolls_back(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    real_insert = Journal._insert
    calls = []

    def failing_insert(*args: object) -> int:
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the harshest case: not even an Exception
        return real_insert(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(Journal, "_insert", staticmethod(failing_insert))
    with pytest.raises(KeyboardInterrupt):
        journal.append_batch([make_verdict(1), make_verdict(2), make_verdict(3)], [])
    monkeypatch.undo()
    assert all_records(journal) == []
    assert journal.append_batch([make_verdict(1)], []) == [1]  # no transaction was left open


def test_re_appending_keeps_the_original_positions_and_adds_no_duplicates(journal: Journal) -> None:
    verdicts, events = [make_verdict(1), make_verdict(2)], [make_event("e", 1)]
    assert journal.append_batch(verdicts, events) == [1, 2, 3]
    journal.append_batch([make_verdict(9)], [])
    assert journal.append_batch(verdicts, events) == [1, 2, 3]
    assert journal.append_batch([make_verdict(2), make_verdict(10)], [make_event("e", 1), make_event("e", 2)]) == [
        2,
        5,
        3,
        6,
    ]
    records = all_records(journal)
    assert [r.position for r in records] == [1, 2, 3, 4, 5, 6]
    assert len({(r.kind, r.key) for r in records}) == 6
    # Same key in both kinds is two records: keys are unique per kind.
    assert journal.append_batch([make_verdict(1, inspection_id="x:1")], [make_event("x", 1)]) == [7, 8]


# --- cursors -----------------------------------------------------------------------------------------------------


def test_forwarders_replay_from_the_start_and_keep_independent_cursors(journal: Journal) -> None:
    journal.append_batch([make_verdict(i) for i in range(1, 6)], [])
    journal.register_forwarder("db")
    assert [r.position for r in journal.read_after("db", 3)] == [1, 2, 3]
    journal.mark_done("db", 3)
    journal.register_forwarder("mqtt")  # registered late: still replays everything
    journal.register_forwarder("db")  # registering again keeps the cursor
    assert [r.position for r in journal.read_after("db", 10)] == [4, 5]
    assert [r.position for r in journal.read_after("mqtt", 10)] == [1, 2, 3, 4, 5]
    assert journal.backlog("db") == 2 and journal.backlog("mqtt") == 5
    journal.append_batch([make_verdict(6)], [])
    assert journal.backlogs() == {"db": 3, "mqtt": 6}
    journal.mark_done("mqtt", 6)
    journal.mark_done("mqtt", 6)  # same position again is a no-op
    assert journal.backlogs() == {"db": 3, "mqtt": 0} and journal.cursor("db") == 3


def test_cursor_misuse_is_refused(journal: Journal) -> None:
    journal.append_batch([make_verdict(i) for i in range(1, 4)], [])
    journal.register_forwarder("db")
    journal.mark_done("db", 2)
    with pytest.raises(JournalError, match="cannot move back from 2 to 1"):
        journal.mark_done("db", 1)
    with pytest.raises(JournalError, match="past the journal head 3"):
        journal.mark_done("db", 4)
    with pytest.raises(JournalError, match=r"unknown forwarder 'nope' \(registered: \['db'\]\)"):
        journal.read_after("nope", 10)
    with pytest.raises(JournalError, match="unknown record kinds"):
        journal.read_after("db", 10, kinds={"verdicts"})
    with pytest.raises(JournalError, match="limit"):
        journal.read_after("db", 0)
    assert journal.cursor("db") == 2


def test_kinds_filter_reads_only_those_kinds_but_the_cursor_covers_everything(journal: Journal) -> None:
    journal.append_batch([make_verdict(1), make_verdict(2)], [make_event("e", 1)])  # 1 2 3
    journal.append_batch([make_verdict(3)], [make_event("e", 2)])  # 4 5
    journal.register_forwarder("mqtt")
    assert [r.position for r in journal.read_after("mqtt", 10, kinds={"event"})] == [3, 5]
    assert [r.position for r in journal.read_after("mqtt", 1, kinds=["event"])] == [3]
    assert [r.position for r in journal.read_after("mqtt", 10, kinds=("verdict", "event"))] == [1, 2, 3, 4, 5]
    assert journal.read_after("mqtt", 10, kinds=()) == []
    journal.mark_done("mqtt", 3)  # events up to 3 done, and so is everything before
    assert [r.position for r in journal.read_after("mqtt", 10, kinds={"verdict"})] == [4]
    assert journal.backlog("mqtt") == 2


# --- ForwarderRunner -------------------------------------------------------------------------------------------


class ScriptedForwarder:
    """Follows a script, one step per send call: an int n delivers the first n records, an exception is raised,
    "all" delivers everything. After the script, delivers everything. Sets ``stop`` once ``expect`` records came."""

    def __init__(
        self,
        clock: FakeClock,
        stop: threading.Event,
        expect: int,
        script: Sequence[int | str | Exception] = (),
        kinds: Collection[str] | None = None,
    ) -> None:
        self.name = "fake"
        self.kinds = kinds
        self.script = list(script)
        self.clock, self.stop, self.expect = clock, stop, expect
        self.delivered: list[int] = []
        self.offered: list[list[int]] = []
        self.call_times: list[float] = []

    def send(self, records: Sequence[JournalRecord]) -> int:
        self.call_times.append(self.clock.monotonic())
        self.offered.append([r.position for r in records])
        step = self.script.pop(0) if self.script else "all"
        if isinstance(step, Exception):
            raise step
        count = len(records) if step == "all" else min(int(step), len(records))
        self.delivered.extend(r.position for r in records[:count])
        if len(self.delivered) >= self.expect:
            self.stop.set()
        return count


def _gaps(times: list[float]) -> list[float]:
    return [round(b - a, 9) for a, b in itertools.pairwise(times)]


def test_runner_retries_after_failures_with_backoff_and_delivers_everything_once_in_order(
    journal: Journal, clock: FakeClock
) -> None:
    journal.append_batch([make_verdict(i) for i in range(1, 11)], [])
    stop = threading.Event()
    fake = ScriptedForwarder(clock, stop, expect=10, script=[ConnectionError("broker down"), TimeoutError("slow")])
    runner = ForwarderRunner(journal, fake, stop, clock, batch_size=4, backoff_min_s=0.5, backoff_max_s=30.0)
    start = clock.monotonic()
    runner.run()
    assert fake.delivered == list(range(1, 11))
    assert fake.offered == [[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    # 0.5 s after the first failure, 1.0 s after the second, then full batches follow without waiting.
    assert _gaps([start, *fake.call_times]) == [0.0, 0.5, 1.0, 0.0, 0.0]
    assert runner.stats.delivered == 10 and runner.stats.failures == 2
    assert runner.stats.last_error == "send: TimeoutError: slow"
    assert journal.backlog("fake") == 0 and clock.monotonic() - start == pytest.approx(1.5)


def test_runner_backoff_doubles_up_to_the_maximum(journal: Journal, clock: FakeClock) -> None:
    journal.append_batch([make_verdict(1)], [])
    stop = threading.Event()
    fake = ScriptedForwarder(clock, stop, expect=1, script=[OSError("down")] * 7)
    runner = ForwarderRunner(journal, fake, stop, clock, backoff_min_s=0.5, backoff_max_s=4.0)
    runner.run()
    assert _gaps(fake.call_times) == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert runner.stats.failures == 7 and fake.delivered == [1]


def test_runner_retries_the_undelivered_rest_of_a_partial_send(journal: Journal, clock: FakeClock) -> None:
    journal.append_batch([make_verdict(i) for i in range(1, 8)], [make_event("e", 1)])  # positions 1..8
    stop = threading.Event()
    fake = ScriptedForwarder(clock, stop, expect=8, script=[1, ValueError("bad"), 2, 0, "all"])
    runner = ForwarderRunner(journal, fake, stop, clock, batch_size=4, backoff_min_s=1.0, backoff_max_s=60.0)
    runner.run()
    assert fake.delivered == list(range(1, 9))
    assert fake.offered == [[1, 2, 3, 4], [2, 3, 4, 5], [2, 3, 4, 5], [4, 5, 6, 7], [4, 5, 6, 7], [8]]
    assert _gaps(fake.call_times) == [1.0, 2.0, 4.0, 8.0, 0.0]  # partial sends count as failures too
    assert runner.stats.failures == 4 and runner.stats.delivered == 8
    assert runner.stats.last_error == "partial send: 0 of 4 records delivered"


def test_runner_counts_a_nonsense_send_result_as_a_failure(journal: Journal, clock: FakeClock) -> None:
    journal.append_batch([make_verdict(1)], [])

    class Liar:
        name, kinds = "liar", None

        def send(self, records: Sequence[JournalRecord]) -> int:
            return len(records) + 1

    runner = ForwarderRunner(journal, Liar(), threading.Event(), clock)
    assert runner.run_once() == 0
    assert runner.stats.failures == 1 and "send returned 2 for 1 records" in str(runner.stats.last_error)
    assert journal.cursor("liar") == 0 and runner.next_delay_s == 0.5


def test_filtered_runner_sends_only_its_kinds_and_moves_its_cursor_over_the_rest(
    journal: Journal, clock: FakeClock
) -> None:
    journal.append_batch([make_verdict(1), make_verdict(2)], [make_event("e", 1)])  # 1 2 3
    journal.append_batch([make_verdict(3), make_verdict(4)], [])  # 4 5
    stop = threading.Event()
    fake = ScriptedForwarder(clock, stop, expect=99, kinds={"event"})
    runner = ForwarderRunner(journal, fake, stop, clock, batch_size=4)
    assert runner.run_once() == 1
    assert fake.offered == [[3]] and journal.cursor("fake") == 5 and journal.backlog("fake") == 0
    journal.append_batch([make_verdict(5)], [])  # 6: nothing for this forwarder
    assert runner.run_once() == 0
    assert journal.cursor("fake") == 6 and fake.offered == [[3]]


def test_runner_in_a_thread_drains_the_journal_and_flushes_on_stop(tmp_path: Path) -> None:
    clock = SystemClock()
    journal = Journal(tmp_path / "j.db", clock)
    stop = threading.Event()
    sent: list[int] = []

    class Collector:
        name, kinds = "collector", None

        def send(self, records: Sequence[JournalRecord]) -> int:
            sent.extend(r.position for r in records)
            return len(records)

    runner = ForwarderRunner(journal, Collector(), stop, clock, batch_size=3, idle_s=0.01)
    thread = runner.start()
    try:
        for index in range(1, 8):
            journal.append_batch([make_verdict(index)], [])
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert sent == list(range(1, 8)) and journal.backlog("collector") == 0
    # Stopped before it started: run() still does its one flushing cycle.
    journal.append_batch([make_verdict(8)], [])
    runner.run()
    assert sent[-1] == 8
    journal.close()


def test_run_after_stop_flushes_up_to_the_head_and_gives_up_at_the_first_failure(
    journal: Journal, clock: FakeClock
) -> None:
    journal.append_batch([make_verdict(i) for i in range(1, 11)], [])
    stop = threading.Event()
    stop.set()
    fake = ScriptedForwarder(clock, stop, expect=99)
    ForwarderRunner(journal, fake, stop, clock, batch_size=4).run()
    assert fake.offered == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]] and journal.backlog("fake") == 0
    journal.append_batch([make_verdict(11)], [])
    down = ScriptedForwarder(clock, stop, expect=99, script=[ConnectionError("down")] * 3)
    down.name = "down"
    runner = ForwarderRunner(journal, down, stop, clock, batch_size=4)
    start = clock.monotonic()
    runner.run()
    assert len(down.offered) == 1 and runner.stats.failures == 1 and journal.backlog("down") == 11
    assert clock.monotonic() == start  # no backoff wait once stopped


def test_logging_forwarder_logs_one_line_per_record(
    journal: Journal, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    journal.append_batch([make_verdict(1, camera="left", score=0.25)], [make_event("ep", 1, camera="right")])
    forwarder = LoggingForwarder()
    runner = ForwarderRunner(journal, forwarder, threading.Event(), clock)
    with caplog.at_level(logging.INFO, logger="linewatch.forwarder.log"):
        assert runner.run_once() == 2
    lines = [r.getMessage() for r in caplog.records if r.name == "linewatch.forwarder.log"]
    assert lines == [
        "#1 left verdict left-boot-1 score=0.2500 threshold=0.5000 verdict=normal",
        "#2 right event ep:1 type=new score=0.9000 threshold=0.5000 verdict=defect",
    ]
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "linewatch.forwarder.log")
    assert forwarder.name == "log" and forwarder.kinds is None and journal.backlogs() == {"log": 0}


# --- the file ----------------------------------------------------------------------------------------------------


def test_reopening_keeps_records_and_cursors(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "deep" / "er" / "journal.db"  # parents are created
    with Journal(path, clock) as journal:
        journal.append_batch([make_verdict(1), make_verdict(2)], [make_event("e", 1)])
        journal.register_forwarder("db")
        journal.mark_done("db", 2)
        before = all_records(journal)
    with pytest.raises(JournalError, match="closed"):
        journal.head()
    with Journal(path, clock) as journal:
        assert all_records(journal) == before
        assert journal.cursor("db") == 2 and journal.backlogs() == {"_everything": 3, "db": 1}
        assert journal.append_batch([make_verdict(3)], []) == [4]
        assert journal._conn is not None  # the per-connection settings this module promises
        assert journal._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert journal._conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    check.close()


def test_a_newer_schema_or_a_foreign_file_is_refused_with_the_file_named(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "journal.db"
    Journal(path, clock).close()
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 7")
    raw.close()
    with pytest.raises(JournalError) as caught:
        Journal(path, clock)
    assert str(path) in str(caught.value) and "version 7" in str(caught.value) and "(5)" in str(caught.value)
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(JournalError, match=re.escape(str(garbage))):
        Journal(garbage, clock)


def test_committed_batches_survive_sigkill_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    child = subprocess.Popen(
        [sys.executable, str(WRITER), str(path), "1000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    acknowledged: dict[int, int] = {}  # batch -> last position
    try:
        while len(acknowledged) < 20:
            line = lines.get(timeout=20)
            assert line is not None, (
                f"writer exited early: {child.wait(5)} {child.stderr.read() if child.stderr else ''}"
            )
            batch, position = line.split()
            acknowledged[int(batch)] = int(position)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=10)
    # Lines written before the kill that the pump had not handed over yet are acknowledgements too.
    while (line := lines.get(timeout=10)) is not None:
        batch, position = line.split()
        acknowledged[int(batch)] = int(position)
    assert Path(f"{path}-wal").exists()  # killed without a clean close: recovery has to replay the WAL

    with Journal(path, FakeClock()) as journal:
        records = all_records(journal)
        count = len(records)
        assert [r.position for r in records] == list(range(1, count + 1))  # gap-free
        assert count % 4 == 0  # no partial batch
        assert len({r.key for r in records}) == count  # each verdict once
        by_position = {r.position: r for r in records}
        for batch, position in acknowledged.items():
            assert by_position[position].key == f"kill-{batch}-3"
            assert [by_position[position - 3 + i].key for i in range(4)] == [f"kill-{batch}-{i}" for i in range(4)]
        assert count >= 4 * len(acknowledged)
        assert verdict_from_payload(records[0].payload).inspection_id == "kill-0-0"
        assert journal.append_batch([make_verdict(1)], []) == [count + 1]
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()

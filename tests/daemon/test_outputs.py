"""Outputs built from the config: a store that is down at start, the schema gate, evidence paths in verdicts."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select

from linewatch.clock import FakeClock, SystemClock
from linewatch.config import Config, EvidenceSection, HttpSection, MqttSection, SiteSection, StoreSection
from linewatch.daemon.outputs import AlertTimer, Outputs
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import JournalRecord, event_payload, verdict_payload
from linewatch.sinks.db import make_engine
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.db_schema import Inspection
from linewatch.types import EventType, Frame, VerdictLabel
from tests.pipeline.test_journal import T0, make_event, make_verdict
from tests.services.mosquitto import wait_until
from tests.services.postgres import PostgresServer


def _config(tmp_path: Path, store_url: str, **store: object) -> Config:
    return Config(
        site=SiteSection(data_dir=tmp_path / "data"),
        store=StoreSection(url=store_url, retry_min_s=0.05, retry_max_s=0.2, **store),
        mqtt=MqttSection(enabled=False),
        evidence=EvidenceSection(every_nth_normal=2, queue_size=1),
        http=HttpSection(port=0),
    )


@pytest.fixture
def running() -> Iterator[Callable[[Config, Journal], Outputs]]:
    """Start Outputs for a test and always stop them (their threads are not daemons: a failed test must
    not hang the session)."""
    started: list[tuple[Outputs, Journal]] = []

    def start(config: Config, journal: Journal, **kwargs: object) -> Outputs:
        outputs = Outputs(config, journal, SystemClock(), handlers=None, **kwargs)  # type: ignore[arg-type]
        started.append((outputs, journal))
        outputs.start()
        return outputs

    yield start  # type: ignore[misc]
    for outputs, journal in started:
        outputs.stop_intake()
        outputs.stop()
        journal.close()


def _stored(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as connection:
        count = int(connection.execute(select(func.count()).select_from(Inspection)).scalar_one())
    engine.dispose()
    return count


def test_a_store_down_at_start_delays_the_store_not_the_daemon(
    tmp_path: Path,
    postgres_server: PostgresServer,
    postgres_url: str,
    caplog: pytest.LogCaptureFixture,
    running: Callable[..., Outputs],
) -> None:
    postgres_server.stop()
    try:
        journal = Journal(tmp_path / "journal.sqlite3", SystemClock())
        with caplog.at_level(logging.ERROR, logger="linewatch.daemon.outputs"):
            running(_config(tmp_path, postgres_url), journal)
        assert "store not ready" in caplog.text and "test-secret-pw" not in caplog.text
        journal.append_batch([make_verdict(index) for index in range(1, 6)], [])
        assert journal.backlog("db") == 5
    finally:
        postgres_server.start()
    wait_until(lambda: journal.backlog("db") == 0, timeout=30, interval=0.05)  # migrated, then caught up
    assert _stored(postgres_url) == 5


def test_without_upgrade_at_start_an_old_schema_holds_the_store_back(
    tmp_path: Path, running: Callable[..., Outputs]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    journal = Journal(tmp_path / "journal.sqlite3", SystemClock())
    outputs = running(_config(tmp_path, url, upgrade_at_start=False), journal)
    journal.append_batch([make_verdict(1)], [])
    wait_until(lambda: outputs.runners[0].stats.failures >= 2, timeout=10, interval=0.05)
    assert "linewatch db upgrade" in (outputs.runners[0].stats.last_error or "")
    assert journal.backlog("db") == 1  # held in the journal, not lost
    upgrade_database(url, tmp_path / "backups")  # the operator runs `linewatch db upgrade`
    wait_until(lambda: journal.backlog("db") == 0, timeout=10, interval=0.05)
    assert _stored(url) == 1


def test_verdicts_carry_evidence_paths_only_when_the_evidence_was_queued(
    tmp_path: Path, running: Callable[..., Outputs]
) -> None:
    url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    journal = Journal(tmp_path / "journal.sqlite3", SystemClock())
    outputs = running(_config(tmp_path, url), journal, free_bytes=lambda: 10**12)
    assert outputs.evidence is not None
    outputs.evidence.stop()  # a stopped writer refuses every job, as a full queue would
    frame_ts = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    frames = [Frame("cam1", i, frame_ts, 0.0, np.zeros((8, 8, 3), np.uint8), "p") for i in (1, 2, 3)]
    # scores far from the threshold: no close call, only the every-Nth rule decides for the normals
    verdicts = [make_verdict(1, label=VerdictLabel.DEFECT), make_verdict(2, score=0.1), make_verdict(3, score=0.1)]
    maps = [np.zeros((4, 4), np.float32)] * 3
    assert [(v.snapshot, v.heatmap) for v in outputs.with_evidence(frames, verdicts, maps)] == [(None, None)] * 3
    # Wanted: the defect and the first normal (every 2nd normal); the second normal was never submitted.
    assert outputs.evidence.stats.dropped == {"stopped": 2}


class OfferedRecords:
    """A forwarder that acknowledges the first ``accept`` records of each chunk."""

    name = "mqtt"
    kinds = frozenset({"event", "verdict"})

    def __init__(self, accept: int) -> None:
        self.accept = accept

    def send(self, records: Sequence[JournalRecord]) -> int:
        return min(self.accept, len(records))


def test_alert_timer_times_new_episodes_that_the_broker_acknowledged() -> None:
    clock = FakeClock(start=T0 + timedelta(seconds=10))
    seen: list[float] = []
    new = make_event("e1", 1)  # captured at T0 + 1 s
    update = make_event("e1", 2)
    ended = make_event("e1", 3, type=EventType.END)
    later = make_event("e2", 1, camera="cam2", frame_ts=T0 + timedelta(seconds=9))
    records = [
        JournalRecord(position, "event", f"{e.event_id}:{e.seq}", e.camera, event_payload(e), "")
        for position, e in enumerate((new, update, ended, later), start=1)
    ]
    verdict = make_verdict(1)
    records.insert(1, JournalRecord(9, "verdict", verdict.inspection_id, "cam1", verdict_payload(verdict), ""))
    timer = AlertTimer(OfferedRecords(accept=4), clock, seen.append)
    assert (timer.name, timer.kinds) == ("mqtt", OfferedRecords.kinds)
    assert timer.send(records) == 4
    assert seen == [9.0]  # only the new episode among the acknowledged ones; e2 was not acknowledged yet

"""The DB forwarder fed by a real journal (verdicts and episodes from the real events.step, labels as the
feedback path journals them), on SQLite and on a real PostgreSQL (tests.services.postgres)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from linewatch.clock import FakeClock
from linewatch.pipeline.events import EpisodePolicy, initial_state, step
from linewatch.pipeline.journal.forwarding import ForwarderRunner
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import JournalRecord, parse_ts
from linewatch.sinks.db import DatabaseError, confirmed_normal_inspections, inspection_counts, make_engine
from linewatch.sinks.db_forwarder import DbForwarder
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.db_schema import ActionRecord, DefectEvent, Inspection, LabelRecord
from linewatch.types import Action, Event, Label, LabelTarget, Verdict, VerdictLabel
from tests.services.postgres import PostgresServer

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
THRESHOLD = 0.5
POLICY = EpisodePolicy(debounce_n=1, debounce_m=1, end_after_s=2.0, update_min_interval_s=0.0)
# One episode: new at seq 3 (0.7), updates at 4 (0.8) and 6 (0.9), end at seq 10 (2 s after the last defect).
SCORES = [0.1, 0.2, 0.7, 0.8, 0.65, 0.9, 0.3, 0.2, 0.1, 0.1, 0.1, 0.2]


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Engine]:
    upgrade_database(store_url, tmp_path / "backups")
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.sqlite3", FakeClock(T0)) as journal:
        journal.register_forwarder("db")
        yield journal


class Line:
    """One camera's frames, 0.5 s apart, folded into episodes by the real events.step and journaled in batches
    of 4, as the daemon does. Successive ``run`` calls continue the same line (seq, time, open episode)."""

    def __init__(self, journal: Journal, camera: str, start: datetime = T0, first_seq: int = 1) -> None:
        self.journal, self.camera, self.start = journal, camera, start
        self.first_seq = self.next_seq = first_seq
        self.state = initial_state()

    def run(self, scores: list[float]) -> tuple[list[Verdict], list[Event]]:
        verdicts: list[Verdict] = []
        events: list[Event] = []
        for batch_start in range(0, len(scores), 4):
            batch_verdicts, batch_events = [], []
            for score in scores[batch_start : batch_start + 4]:
                verdict = self._verdict(self.next_seq, score)
                self.next_seq += 1
                self.state, new_events = step(self.state, verdict, POLICY)
                batch_verdicts.append(verdict)
                batch_events += new_events
            self.journal.append_batch(batch_verdicts, batch_events)
            verdicts += batch_verdicts
            events += batch_events
        return verdicts, events

    def _verdict(self, seq: int, score: float) -> Verdict:
        defect = score >= THRESHOLD
        inspection_id = f"{self.camera}-boot1-{seq}"
        return Verdict(
            inspection_id=inspection_id,
            camera=self.camera,
            product="metal plate",
            seq=seq,
            frame_ts=self.start + timedelta(seconds=0.5 * (seq - self.first_seq)),
            captured_mono=100.0 + seq,
            score=score,
            threshold=THRESHOLD,
            label=VerdictLabel.DEFECT if defect else VerdictLabel.NORMAL,
            model_version="v1",
            part_id=f"P-{seq}" if seq % 2 else None,
            snapshot=f"{self.camera}/2026-03-02/{inspection_id}.jpg" if defect else None,
            heatmap=f"{self.camera}/2026-03-02/{inspection_id}-heatmap.jpg" if defect else None,
        )


def inspect_line(
    journal: Journal, camera: str, scores: list[float], start: datetime = T0, first_seq: int = 1
) -> tuple[list[Verdict], list[Event]]:
    return Line(journal, camera, start, first_seq).run(scores)


def label(target: LabelTarget, target_id: str, value: str, minutes: float, label_id: str, camera: str = "cam1"):
    return Label(
        label_id=label_id,
        target=target,
        target_id=target_id,
        camera=camera,
        label=VerdictLabel(value),
        source="cli",
        labelled_at=T0 + timedelta(minutes=minutes),
        user="ana",
    )


def all_records(journal: Journal, kind: str | None = None) -> list[JournalRecord]:
    """Everything journaled (of one kind), whatever the db forwarder's cursor: read on a cursor that never moves."""
    journal.register_forwarder("audit")
    return journal.read_after("audit", 10_000, kinds=None if kind is None else {kind})


def drain(journal: Journal, forwarder: DbForwarder, batch_size: int = 5) -> ForwarderRunner:
    runner = ForwarderRunner(journal, forwarder, threading.Event(), FakeClock(T0), batch_size=batch_size)
    runner.flush()
    return runner


def dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the three tables the forwarder writes, in key order."""
    with engine.connect() as conn:
        return {
            entity.__tablename__: [tuple(row) for row in conn.execute(select(entity).order_by(*key))]
            for entity, key in (
                (Inspection, [Inspection.id]),
                (DefectEvent, [DefectEvent.event_id]),
                (LabelRecord, [LabelRecord.label_id]),
            )
        }


def rows_by_id(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {row.id: row for row in conn.execute(select(Inspection))}


def event_row(engine: Engine, event_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(DefectEvent).where(DefectEvent.event_id == event_id)).one()


def test_verdicts_and_an_episode_round_trip_field_by_field(store: Engine, journal: Journal) -> None:
    _, events = inspect_line(journal, "cam1", SCORES)
    assert [e.type for e in events] == ["new", "update", "update", "end"]
    records = all_records(journal)
    forwarder = DbForwarder(store)

    drain(journal, forwarder)

    assert journal.backlog("db") == 0
    rows = rows_by_id(store)
    for record in (r for r in records if r.kind == "verdict"):
        p, row = record.payload, rows[record.key]
        assert row.frame_ts == parse_ts(p["frame_ts"]) and row.frame_ts.tzinfo is not None
        assert (row.camera, row.product, row.seq, row.score, row.threshold, row.verdict, row.model_version) == (
            p["camera"], p["product"], p["seq"], p["score"], p["threshold"], p["label"], p["model_version"],
        )  # fmt: skip
        assert (row.part_id, row.snapshot, row.heatmap, row.journal_position) == (
            p["part_id"], p["snapshot"], p["heatmap"], record.position,
        )  # fmt: skip
        assert (row.label, row.label_source, row.label_user, row.labelled_at, row.trained_into) == (None,) * 5
    new, _, peak, end = events
    episode = event_row(store, new.event_id)
    assert (episode.camera, episode.product, episode.threshold, episode.model_version) == (
        "cam1",
        "metal plate",
        0.5,
        "v1",
    )
    assert (episode.started_at, episode.last_at, episode.ended_at) == (new.frame_ts, end.frame_ts, end.frame_ts)
    assert (episode.last_type, episode.last_seq, episode.peak_score) == ("end", 4, 0.9)
    assert (episode.first_inspection_id, episode.last_inspection_id) == (new.inspection_id, end.inspection_id)
    assert (episode.snapshot, episode.heatmap) == (peak.snapshot, peak.heatmap)
    assert episode.label is None
    assert inspection_counts(store) == {
        "inspections": 12, "defects": 4, "labelled": 0, "events": 1, "open_events": 0, "labels": 0,
    }  # fmt: skip
    assert (forwarder.stats.inspections, forwarder.stats.events, forwarder.stats.skipped) == (12, 4, 0)


def test_a_replayed_chunk_leaves_identical_rows(store: Engine, journal: Journal) -> None:
    inspect_line(journal, "cam1", SCORES)
    journal.append_batch([], [], [label(LabelTarget.INSPECTION, "cam1-boot1-2", "normal", 1, "l1")])
    records = all_records(journal)
    forwarder = DbForwarder(store)
    assert forwarder.send(records) == len(records)
    once = dump(store)

    assert forwarder.send(records) == len(records)
    assert forwarder.send(records[3:9]) == 6  # a replay from another chunk boundary

    assert dump(store) == once
    assert len(once["labels"]) == 1  # the label history did not grow either
    assert forwarder.send([]) == 0


def test_replayed_older_event_messages_never_move_an_episode_backwards(store: Engine, journal: Journal) -> None:
    _, events = inspect_line(journal, "cam1", SCORES)
    records = all_records(journal)
    messages = [r for r in records if r.kind == "event"]
    forwarder = DbForwarder(store)
    forwarder.send(records)
    final = event_row(store, events[0].event_id)

    for message in reversed(messages):  # every older message again, newest first
        forwarder.send([message])
    forwarder.send(messages[:2])

    assert event_row(store, events[0].event_id) == final
    assert final.ended_at is not None


def test_an_episode_whose_new_message_comes_late_ends_up_the_same(store: Engine, journal: Journal) -> None:
    """Never from one journal, but robust: a later message first creates the row, 'new' restores the start."""
    _, events = inspect_line(journal, "cam1", SCORES)
    records = all_records(journal)
    new, update_1, update_2, end = (r for r in records if r.kind == "event")
    forwarder = DbForwarder(store)
    forwarder.send([r for r in records if r.kind == "verdict"])

    forwarder.send([update_1])
    assert event_row(store, events[0].event_id).started_at == events[1].frame_ts
    forwarder.send([new, update_2, end])

    episode = event_row(store, events[0].event_id)
    assert (episode.started_at, episode.first_inspection_id) == (events[0].frame_ts, events[0].inspection_id)
    assert (episode.last_seq, episode.peak_score, episode.ended_at) == (4, 0.9, events[3].frame_ts)


def test_labels_reach_inspections_events_and_the_episodes_defect_frames(
    store: Engine, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    _, events = inspect_line(journal, "cam1", SCORES)
    inspect_line(journal, "cam2", SCORES)  # the same times on another camera: its frames are not judged
    inspect_line(journal, "cam1", [0.9, 0.9], start=T0 + timedelta(minutes=5), first_seq=100)  # a later episode
    event_id = events[0].event_id
    journal.append_batch(
        [],
        [],
        [
            label(LabelTarget.INSPECTION, "cam1-boot1-1", "normal", 10, "l-confirm"),
            label(LabelTarget.INSPECTION, "cam1-boot1-4", "defect", 30, "l-frame"),  # later than the event's
            label(LabelTarget.EVENT, event_id, "normal", 20, "l-event"),  # a false alarm
            label(LabelTarget.INSPECTION, "cam1-boot1-999", "normal", 21, "l-orphan"),
        ],
    )
    forwarder = DbForwarder(store)
    with caplog.at_level(logging.WARNING, logger="linewatch.sinks.db_forwarder"):
        drain(journal, forwarder, batch_size=7)

    rows = rows_by_id(store)
    labelled = {key: (row.label, row.label_source, row.label_user) for key, row in rows.items() if row.label}
    assert labelled == {
        "cam1-boot1-1": ("normal", "cli", "ana"),
        "cam1-boot1-3": ("normal", "cli", "ana"),  # the episode's defect frames...
        "cam1-boot1-4": ("defect", "cli", "ana"),  # ...except one judged later on its own
        "cam1-boot1-5": ("normal", "cli", "ana"),
        "cam1-boot1-6": ("normal", "cli", "ana"),
    }
    assert rows["cam1-boot1-3"].labelled_at == T0 + timedelta(minutes=20)
    episode = event_row(store, event_id)
    assert (episode.label, episode.label_user, episode.labelled_at) == ("normal", "ana", T0 + timedelta(minutes=20))
    assert "l-orphan" in caplog.text and "cam1-boot1-999" in caplog.text
    assert (forwarder.stats.labels, forwarder.stats.orphan_labels) == (4, 1)
    assert confirmed_normal_inspections(store) == {"cam1-boot1-1", "cam1-boot1-3", "cam1-boot1-5", "cam1-boot1-6"}

    before = dump(store)
    forwarder.send(all_records(journal, "verdict"))  # replayed verdicts never erase labels
    assert dump(store) == before
    forwarder.send(all_records(journal))  # nor does a full replay duplicate or change anything
    assert dump(store) == before
    assert len(before["labels"]) == 4


def test_confirmed_normals_used_by_a_retraining_are_not_offered_again(store: Engine, journal: Journal) -> None:
    inspect_line(journal, "cam1", SCORES[:4])
    labels = [label(LabelTarget.INSPECTION, f"cam1-boot1-{seq}", "normal", seq, f"l{seq}") for seq in (1, 2, 3)]
    journal.append_batch([], [], labels)
    drain(journal, DbForwarder(store))
    with store.begin() as conn:
        conn.execute(update(Inspection).where(Inspection.id == "cam1-boot1-1").values(trained_into="v2"))

    assert confirmed_normal_inspections(store) == {"cam1-boot1-2", "cam1-boot1-3"}
    assert confirmed_normal_inspections(store, unused_only=False) == {"cam1-boot1-1", "cam1-boot1-2", "cam1-boot1-3"}


@pytest.mark.parametrize(("drain_between", "batch_size"), [(True, 5), (False, 1), (False, 100)])
def test_a_label_on_an_open_episode_reaches_its_later_defect_frames(
    store: Engine, journal: Journal, drain_between: bool, batch_size: int
) -> None:
    """Journal order as the daemon writes it: a batch's verdicts, then the event messages they caused; labels
    come in whenever the operator gives them. Whether the store sees the label while the episode is open
    (drained in between) or in the same chunk as the later frames, or one record per chunk, every defect
    frame of the episode ends up with the episode's latest label, except one judged later on its own."""
    line = Line(journal, "cam1")
    forwarder = DbForwarder(store)

    def labelled() -> dict[str, tuple[str, datetime]]:
        return {key: (row.label, row.labelled_at) for key, row in rows_by_id(store).items() if row.label}

    _, opening = line.run([0.1, 0.2, 0.7, 0.8])  # new at seq 3, update at seq 4: open
    event_id = opening[0].event_id
    journal.append_batch([], [], [label(LabelTarget.EVENT, event_id, "normal", 20, "l-open")])
    first = ("normal", T0 + timedelta(minutes=20))
    if drain_between:
        drain(journal, forwarder, batch_size)
        assert event_row(store, event_id).ended_at is None
        assert labelled() == {"cam1-boot1-3": first, "cam1-boot1-4": first}

    _, later = line.run([0.65, 0.9, 0.3, 0.2])  # defect frames 5 and 6, an update at 6 (a new peak)
    if drain_between:
        drain(journal, forwarder, batch_size)
        assert labelled() == {f"cam1-boot1-{seq}": first for seq in (3, 4, 5, 6)}
    journal.append_batch([], [], [label(LabelTarget.INSPECTION, "cam1-boot1-5", "normal", 30, "l-frame")])
    journal.append_batch([], [], [label(LabelTarget.EVENT, event_id, "defect", 25, "l-rejudged")])
    _, closing = line.run([0.6, 0.1, 0.1, 0.1, 0.1, 0.2])  # defect frame 9, below the peak; the end at 13
    assert [e.type for e in later + closing] == ["update", "end"]
    drain(journal, forwarder, batch_size)

    rejudged, own = ("defect", T0 + timedelta(minutes=25)), ("normal", T0 + timedelta(minutes=30))
    assert labelled() == {f"cam1-boot1-{seq}": rejudged for seq in (3, 4, 6, 9)} | {"cam1-boot1-5": own}
    episode = event_row(store, event_id)
    assert (episode.label, episode.labelled_at, episode.ended_at) == (*rejudged, closing[-1].frame_ts)

    before = dump(store)
    forwarder.send(all_records(journal))  # a full replay, labels and all, changes nothing
    assert dump(store) == before


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_malformed_records_are_skipped_and_counted_not_fatal(
    store: Engine, journal: Journal, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the journal's parsers refuse is logged with its position and key, counted, and skipped."""
    inspect_line(journal, "cam1", SCORES[:1])
    good = all_records(journal)[0]
    verdict = good.payload
    bad_payloads: list[tuple[str, dict[str, Any], str]] = [
        ("verdict", {**verdict, "score": "high"}, "expected a finite number, got 'high'"),
        ("verdict", {**verdict, "score": float("nan")}, "expected a finite number, got nan"),
        ("verdict", {**verdict, "camera": ""}, "expected a non-empty string without NUL, got ''"),
        ("verdict", {**verdict, "seq": True}, "expected an integer, got True"),
        ("verdict", {**verdict, "frame_ts": "2026-03-02T08:00:00"}, "is not UTC ISO 8601"),
        ("event", {"event_id": "e", "type": "explode"}, "'explode' is not a valid EventType"),
        ("label", {"label_id": "l", "target": "camera"}, "'camera' is not a valid LabelTarget"),
        ("banana", {}, "unknown record kind 'banana'"),
    ]
    bad = [
        JournalRecord(10 + i, kind, f"k{i}", "cam1", payload, "") for i, (kind, payload, _) in enumerate(bad_payloads)
    ]
    forwarder = DbForwarder(store)

    with caplog.at_level(logging.ERROR, logger="linewatch.sinks.db_forwarder"):
        assert forwarder.send([*bad[:3], good, *bad[3:]]) == len(bad) + 1

    assert set(rows_by_id(store)) == {good.key}
    assert (forwarder.stats.skipped, forwarder.stats.inspections) == (len(bad), 1)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == len(bad)
    for line, record, (_, _, why) in zip(lines, bad, bad_payloads, strict=True):
        assert f"#{record.position} ({record.key})" in line and why in line


def test_a_postgresql_outage_delays_rows_but_loses_none(
    postgres_server: PostgresServer, postgres_url: str, journal: Journal, tmp_path: Path
) -> None:
    upgrade_database(postgres_url, tmp_path)
    engine = make_engine(postgres_url)
    forwarder = DbForwarder(engine)
    runner = ForwarderRunner(journal, forwarder, threading.Event(), FakeClock(T0), batch_size=8)
    try:
        inspect_line(journal, "cam1", SCORES)
        runner.flush()
        postgres_server.stop()
        try:
            inspect_line(journal, "cam1", SCORES, start=T0 + timedelta(minutes=1), first_seq=100)
            started = time.monotonic()
            with pytest.raises(DatabaseError, match=r"linewatch:\*\*\*@127\.0\.0\.1.*journal records not written"):
                forwarder.send(journal.read_after("db", 8))
            assert runner.run_once() == 0
            assert time.monotonic() - started < 6  # two attempts, each failing fast
            assert runner.stats.failures == 1 and journal.backlog("db") == 16
        finally:
            postgres_server.start()
        runner.flush()

        assert journal.backlog("db") == 0
        counts = inspection_counts(engine)
        assert (counts["inspections"], counts["events"], counts["open_events"]) == (24, 2, 0)
        assert set(rows_by_id(engine)) == {r.key for r in all_records(journal, "verdict")}
    finally:
        engine.dispose()


def test_actions_are_stored_once_however_often_they_are_replayed(store: Engine, journal: Journal) -> None:
    actions = [
        Action("a1", "camera_disabled", "mqtt: operator-anna", T0, "cam1", None),
        Action("a2", "retrain_requested", "web: erin", T0 + timedelta(seconds=1), None, "started: new batch"),
    ]
    journal.append_batch((), (), (), actions)
    forwarder = DbForwarder(store)
    drain(journal, forwarder)
    forwarder.send(all_records(journal, "action"))  # a replay
    with store.connect() as conn:
        columns = ActionRecord.action_id, ActionRecord.kind, ActionRecord.actor, ActionRecord.at, ActionRecord.camera
        stored = [tuple(row) for row in conn.execute(select(*columns, ActionRecord.detail).order_by(ActionRecord.at))]
    assert stored == [(a.action_id, a.kind, a.by, a.at, a.camera, a.detail) for a in actions]
    assert forwarder.stats.actions == 4 and forwarder.stats.skipped == 0

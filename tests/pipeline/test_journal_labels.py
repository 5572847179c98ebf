"""Journal schema 2: operator labels as a record kind, evidence paths in payloads, the 1 -> 2 migration."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from linewatch.clock import FakeClock
from linewatch.pipeline.journal.outbox import SCHEMA_VERSION, Journal
from linewatch.pipeline.journal.records import (
    event_from_payload,
    event_payload,
    label_from_payload,
    label_payload,
    verdict_from_payload,
    verdict_payload,
)
from linewatch.types import EndReason, EventType, Label, LabelTarget, VerdictLabel
from tests.pipeline.test_journal import make_event, make_verdict

# The schema exactly as linewatch 0.1 (journal version 1) created it.
_VERSION_1 = """
CREATE TABLE records (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('verdict', 'event')),
    key TEXT NOT NULL, camera TEXT NOT NULL, payload TEXT NOT NULL, committed_at TEXT NOT NULL,
    UNIQUE (kind, key));
CREATE TABLE forwarders (
    name TEXT PRIMARY KEY, position INTEGER NOT NULL CHECK (position >= 0),
    registered_at TEXT NOT NULL, updated_at TEXT NOT NULL);
PRAGMA user_version = 1;
"""


def make_label(target_id: str, target: LabelTarget = LabelTarget.INSPECTION, **changes: object) -> Label:
    fields: dict[str, object] = {
        "label_id": f"label-{target_id}",
        "target": target,
        "target_id": target_id,
        "camera": "cam1",
        "label": VerdictLabel.NORMAL,
        "source": "cli",
        "labelled_at": datetime(2026, 3, 4, 6, 0, tzinfo=UTC),
        "user": "anna",
    }
    fields.update(changes)
    return Label(**fields)  # type: ignore[arg-type]


def test_evidence_paths_and_labels_round_trip_through_json() -> None:
    verdict = make_verdict(3, snapshot="cam1/2026-03-04/x-defect.jpg", heatmap="cam1/2026-03-04/x-defect-heatmap.jpg")
    assert verdict_from_payload(json.loads(json.dumps(verdict_payload(verdict)))) == verdict
    event = make_event("ev-1", 2, snapshot="a.jpg", heatmap="b.jpg")
    assert event_from_payload(json.loads(json.dumps(event_payload(event)))) == event
    for label in (make_label("cam1-boot-3"), make_label("ev-1", LabelTarget.EVENT, user=None)):
        payload = label_payload(label)
        assert label_from_payload(json.loads(json.dumps(payload))) == label
        assert payload["labelled_at"] == "2026-03-04T06:00:00.000000Z"


def test_labels_are_journaled_after_the_batch_records_and_deduplicated(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3", FakeClock()) as journal:
        journal.register_forwarder("db")
        label = make_label("cam1-boot-1")
        assert journal.append_batch([make_verdict(1)], [], [label]) == [1, 2]
        assert journal.append_batch([], [], [label]) == [2]  # replay of the same submission
        records = journal.read_after("db", 10)
        assert [(r.kind, r.key) for r in records] == [("verdict", "cam1-boot-1"), ("label", label.label_id)]
        assert label_from_payload(records[1].payload) == label
        assert [r.kind for r in journal.read_after("db", 10, kinds={"label"})] == ["label"]


def test_camera_of_finds_journaled_inspections_and_episodes_only(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3", FakeClock()) as journal:
        journal.append_batch([make_verdict(1, camera="cam2")], [make_event("ev-9", 1, camera="cam2")])
        assert journal.camera_of(LabelTarget.INSPECTION, "cam2-boot-1") == "cam2"
        assert journal.camera_of(LabelTarget.EVENT, "ev-9") == "cam2"
        assert journal.camera_of(LabelTarget.INSPECTION, "ev-9") is None
        assert journal.camera_of(LabelTarget.EVENT, "cam2-boot-1") is None
        assert journal.camera_of(LabelTarget.INSPECTION, "nope") is None


def test_a_version_1_journal_is_migrated_keeping_records_and_cursors(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    raw = sqlite3.connect(path)
    raw.executescript(_VERSION_1)
    for position in (1, 2, 3):
        payload = json.dumps(verdict_payload(make_verdict(position)))
        raw.execute(
            "INSERT INTO records VALUES (?, 'verdict', ?, 'cam1', ?, '2026-03-04T05:00:00.000000Z')",
            (position, f"cam1-boot-{position}", payload),
        )
    raw.execute("INSERT INTO forwarders VALUES ('db', 2, 't', 't')")
    raw.commit()
    raw.close()
    with Journal(path, FakeClock()) as journal:
        assert journal.cursor("db") == 2 and journal.head() == 3
        assert [r.key for r in journal.read_after("db", 10)] == ["cam1-boot-3"]
        # New positions continue after the old ones, and labels are now accepted.
        assert journal.append_batch([make_verdict(4)], [], [make_label("cam1-boot-4")]) == [4, 5]
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()


def test_a_record_kind_outside_the_schema_is_refused_by_the_database(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3", FakeClock()) as journal:
        assert journal._conn is not None
        with pytest.raises(sqlite3.IntegrityError):
            journal._conn.execute("INSERT INTO records VALUES (NULL, 'photo', 'k', 'c', '{}', 't')")


def test_a_live_forwarder_can_start_at_the_head_and_keeps_its_cursor_afterwards(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite3", FakeClock()) as journal:
        journal.append_batch([make_verdict(1), make_verdict(2)], [make_event("ev-1", 1)])
        journal.register_forwarder("store")
        journal.register_forwarder("alerts", start_at_head=True)
        assert journal.backlogs() == {"alerts": 0, "store": 3}  # no past episode is re-alerted
        journal.append_batch([make_verdict(3)], [])
        journal.register_forwarder("alerts", start_at_head=True)  # a restart: the cursor stays where it was
        assert journal.backlogs() == {"alerts": 1, "store": 4}


def test_open_episodes_are_the_latest_messages_of_episodes_without_an_end(tmp_path: Path) -> None:
    """What a crash left open (issue 15, item 4), across cameras, in journal order; end reasons round-trip,
    and a record journaled before they existed reads as None."""
    with Journal(tmp_path / "journal.sqlite3", FakeClock()) as journal:
        journal.append_batch((), [make_event("ev-a", 1), make_event("ev-b", 1, camera="cam2")])
        journal.append_batch((), [make_event("ev-a", 2), make_event("ev-c", 1)])
        journal.append_batch((), [make_event("ev-c", 2, type=EventType.END, end_reason=EndReason.QUIET)])
        assert [(e.event_id, e.seq, e.camera) for e in journal.open_episodes()] == [
            ("ev-b", 1, "cam2"),
            ("ev-a", 2, "cam1"),
        ]
    ended = make_event("ev-c", 2, type=EventType.END, end_reason=EndReason.STOPPED)
    assert event_from_payload(event_payload(ended)) == ended
    old = {key: value for key, value in event_payload(ended).items() if key != "end_reason"}
    assert event_from_payload(old).end_reason is None


def test_a_version_2_journal_gains_the_holes_table_keeping_records_and_cursors(tmp_path: Path) -> None:
    """Schema 3 notes positions pruned from the middle for disk space (issue 15, item 3)."""
    path = tmp_path / "journal.sqlite3"
    with Journal(path, FakeClock()) as journal:
        journal.register_forwarder("db")
        journal.append_batch([make_verdict(1), make_verdict(2, label=VerdictLabel.DEFECT)], [])
    raw = sqlite3.connect(path)
    raw.execute("DROP TABLE holes")  # what a linewatch of schema 2 wrote
    raw.execute("PRAGMA user_version = 2")
    raw.commit()
    raw.close()
    with Journal(path, FakeClock()) as journal:
        assert journal.backlogs() == {"db": 2}
        assert journal.prune_for_space(1, ["db"]) == {"normal_verdict": 1}
        assert journal.backlogs() == {"db": 1}
        assert [r.key for r in journal.read_after("db", 10)] == ["cam1-boot-2"]
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    check.close()

"""Journal schema 4: actions (who switched a camera, asked for a retrain...) as a record kind, and the upgrade
from schema 3 that rebuilds the records table without letting positions start again behind a cursor."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from linewatch.clock import FakeClock
from linewatch.pipeline.journal.outbox import SCHEMA_VERSION, Journal
from linewatch.pipeline.journal.records import JournalError, action_from_payload, action_payload
from linewatch.types import Action
from tests.pipeline.test_journal import make_verdict

AT = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def make_action(action_id: str = "a1", **changes: object) -> Action:
    fields: dict[str, object] = {"action_id": action_id, "kind": "camera_disabled", "by": "mqtt: operator-anna",
                                 "at": AT, "camera": "cam1", "detail": None}  # fmt: skip
    fields.update(changes)
    return Action(**fields)  # type: ignore[arg-type]


def test_an_action_round_trips_through_json_and_a_bad_kind_is_refused() -> None:
    for action in (make_action(), make_action("a2", kind="rollback", camera=None, detail="v3: rolled_back")):
        assert action_from_payload(json.loads(json.dumps(action_payload(action)))) == action
    with pytest.raises(JournalError, match="camera_exploded"):
        action_from_payload({**action_payload(make_action()), "kind": "camera_exploded"})


def test_actions_are_journaled_in_order_with_verdicts_and_once_per_id(tmp_path: Path) -> None:
    with Journal(tmp_path / "journal.sqlite3", FakeClock(AT)) as journal:
        journal.register_forwarder("db")
        journal.append_batch([make_verdict(1)], [])
        first = journal.append_batch((), (), (), [make_action("a1"), make_action("a2", kind="retrain_requested",
                                                                                   camera=None)])  # fmt: skip
        assert journal.append_batch((), (), (), [make_action("a1")]) == first[:1]  # a replay: same position
        records = journal.read_after("db", 10)
        assert [(r.kind, r.key, r.camera) for r in records] == [
            ("verdict", "cam1-boot-1", "cam1"), ("action", "a1", "cam1"), ("action", "a2", ""),
        ]  # fmt: skip
        assert action_from_payload(records[2].payload).kind == "retrain_requested"
        assert journal.read_after("db", 10, kinds={"action"})[0].key == "a1"


def test_a_version_3_journal_keeps_records_cursors_and_its_position_counter(tmp_path: Path) -> None:
    """Upgrading rebuilds the records table (schema 3 to 5: actions, then parts, as kinds). A journal whose
    delivered records were all pruned is empty; the new table must still number on from where the old one
    stopped, or the forwarders (cursor 3) would skip the next records (positions 1, 2...)."""
    path = tmp_path / "journal.sqlite3"
    with Journal(path, FakeClock(AT)) as journal:
        journal.register_forwarder("db")
        journal.register_forwarder("mqtt")
        journal.append_batch([make_verdict(1), make_verdict(2), make_verdict(3)], [])
        journal.mark_done("db", 3)
        journal.mark_done("mqtt", 3)
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 3")  # schema 3 differs only in the kind CHECK: put it back
    raw.execute("PRAGMA writable_schema = ON")
    old_check = "replace(replace(sql, '''action'', ', ''), '''part'', ', '')"
    raw.execute(f"UPDATE sqlite_schema SET sql = {old_check} WHERE name = 'records'")
    raw.commit()
    raw.close()
    raw = sqlite3.connect(path)
    with pytest.raises(sqlite3.IntegrityError):  # it really is the old schema
        raw.execute("INSERT INTO records (kind, key, camera, payload, committed_at) VALUES ('action','x','','{}','t')")
    raw.execute("DELETE FROM records")  # delivered everywhere and pruned, as prune_delivered does
    raw.commit()
    raw.close()
    with Journal(path, FakeClock(AT)) as journal:
        assert journal.backlogs() == {"db": 0, "mqtt": 0}
        assert journal.append_batch([make_verdict(4)], (), (), [make_action()]) == [4, 5]
        assert journal.backlogs() == {"db": 2, "mqtt": 2}
        assert [(r.kind, r.key) for r in journal.read_after("db", 10)] == [("verdict", "cam1-boot-4"), ("action", "a1")]
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    check.close()

"""Operator feedback: the payload table every channel shares, and journaling against known ids only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from linewatch.clock import FakeClock
from linewatch.daemon.feedback import submit, submit_many
from linewatch.feedback import FeedbackError, FeedbackRequest, parse_feedback
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import label_from_payload
from linewatch.types import LabelTarget, VerdictLabel
from tests.pipeline.test_journal import make_event, make_verdict


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"inspection_id": "cam1-boot-1", "label": "normal"}',
         FeedbackRequest(LabelTarget.INSPECTION, "cam1-boot-1", VerdictLabel.NORMAL)),
        (b'{"event_id": "0c1d", "label": "defect", "user": "anna"}',
         FeedbackRequest(LabelTarget.EVENT, "0c1d", VerdictLabel.DEFECT, "anna")),
    ],
)
def test_valid_feedback_is_parsed(body: bytes, expected: FeedbackRequest) -> None:
    assert parse_feedback(body, 4096) == expected


@pytest.mark.parametrize(
    ("body", "reason", "fragment"),
    [
        (b"{not json", "bad_json", "not JSON"),
        (b"  ", "bad_json", "empty"),
        (b'{"inspection_id": "a", "inspection_id": "b", "label": "normal"}', "bad_json", "appears twice"),
        (b'{"inspection_id": "a", "label": NaN}', "bad_json", "NaN is not a JSON number"),
        (b"\xff\xfe\x00binary", "not_utf8", "UTF-8"),
        (b"[" * 2000 + b"]" * 2000, "bad_json", "nested too deeply"),
        (b"[1, 2]", "schema", "JSON object"),
        (b'"normal"', "schema", "JSON object"),
        (b'{"label": "normal"}', "schema", "exactly one of"),
        (b'{"inspection_id": "a", "event_id": "b", "label": "normal"}', "schema", "exactly one of"),
        (b'{"inspection_id": 7, "label": "normal"}', "schema", "inspection_id must be"),
        (b'{"inspection_id": "../etc/passwd", "label": "normal"}', "schema", "inspection_id must be"),
        (b'{"inspection_id": "' + b"a" * 200 + b'", "label": "normal"}', "schema", "at most 128"),
        (b'{"inspection_id": "a", "label": "ok"}', "schema", "label must be"),
        (b'{"inspection_id": "a", "label": null}', "schema", "label must be"),
        (b'{"inspection_id": "a", "label": "normal", "user": 5}', "schema", "user must be"),
        (b'{"inspection_id": "a", "label": "normal", "user": "a\\nb"}', "schema", "user must be"),
        (b'{"inspection_id": "a", "label": "normal", "extra": 1}', "schema", "unknown keys ['extra']"),
        (json.dumps({"inspection_id": "a", "label": "normal", "user": "x" * 5000}).encode(), "too_large", "exceeds"),
    ],
)
def test_bad_feedback_is_refused_with_a_reason_and_a_message(body: bytes, reason: str, fragment: str) -> None:
    with pytest.raises(FeedbackError) as caught:
        parse_feedback(body, 4096)
    assert caught.value.reason == reason and fragment in str(caught.value)


def test_submit_journals_labels_for_known_ids_and_refuses_the_rest(tmp_path: Path) -> None:
    clock = FakeClock()
    with Journal(tmp_path / "j.sqlite3", clock) as journal:
        journal.register_forwarder("db")
        journal.append_batch([make_verdict(1, camera="cam2")], [make_event("ev-1", 1, camera="cam2")])
        label = submit(journal, clock, FeedbackRequest(LabelTarget.EVENT, "ev-1", VerdictLabel.NORMAL, "bo"), "mqtt")
        assert (label.camera, label.source, label.user, label.labelled_at) == ("cam2", "mqtt", "bo", clock.now())
        with pytest.raises(FeedbackError) as unknown:
            submit(journal, clock, FeedbackRequest(LabelTarget.INSPECTION, "cam2-boot-9", VerdictLabel.NORMAL), "cli")
        assert unknown.value.reason == "unknown_id"
        request = FeedbackRequest(LabelTarget.INSPECTION, "cam2-boot-1", VerdictLabel.DEFECT)
        with pytest.raises(FeedbackError) as wrong:
            submit(journal, clock, request, "mqtt", camera="cam1")
        assert wrong.value.reason == "wrong_camera" and "cam2" in str(wrong.value)
        second = submit(journal, clock, request, "http", camera="cam2")
        labels = [label_from_payload(r.payload) for r in journal.read_after("db", 10, kinds={"label"})]
        assert labels == [label, second]  # refused requests left nothing behind
        assert label.label_id != second.label_id


def test_a_repeated_judgement_is_journaled_once_but_a_changed_mind_always(tmp_path: Path) -> None:
    clock = FakeClock()
    with Journal(tmp_path / "j.sqlite3", clock) as journal:
        journal.register_forwarder("db")
        journal.append_batch([make_verdict(1)], [])
        normal = FeedbackRequest(LabelTarget.INSPECTION, "cam1-boot-1", VerdictLabel.NORMAL, "op")
        defect = FeedbackRequest(LabelTarget.INSPECTION, "cam1-boot-1", VerdictLabel.DEFECT, "op")
        first = submit(journal, clock, normal, "mqtt")
        assert submit(journal, clock, normal, "mqtt") == first  # a QoS 1 redelivery
        changed = submit(journal, clock, defect, "mqtt")
        back = submit(journal, clock, normal, "mqtt")  # changed back: news, even though it matches the first
        clock.advance(61)
        later = submit(journal, clock, normal, "mqtt")  # outside the window: a new judgement
        labels = [label_from_payload(r.payload) for r in journal.read_after("db", 10, kinds={"label"})]
        assert labels == [first, changed, back, later]
        assert len({label.label_id for label in labels}) == 4


def test_a_burst_of_labels_is_one_transaction_with_repeats_and_refusals_sorted_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15, item 12: a flood over MQTT was one fsync per label. A burst is now one append_batch."""
    clock = FakeClock()
    with Journal(tmp_path / "j.sqlite3", clock) as journal:
        journal.register_forwarder("db")
        journal.append_batch([make_verdict(seq) for seq in range(1, 101)], [])
        seventh = FeedbackRequest(LabelTarget.INSPECTION, "cam1-boot-7", VerdictLabel.NORMAL)
        earlier = submit(journal, clock, seventh, "mqtt")
        batches: list[int] = []
        append = journal.append_batch

        def counting_append(verdicts: Any, events: Any, labels: Any = ()) -> list[int]:
            batches.append(len(labels))
            return append(verdicts, events, labels)

        monkeypatch.setattr(journal, "append_batch", counting_append)
        requests: list[tuple[FeedbackRequest, str | None]] = [
            (FeedbackRequest(LabelTarget.INSPECTION, f"cam1-boot-{seq}", VerdictLabel.NORMAL), "cam1")
            for seq in range(1, 101)
        ]
        requests.insert(50, (FeedbackRequest(LabelTarget.INSPECTION, "cam1-boot-999", VerdictLabel.NORMAL), "cam1"))
        requests.insert(60, (FeedbackRequest(LabelTarget.INSPECTION, "cam1-boot-3", VerdictLabel.NORMAL), "cam2"))
        requests.append(requests[0])  # a QoS 1 redelivery within the burst
        requests.append((FeedbackRequest(LabelTarget.INSPECTION, "cam1-boot-2", VerdictLabel.DEFECT), None))
        outcomes = submit_many(journal, clock, requests, "mqtt")
        assert batches == [100]  # 99 new labels and a changed mind; the two repeats are not journaled again
        refused = {i: o.reason for i, o in enumerate(outcomes) if isinstance(o, FeedbackError)}
        assert refused == {50: "unknown_id", 60: "wrong_camera"}
        assert outcomes[6] == earlier  # repeats a label journaled before the burst
        assert outcomes[-2] == outcomes[0]  # repeats one made in the burst
        assert outcomes[-1].label == VerdictLabel.DEFECT and outcomes[-1] != outcomes[2]
        labels = [label_from_payload(r.payload) for r in journal.read_after("db", 500, kinds={"label"})]
        journaled = [o for i, o in enumerate(outcomes) if i not in refused and i not in (6, len(outcomes) - 2)]
        assert labels == [earlier, *journaled]  # in request order, each once

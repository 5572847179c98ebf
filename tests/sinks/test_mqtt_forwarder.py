"""The MQTT forwarder: journal records -> defect events and verdict tiles, delivered only on PUBACK, in
order, replayed after outages. Against a real Mosquitto (driven by a real Journal and ForwarderRunner),
and with a fake paho client where the test decides which messages are acknowledged."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.enums import MQTTErrorCode

from linewatch.clock import SystemClock
from linewatch.config import MqttSection
from linewatch.pipeline.journal.forwarding import ForwarderRunner
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import JournalRecord, event_payload, verdict_payload
from linewatch.sinks.mqtt import MqttForwarder, MqttLink, MqttUnavailable
from linewatch.sinks.mqtt_payloads import Topics
from linewatch.types import Event, EventType, Verdict, VerdictLabel
from tests.services.mosquitto import MosquittoBroker, MqttWatcher, Seen
from tests.sinks.mqtt_fakes import FakeClient, FakeFactory, RecordingHandlers

T0 = datetime(2026, 1, 1, 8, tzinfo=UTC)


def verdict(camera: str, n: int, label: VerdictLabel = VerdictLabel.NORMAL) -> Verdict:
    return Verdict(
        inspection_id=f"{camera}-boot-{n}", camera=camera, product="metal plate", seq=n,
        frame_ts=T0 + timedelta(milliseconds=n), captured_mono=float(n), score=0.9 if label == "defect" else 0.1,
        threshold=0.5, label=label, model_version="v1", snapshot=f"{camera}/2026-01-01/{camera}-boot-{n}.jpg",
    )  # fmt: skip


def event(camera: str, episode: int, seq: int, type_: EventType, n: int) -> Event:
    return Event(
        event_id=f"ev-{camera}-{episode}", type=type_, seq=seq, camera=camera, product="metal plate",
        frame_ts=T0 + timedelta(milliseconds=n), score=0.9, threshold=0.5, label=VerdictLabel.DEFECT,
        model_version="v1", inspection_id=f"{camera}-boot-{n}", part_id="P-7" if seq == 1 else None,
        snapshot=f"{camera}/2026-01-01/{camera}-boot-{n}.jpg",
        heatmap=f"{camera}/2026-01-01/{camera}-boot-{n}-heat.jpg",
    )  # fmt: skip


def episode(camera: str, number: int, length: int, start: int) -> list[Event]:
    types = [EventType.NEW] + [EventType.UPDATE] * (length - 2) + [EventType.END]
    return [event(camera, number, seq, t, start + seq) for seq, t in enumerate(types, start=1)]


def record(position: int, item: Verdict | Event) -> JournalRecord:
    if isinstance(item, Verdict):
        return JournalRecord(position, "verdict", item.inspection_id, item.camera, verdict_payload(item), "")
    return JournalRecord(position, "event", f"{item.event_id}:{item.seq}", item.camera, event_payload(item), "")


def event_ids(seen: list[Seen]) -> list[tuple[str, int]]:
    return [(m["event_id"], m["seq"]) for m in (json.loads(s.payload) for s in seen if s.topic.endswith("/defect"))]


def first_occurrences(pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return list(dict.fromkeys(pairs))


# --- against the real broker --------------------------------------------------------------------------------


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.sqlite3", SystemClock()) as journal:
        yield journal


@pytest.fixture
def link(broker: MosquittoBroker, mqtt_prefix: str) -> Iterator[MqttLink]:
    mqtt = MqttSection(
        host=broker.host, port=broker.port, keepalive_s=5, ack_timeout_s=1.0, reconnect_min_s=0.05, reconnect_max_s=0.2
    )
    link = MqttLink(mqtt, mqtt_prefix, f"lw-fw-{mqtt_prefix.split('/')[1]}", RecordingHandlers())
    link.start()
    assert link.wait_connected(5)
    yield link
    link.stop()


@pytest.fixture
def runner(journal: Journal, link: MqttLink) -> ForwarderRunner:
    return ForwarderRunner(journal, MqttForwarder(link, "plant", "line1"), threading.Event(), SystemClock())


def drain(runner: ForwarderRunner, journal: Journal, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while journal.backlog("mqtt") and time.monotonic() < deadline:
        runner.run_once()
    assert journal.backlog("mqtt") == 0, runner.stats


def test_events_and_the_latest_verdict_per_camera_go_out_in_journal_order(
    broker: MosquittoBroker, mqtt_prefix: str, journal: Journal, runner: ForwarderRunner
) -> None:
    topics = Topics(mqtt_prefix)
    events = episode("cam1", 1, 3, 10) + episode("cam_2", 1, 2, 20)
    verdicts = [verdict("cam1", n) for n in (1, 2, 3)] + [verdict("cam_2", 1, VerdictLabel.DEFECT)]
    with MqttWatcher(broker, f"{mqtt_prefix}/+/defect", f"{mqtt_prefix}/+/verdict") as watcher:
        journal.append_batch(verdicts, events)
        drain(runner, journal)
        seen = watcher.wait_until(lambda seen: len(seen) == len(events) + 2)
    assert event_ids(seen) == [(e.event_id, e.seq) for e in events]
    first = json.loads(next(s for s in seen if s.topic == topics.defect("cam1")).payload)
    assert first == {
        "event_id": "ev-cam1-1", "type": "new", "seq": 1, "site": "plant", "line": "line1", "camera": "cam1",
        "product": "metal plate", "frame_ts": "2026-01-01T08:00:00.011000Z", "score": 0.9, "threshold": 0.5,
        "verdict": "defect", "model_version": "v1", "inspection_id": "cam1-boot-11", "part_id": "P-7",
        "snapshot": "cam1/2026-01-01/cam1-boot-11.jpg", "heatmap": "cam1/2026-01-01/cam1-boot-11-heat.jpg",
        "snapshot_url": None, "heatmap_url": None, "end_reason": None,  # no [web] public_url here
    }  # fmt: skip
    tiles = {s.topic: (json.loads(s.payload), s.retain) for s in seen if s.topic.endswith("/verdict")}
    assert set(tiles) == {topics.verdict("cam1"), topics.verdict("cam_2")}  # only the latest of each camera
    assert tiles[topics.verdict("cam1")][0] == {
        "inspection_id": "cam1-boot-3", "site": "plant", "line": "line1", "camera": "cam1",
        "product": "metal plate", "frame_ts": "2026-01-01T08:00:00.003000Z", "score": 0.1, "threshold": 0.5,
        "verdict": "normal", "model_version": "v1", "snapshot": "cam1/2026-01-01/cam1-boot-3.jpg", "heatmap": None,
        "snapshot_url": None, "heatmap_url": None,
    }  # fmt: skip
    assert all(s.qos == 1 and not s.retain for s in seen if s.topic.endswith("/defect"))
    with MqttWatcher(broker, f"{mqtt_prefix}/+/verdict") as late:
        retained = late.wait_until(lambda seen: len(seen) == 2)
    assert all(s.retain for s in retained)


def test_a_hung_broker_delays_delivery_and_the_original_messages_are_awaited(
    broker: MosquittoBroker, mqtt_prefix: str, journal: Journal, runner: ForwarderRunner
) -> None:
    events = episode("cam1", 1, 4, 0)
    with MqttWatcher(broker, f"{mqtt_prefix}/+/defect") as watcher:
        journal.append_batch([], events[:2])
        drain(runner, journal)
        journal.append_batch([], events[2:])
        broker.pause()  # the connection stays up, but no PUBACK comes
        try:
            assert runner.run_once() == 0  # published, not acknowledged within ack_timeout_s
            assert journal.backlog("mqtt") == 2
        finally:
            broker.resume()
        drain(runner, journal)  # waits for the same messages; nothing is published twice
        seen = watcher.wait_until(lambda seen: len(seen) == 4)
        watcher.publish(f"{mqtt_prefix}/x/defect", json.dumps({"event_id": "marker", "seq": 0}))
        seen = watcher.wait_until(lambda seen: any(s.topic.endswith("x/defect") for s in seen))
    assert event_ids(seen)[:-1] == [(e.event_id, e.seq) for e in events]  # exactly once each, in order


def test_events_in_flight_at_a_broker_crash_and_journaled_while_it_is_down_arrive_in_order(
    broker: MosquittoBroker, mqtt_prefix: str, journal: Journal, link: MqttLink, runner: ForwarderRunner
) -> None:
    events = episode("cam1", 1, 5, 0) + episode("cam_2", 1, 3, 10) + episode("cam1", 2, 2, 20)
    with MqttWatcher(broker, f"{mqtt_prefix}/+/defect", persistent=True) as watcher:  # an HMI keeping its session
        broker.stop()  # a clean restart saves the watcher's session, so the crash below cannot lose it
        broker.start()
        assert link.wait_connected(5)
        journal.append_batch([verdict("cam1", 1)], events[:3])
        drain(runner, journal)
        broker.pause()
        journal.append_batch([], events[3:6])
        assert runner.run_once() == 0  # published but never acknowledged: the broker crashes before reading them
        broker.kill()
        deadline = time.monotonic() + 5
        while link.connected and time.monotonic() < deadline:
            time.sleep(0.01)
        journal.append_batch([verdict("cam1", 2)], events[6:])  # journaled while the broker is down
        assert runner.run_once() == 0
        assert "MqttUnavailable" in (runner.stats.last_error or "")
        broker.start()
        assert link.wait_connected(5)
        drain(runner, journal)
        seen = watcher.wait_until(lambda seen: len(set(event_ids(seen))) == len(events))
    expected = [(e.event_id, e.seq) for e in events]
    assert first_occurrences(event_ids(seen)) == expected  # none lost, none reordered
    assert set(event_ids(seen)) == set(expected)  # duplicates, if any, are redeliveries of the same messages


# --- with a fake client: which messages are acknowledged is up to the test -----------------------------------


def fake_link(ack_timeout_s: float) -> tuple[MqttLink, FakeClient]:
    factory = FakeFactory()
    link = MqttLink(MqttSection(ack_timeout_s=ack_timeout_s), "p/l", "lw", RecordingHandlers(), client_factory=factory)
    link.start()
    assert link.connected
    factory.clients[0].puback()  # "online"
    return link, factory.clients[0]


@pytest.fixture
def fake() -> Iterator[tuple[MqttLink, FakeClient]]:
    link, client = fake_link(ack_timeout_s=0.2)
    yield link, client
    link.stop()


def published(client: FakeClient, suffix: str) -> list[dict[str, Any]]:
    return [json.loads(s.payload) for s in client.sent if s.topic.endswith(suffix)]


def test_only_the_acknowledged_prefix_counts_and_unacknowledged_messages_are_not_sent_again(
    fake: tuple[MqttLink, FakeClient],
) -> None:
    link, client = fake
    forwarder = MqttForwarder(link, "s", "l")
    records = [record(n, e) for n, e in enumerate(episode("cam1", 1, 4, 0), start=1)]
    client.auto_ack = 2
    began = time.monotonic()
    assert forwarder.send(records) == 2
    assert time.monotonic() - began >= 0.2  # waited ack_timeout_s for the rest
    assert len(published(client, "/defect")) == 4
    assert forwarder.send(records[2:]) == 0  # still unacknowledged: waits again, publishes nothing
    client.puback(1)
    assert forwarder.send(records[2:]) == 1
    client.puback()
    assert forwarder.send(records[3:]) == 1
    assert [m["seq"] for m in published(client, "/defect")] == [1, 2, 3, 4]  # each exactly once


def test_only_the_latest_verdict_of_each_camera_is_published_and_superseded_ones_count(
    fake: tuple[MqttLink, FakeClient],
) -> None:
    link, client = fake
    forwarder = MqttForwarder(link, "s", "l")
    items: list[Verdict | Event] = [
        verdict("cam1", 1), event("cam1", 1, 1, EventType.NEW, 2), verdict("cam1", 2), verdict("cam_2", 1),
        verdict("cam1", 3),
    ]  # fmt: skip
    records = [record(n, item) for n, item in enumerate(items, start=1)]
    assert forwarder.send(records) == 1  # verdict 1 is superseded (delivered), the event is not acknowledged
    assert [(s.topic, s.retain) for s in client.sent if s.topic != "p/l/available"] == [
        ("p/l/cam1/defect", False),
        ("p/l/cam_2/verdict", True),
        ("p/l/cam1/verdict", True),
    ]
    assert all(s.qos == 1 for s in client.sent)
    client.puback()
    assert forwarder.send(records[1:]) == 4
    assert len(client.sent) == 4  # "online" and the three above, nothing again
    assert published(client, "/cam1/verdict")[0]["inspection_id"] == "cam1-boot-3"


def test_a_lost_connection_ends_the_wait_early_and_send_refuses_until_reconnected() -> None:
    link, client = fake_link(ack_timeout_s=5.0)  # a wait that would be noticed
    forwarder = MqttForwarder(link, "s", "l")
    records = [record(n, e) for n, e in enumerate(episode("cam1", 1, 3, 0), start=1)]
    threading.Timer(0.05, client.drop).start()
    began = time.monotonic()
    assert forwarder.send(records) == 0
    assert time.monotonic() - began < 2.0
    with pytest.raises(MqttUnavailable):
        forwarder.send(records)
    client.reconnect()  # paho would now resend the three in-flight messages itself
    client.puback()
    assert forwarder.send(records) == 3
    assert len(published(client, "/defect")) == 3  # not published a second time
    assert (link.stats.connects, link.stats.disconnects) == (2, 1)
    link.stop()


def test_messages_are_compact_json_with_a_fixed_key_order(fake: tuple[MqttLink, FakeClient]) -> None:
    link, client = fake
    forwarder = MqttForwarder(link, "s", "l", "https://press3.plant:9108/")
    client.auto_ack = 10
    items = [event("cam1", 1, 1, EventType.NEW, 7), verdict("cam1", 8, VerdictLabel.DEFECT)]
    assert forwarder.send([record(n, item) for n, item in enumerate(items, start=1)]) == 2
    base = "https://press3.plant:9108/evidence/cam1/2026-01-01/"
    assert client.on_topic("p/l/cam1/defect") == [
        b'{"event_id":"ev-cam1-1","type":"new","seq":1,"site":"s","line":"l","camera":"cam1",'
        b'"product":"metal plate","frame_ts":"2026-01-01T08:00:00.007000Z","score":0.9,"threshold":0.5,'
        b'"verdict":"defect","model_version":"v1","inspection_id":"cam1-boot-7","part_id":"P-7",'
        b'"snapshot":"cam1/2026-01-01/cam1-boot-7.jpg","heatmap":"cam1/2026-01-01/cam1-boot-7-heat.jpg",'
        + f'"snapshot_url":"{base}cam1-boot-7.jpg","heatmap_url":"{base}cam1-boot-7-heat.jpg",'.encode()
        + b'"end_reason":null}'
    ]
    assert client.on_topic("p/l/cam1/verdict") == [
        b'{"inspection_id":"cam1-boot-8","site":"s","line":"l","camera":"cam1","product":"metal plate",'
        b'"frame_ts":"2026-01-01T08:00:00.008000Z","score":0.9,"threshold":0.5,"verdict":"defect",'
        b'"model_version":"v1","snapshot":"cam1/2026-01-01/cam1-boot-8.jpg","heatmap":null,'
        + f'"snapshot_url":"{base}cam1-boot-8.jpg","heatmap_url":null}}'.encode()
    ]


GOOD_EVENT = event_payload(event("cam1", 9, 1, EventType.NEW, 1))
GOOD_VERDICT = verdict_payload(verdict("cam1", 1))
BROKEN: list[tuple[str, dict[str, Any]]] = [
    ("event", {"event_id": "ev-x"}),
    ("event", {**GOOD_EVENT, "score": float("nan")}),
    ("event", {**GOOD_EVENT, "seq": True}),
    ("event", {**GOOD_EVENT, "type": "begin"}),
    ("event", {**GOOD_EVENT, "camera": ""}),
    ("event", {**GOOD_EVENT, "frame_ts": "2026-01-01T08:00:00"}),
    ("verdict", {**GOOD_VERDICT, "label": "maybe"}),
    ("verdict", {**GOOD_VERDICT, "threshold": "0.5"}),
    ("verdict", {**GOOD_VERDICT, "snapshot": 5}),
]


@pytest.mark.parametrize(("kind", "payload"), BROKEN)
def test_a_record_the_journal_cannot_parse_is_skipped_logged_and_counted_not_retried_forever(
    fake: tuple[MqttLink, FakeClient], caplog: pytest.LogCaptureFixture, kind: str, payload: dict[str, Any]
) -> None:
    link, client = fake
    forwarder = MqttForwarder(link, "s", "l")
    first, last = episode("cam1", 1, 2, 0)
    broken = JournalRecord(2, kind, "broken-1", "cam1", payload, "")
    records = [record(1, first), broken, record(3, last)]
    client.auto_ack = 10
    with caplog.at_level(logging.ERROR, logger="linewatch.sinks.mqtt"):
        assert forwarder.send(records) == 3
    assert forwarder.skipped == 1
    assert [m["seq"] for m in published(client, "/defect")] == [1, 2]
    assert published(client, "/verdict") == []
    assert [(r.levelno, "#2" in r.getMessage()) for r in caplog.records] == [(logging.ERROR, True)]


def test_a_publish_racing_a_disconnect_is_still_tracked(fake: tuple[MqttLink, FakeClient]) -> None:
    link, client = fake
    client.next_rc = MQTTErrorCode.MQTT_ERR_NO_CONN  # paho keeps such a QoS 1 message and resends it
    info = link.publish("p/l/cam1/defect", b"{}")
    assert info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
    client.puback()
    assert link.wait_acked([info], 1.0, link.epoch) == 1
    client.next_rc = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
    with pytest.raises(MqttUnavailable, match="refused"):
        link.publish("p/l/cam1/defect", b"{}")

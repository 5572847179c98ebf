"""Commands arriving over MQTT, through a real Mosquitto: every malformed payload on every subscribed topic
is rejected with its reason and counted, nothing crashes, valid ones reach the handlers and are echoed."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Literal

import pytest

from linewatch.clock import FakeClock
from linewatch.config import MqttSection
from linewatch.sinks.mqtt import MqttLink
from linewatch.sinks.mqtt_link import RECEIVE_MAXIMUM
from linewatch.sinks.mqtt_payloads import CommandTopic, Rejected, Topics, speaker, topic_kind
from linewatch.types import LabelTarget, VerdictLabel
from tests.services.mosquitto import MosquittoBroker, MqttWatcher, wait_until
from tests.sinks.mqtt_fakes import RecordingHandlers

FEEDBACK, ENABLED, RETRAIN = "cam1/feedback/set", "cam1/enabled/set", "retrain/set"

MALFORMED: list[tuple[str, bytes, tuple[str, str]]] = [
    (FEEDBACK, b"{not json", ("feedback", "bad_json")),
    (FEEDBACK, b"", ("feedback", "bad_json")),
    (FEEDBACK, b"\xff\xfe\x00\x01binary", ("feedback", "not_utf8")),
    (FEEDBACK, b'{"inspection_id": "' + b"x" * 5000 + b'"}', ("feedback", "too_large")),
    (FEEDBACK, b'{"inspection_id": "insp-1", "label": "normal", "label": "defect"}', ("feedback", "bad_json")),
    (FEEDBACK, b"[]", ("feedback", "schema")),
    (FEEDBACK, b'{"label": "normal"}', ("feedback", "schema")),
    (FEEDBACK, b'{"event_id": 5, "label": "normal"}', ("feedback", "schema")),
    (FEEDBACK, b'{"inspection_id": "insp-1", "label": "maybe"}', ("feedback", "schema")),
    (FEEDBACK, b'{"inspection_id": "insp-1", "label": "normal", "extra": 1}', ("feedback", "schema")),
    (FEEDBACK, b'{"inspection_id": "insp-1", "event_id": "ev-1", "label": "normal"}', ("feedback", "schema")),
    (FEEDBACK, b'{"inspection_id": "insp-1", "label": "normal", "user": "' + b"u" * 65 + b'"}', ("feedback", "schema")),
    (FEEDBACK, b'{"inspection_id": "../etc", "label": "normal"}', ("feedback", "schema")),
    (FEEDBACK, b'{"inspection_id": "unknown-1", "label": "normal"}', ("feedback", "unknown_id")),
    ("ghost/feedback/set", b'{"inspection_id": "insp-1", "label": "normal"}', ("feedback", "unknown_camera")),
    (ENABLED, b"yes", ("enabled", "bad_json")),
    (ENABLED, b"NaN", ("enabled", "bad_json")),
    (ENABLED, b'"true"', ("enabled", "schema")),
    (ENABLED, b"1", ("enabled", "schema")),
    (ENABLED, b'{"enabled": "true"}', ("enabled", "schema")),
    (ENABLED, b'{"enabled": true, "camera": "cam2"}', ("enabled", "schema")),
    ("ghost/enabled/set", b"true", ("enabled", "unknown_camera")),
    (RETRAIN, b"null", ("retrain", "schema")),
    (RETRAIN, b"[]", ("retrain", "schema")),
    (RETRAIN, b'{"reason": 5}', ("retrain", "schema")),
    (RETRAIN, b'{"reason": "' + b"r" * 201 + b'"}', ("retrain", "schema")),
    (RETRAIN, b'{"because": "x"}', ("retrain", "schema")),
    (RETRAIN, b"\x00" * 10, ("retrain", "bad_json")),
    (RETRAIN, b"[" * 2000 + b"]" * 2000, ("retrain", "bad_json")),  # nested deeper than the parser recurses
    (FEEDBACK, b'{"inspection_id": ' + b"[" * 2000 + b"]" * 2000 + b"}", ("feedback", "bad_json")),
    (RETRAIN, b'{"reason": "two\\nlines"}', ("retrain", "schema")),
    (RETRAIN, b'{"reason": "\\u001b[31mred"}', ("retrain", "schema")),
    ("bad cam/enabled/set", b"true", ("unknown", "bad_topic")),
    ("kamerä/feedback/set", b'{"inspection_id": "insp-1", "label": "normal"}', ("unknown", "bad_topic")),
    ("cam.1/enabled/set", b"true", ("unknown", "bad_topic")),
]


def make_link(
    broker: MosquittoBroker,
    prefix: str,
    handlers: RecordingHandlers,
    clock: FakeClock | None = None,
    protocol: Literal["5", "3.1.1"] = "5",
) -> MqttLink:
    mqtt = MqttSection(
        host=broker.host, port=broker.port, keepalive_s=5, reconnect_min_s=0.05, reconnect_max_s=0.2, protocol=protocol
    )
    return MqttLink(mqtt, prefix, f"lw-in-{prefix.split('/')[1]}", handlers, clock=clock)


@pytest.fixture
def handlers() -> RecordingHandlers:
    return RecordingHandlers()


@pytest.fixture
def link(broker: MosquittoBroker, mqtt_prefix: str, handlers: RecordingHandlers) -> Iterator[MqttLink]:
    link = make_link(broker, mqtt_prefix, handlers, FakeClock())
    link.start()
    assert link.wait_connected(5)
    yield link
    link.stop()


def test_malformed_commands_change_nothing_and_are_counted_by_reason(
    broker: MosquittoBroker, mqtt_prefix: str, link: MqttLink, handlers: RecordingHandlers
) -> None:
    with MqttWatcher(broker, f"{mqtt_prefix}/+/enabled", f"{mqtt_prefix}/retrain/state") as watcher:
        for suffix, payload, _ in MALFORMED:
            watcher.publish(f"{mqtt_prefix}/{suffix}", payload)
        wait_until(lambda: link.stats.received == len(MALFORMED))
        assert link.stats.rejected == dict(Counter(expected for _, _, expected in MALFORMED))
        assert handlers.calls == []
        assert link.stats.accepted == 0
        # still alive and listening: a valid command after all that is carried out and echoed
        watcher.publish(f"{mqtt_prefix}/{ENABLED}", b"false")
        echo = watcher.wait_for(lambda seen: seen.topic == f"{mqtt_prefix}/cam1/enabled")
        assert echo.text == "false"
        assert watcher.on(f"{mqtt_prefix}/retrain/state") == []  # no echo for the rejected ones
    assert handlers.calls == [("set_enabled", "cam1", False)]
    assert link.connected


def test_the_client_level_names_who_sent_a_command(
    broker: MosquittoBroker, mqtt_prefix: str, link: MqttLink, handlers: RecordingHandlers
) -> None:
    """One more topic level after ``set`` is the sender (a name the broker's ACL vouches for): labels record it,
    with the person an HMI names in ``user``; enable and retrain pass it on; the bare topic stays unnamed."""
    commands = [
        ("cam1/feedback/set/operator-anna", {"inspection_id": "insp-1", "label": "normal"}),
        ("cam1/feedback/set/hmi-3", {"inspection_id": "insp-1", "label": "defect", "user": "jonas"}),
        ("cam1/feedback/set/anna", {"inspection_id": "insp-1", "label": "normal", "user": "anna"}),
        ("cam1/enabled/set/supervisor", False),
        ("cam1/enabled/set", True),
        ("retrain/set/supervisor", {"reason": "new batch"}),
        ("cam1/enabled/set/a/b", True),  # two levels: refused
    ]
    with MqttWatcher(broker) as watcher:
        for suffix, document in commands:
            watcher.publish(f"{mqtt_prefix}/{suffix}", json.dumps(document))
        wait_until(lambda: link.stats.received == len(commands))
    assert [call[-1] for call in handlers.calls if call[0] == "feedback"] == [
        "operator-anna",
        "jonas via hmi-3",
        "anna",
    ]
    assert handlers.senders == ["mqtt: supervisor", "mqtt", "mqtt: supervisor"]
    assert link.stats.rejected == {("unknown", "bad_topic"): 1}


def test_a_product_changeover_reaches_the_handler_and_a_bad_one_is_refused_by_reason(
    broker: MosquittoBroker, mqtt_prefix: str, link: MqttLink, handlers: RecordingHandlers
) -> None:
    commands = [
        ("cam1/product/set/plc-7", b'"bracket B"'),
        ("cam_2/product/set", b'{"product": "bracket A"}'),
        ("cam1/product/set", b'{"product": "x", "extra": 1}'),  # schema
        ("cam1/product/set", b'""'),  # schema: empty
        ("cam1/product/set", b'"bell \\u0007"'),  # schema: a control character
        ("nocam/product/set", b'"bracket A"'),  # the handler: unknown camera
    ]
    with MqttWatcher(broker) as watcher:
        for suffix, payload in commands:
            watcher.publish(f"{mqtt_prefix}/{suffix}", payload)
        wait_until(lambda: link.stats.received == len(commands))
    assert handlers.calls == [("select_product", "cam1", "bracket B"), ("select_product", "cam_2", "bracket A")]
    assert handlers.senders == ["mqtt: plc-7", "mqtt"]
    assert link.stats.rejected == {("product", "schema"): 3, ("product", "unknown_camera"): 1}


def test_speaker_keeps_the_declared_name_only_beside_a_vouched_one() -> None:
    assert speaker(None, None) is None
    assert speaker("anna", None) == "anna"  # a bare topic: self-declared, as before
    assert speaker(None, "hmi-3") == "hmi-3"
    assert speaker("hmi-3", "hmi-3") == "hmi-3"
    assert speaker("jonas", "hmi-3") == "jonas via hmi-3"


def test_valid_commands_reach_the_handlers_and_are_echoed_retained(
    broker: MosquittoBroker, mqtt_prefix: str, link: MqttLink, handlers: RecordingHandlers
) -> None:
    topics = Topics(mqtt_prefix)
    commands = [
        ("cam1/feedback/set", {"inspection_id": "insp-1", "label": "normal", "user": "anna"}),
        ("cam_2/feedback/set", {"event_id": "ev-1", "label": "defect"}),
        ("cam1/enabled/set", False),
        ("cam_2/enabled/set", {"enabled": True}),
        ("retrain/set", {}),
        ("retrain/set", {"reason": "new supplier batch"}),
    ]
    echoes = f"{mqtt_prefix}/+/enabled", topics.retrain_state
    with MqttWatcher(broker, *echoes) as watcher:
        for suffix, document in commands:
            watcher.publish(f"{mqtt_prefix}/{suffix}", json.dumps(document))
        watcher.wait_until(lambda seen: len(seen) == 4)
    assert handlers.calls == [
        ("feedback", "cam1", LabelTarget.INSPECTION, "insp-1", VerdictLabel.NORMAL, "anna"),
        ("feedback", "cam_2", LabelTarget.EVENT, "ev-1", VerdictLabel.DEFECT, None),
        ("set_enabled", "cam1", False),
        ("set_enabled", "cam_2", True),
        ("retrain", None),
        ("retrain", "new supplier batch"),
    ]
    with MqttWatcher(broker, *echoes) as late:
        retained = {s.topic: s for s in late.wait_until(lambda seen: len(seen) == 3)}
    assert all(seen.retain for seen in retained.values())
    assert retained[topics.enabled("cam1")].text == "false"
    assert retained[topics.enabled("cam_2")].text == "true"
    assert json.loads(retained[topics.retrain_state].payload) == {"status": "queued", "reason": "new supplier batch"}
    assert link.stats.accepted == len(commands)
    assert link.stats.received == len(commands)  # our own echoes never came back to us
    assert link.stats.rejected == {}


def test_a_failing_handler_is_counted_and_the_link_carries_on(
    broker: MosquittoBroker, mqtt_prefix: str, link: MqttLink, handlers: RecordingHandlers
) -> None:
    with MqttWatcher(broker) as publisher:
        handlers.fail = True
        publisher.publish(f"{mqtt_prefix}/{ENABLED}", b"true")
        publisher.publish(f"{mqtt_prefix}/{RETRAIN}", b"{}")
        wait_until(lambda: link.stats.received == 2)
        handlers.fail = False
        publisher.publish(f"{mqtt_prefix}/{ENABLED}", b"true")
        wait_until(lambda: link.stats.accepted == 1)
    assert link.stats.rejected == {("enabled", "handler_error"): 1, ("retrain", "handler_error"): 1}
    assert handlers.calls == [("set_enabled", "cam1", True)]


def test_a_retained_command_is_not_replayed_on_subscribe(broker: MosquittoBroker, mqtt_prefix: str) -> None:
    handlers = RecordingHandlers()
    with MqttWatcher(broker) as publisher:
        publisher.publish(f"{mqtt_prefix}/{RETRAIN}", b"{}", retain=True)
    link = make_link(broker, mqtt_prefix, handlers)
    link.start()
    try:
        assert link.wait_connected(5)
        wait_until(lambda: link.stats.received == 1)
        assert link.stats.rejected == {("retrain", "retained"): 1}
        assert handlers.calls == []
    finally:
        link.stop()


def test_a_command_published_retained_while_linewatch_listens_is_refused(
    broker: MosquittoBroker, mqtt_prefix: str, link: MqttLink, handlers: RecordingHandlers
) -> None:
    """MQTT 5's retain-as-published keeps the flag on live delivery (3.1.1 would clear it)."""
    with MqttWatcher(broker) as publisher:
        publisher.publish(f"{mqtt_prefix}/{RETRAIN}", b"{}", retain=True)
        publisher.publish(f"{mqtt_prefix}/{ENABLED}", b"false", retain=True)
        wait_until(lambda: link.stats.received == 2)
        publisher.publish(f"{mqtt_prefix}/{RETRAIN}", b"", retain=True)  # cleared: nothing is delivered
        publisher.publish(f"{mqtt_prefix}/{ENABLED}", b"", retain=True)
        publisher.publish(f"{mqtt_prefix}/{ENABLED}", b"true")
        wait_until(lambda: link.stats.accepted == 1)
    assert link.stats.rejected == {("retrain", "retained"): 1, ("enabled", "retained"): 1}
    assert handlers.calls == [("set_enabled", "cam1", True)]


def test_mqtt_3_1_1_still_works_and_carries_out_a_live_retained_command(
    broker: MosquittoBroker, mqtt_prefix: str, handlers: RecordingHandlers
) -> None:
    """The documented limit of ``protocol = "3.1.1"``: the broker clears the retain flag on live delivery."""
    link = make_link(broker, mqtt_prefix, handlers, protocol="3.1.1")
    link.start()
    try:
        assert link.wait_connected(5)
        with MqttWatcher(broker) as publisher:
            publisher.publish(f"{mqtt_prefix}/{FEEDBACK}", b'{"inspection_id": "insp-1", "label": "normal"}')
            publisher.publish(f"{mqtt_prefix}/{ENABLED}", b"false", retain=True)
            wait_until(lambda: link.stats.accepted == 2)
            publisher.publish(f"{mqtt_prefix}/{ENABLED}", b"", retain=True)
    finally:
        link.stop()
    assert handlers.calls == [
        ("feedback", "cam1", LabelTarget.INSPECTION, "insp-1", VerdictLabel.NORMAL, None),
        ("set_enabled", "cam1", False),
    ]


def test_a_flood_of_labels_is_journaled_in_bursts_in_arrival_order(
    broker: MosquittoBroker, mqtt_prefix: str, handlers: RecordingHandlers
) -> None:
    """While one label is being journaled the rest queue up (as many as our Receive Maximum lets the broker
    send unacknowledged); they are handed over together, in order, with the other commands in their place,
    and none is lost."""
    handlers.known_ids = {f"insp-{n}" for n in range(300)}
    handlers.gate = threading.Event()
    link = make_link(broker, mqtt_prefix, handlers)
    link.start()
    try:
        assert link.wait_connected(5)
        flood: list[tuple[str, bytes | str]] = [
            (f"{mqtt_prefix}/{FEEDBACK}", json.dumps({"inspection_id": f"insp-{n}", "label": "normal"}))
            for n in range(300)
        ]
        flood.insert(150, (f"{mqtt_prefix}/{ENABLED}", b"false"))
        with MqttWatcher(broker) as publisher:
            publisher.publish_all(flood[:1])
            assert handlers.entered.wait(5)  # the worker is busy with the first label ...
            publisher.publish_all(flood[1:])  # ... while the rest arrive
            wait_until(lambda: link.stats.arrived == RECEIVE_MAXIMUM)  # the window: the broker holds the rest
            handlers.gate.set()
            wait_until(lambda: link.stats.received == len(flood))
    finally:
        handlers.gate.set()
        link.stop()
    normal = VerdictLabel.NORMAL
    assert handlers.calls == [
        ("set_enabled", "cam1", False) if topic.endswith(ENABLED)
        else ("feedback", "cam1", LabelTarget.INSPECTION, json.loads(payload)["inspection_id"], normal, None)
        for topic, payload in flood
    ]  # fmt: skip
    assert link.stats.arrived == len(flood)  # each acknowledgement let the broker send one more
    # The enabled command splits the queued ones; the third burst may also hold what the broker sent for the
    # first label's acknowledgement before the worker drained the queue.
    assert handlers.bursts[:2] == [1, 149] and handlers.bursts[2] >= RECEIVE_MAXIMUM - 151
    assert sum(handlers.bursts) == len(flood) - 1
    assert link.stats.accepted == len(flood) and link.stats.rejected == {}


def test_a_label_still_being_handled_when_the_broker_goes_is_delivered_again(
    broker: MosquittoBroker, mqtt_prefix: str, handlers: RecordingHandlers
) -> None:
    """Acknowledged only once handled: the broker keeps it in the session and resends it after its restart
    (a crash of linewatch at that moment would get the same resend when it comes back)."""
    handlers.gate = threading.Event()
    link = make_link(broker, mqtt_prefix, handlers)
    link.start()
    try:
        assert link.wait_connected(5)
        with MqttWatcher(broker) as publisher:
            publisher.publish(f"{mqtt_prefix}/{FEEDBACK}", b'{"inspection_id": "insp-1", "label": "normal"}')
        assert handlers.entered.wait(5)
        broker.stop()
        handlers.gate.set()  # handled while the broker is away: the acknowledgement cannot be sent
        wait_until(lambda: link.stats.received == 1 and not link.connected)
        broker.start()
        wait_until(lambda: link.stats.received == 2, timeout=10)
    finally:
        link.stop()
    label = ("feedback", "cam1", LabelTarget.INSPECTION, "insp-1", VerdictLabel.NORMAL, None)
    assert handlers.calls == [label, label]  # the journal's repeat window keeps one (tests/daemon/test_feedback)


def test_rejections_are_logged_once_per_burst(
    broker: MosquittoBroker, mqtt_prefix: str, handlers: RecordingHandlers, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="linewatch.sinks.mqtt_commands")
    clock = FakeClock()
    link = make_link(broker, mqtt_prefix, handlers, clock)
    link.start()
    try:
        assert link.wait_connected(5)
        with MqttWatcher(broker) as publisher:
            for _ in range(5):
                publisher.publish(f"{mqtt_prefix}/{FEEDBACK}", b"{oops")
            publisher.publish(f"{mqtt_prefix}/{ENABLED}", b"maybe")
            wait_until(lambda: link.stats.received == 6)
            clock.advance(10.0)
            publisher.publish(f"{mqtt_prefix}/{FEEDBACK}", b"{oops")
            wait_until(lambda: link.stats.received == 7)
    finally:
        link.stop()
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(lines) == 3, lines  # feedback twice (first, and after the quiet period), enabled once
    assert "4 more like it" in lines[-1]
    assert link.stats.rejected == {("feedback", "bad_json"): 6, ("enabled", "bad_json"): 1}


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("p/l/cam1/feedback/set", CommandTopic("feedback", "cam1", None)),
        ("p/l/Cam-2_b/enabled/set", CommandTopic("enabled", "Cam-2_b", None)),
        ("p/l/retrain/set", CommandTopic("retrain", None, None)),
        ("p/l/cam1/feedback/set/operator-anna", CommandTopic("feedback", "cam1", "operator-anna")),
        ("p/l/retrain/set/hmi 3", CommandTopic("retrain", None, "hmi 3")),
        ("p/l/cam1/feedback/set/", None),
        ("p/l/cam1/feedback/set/x/y", None),
        ("p/l/retrain/set/" + "x" * 65, None),
        ("p/l/cam1/status", None),
        ("p/l/-cam/enabled/set", None),
        ("p/l//enabled/set", None),
        ("p/other/cam1/enabled/set", None),
        ("p/l", None),
    ],
)
def test_topic_shapes(topic: str, expected: CommandTopic | None) -> None:
    if expected is None:
        with pytest.raises(Rejected) as problem:
            topic_kind(Topics("p/l"), topic)
        assert problem.value.reason == "bad_topic"
    else:
        assert topic_kind(Topics("p/l"), topic) == expected

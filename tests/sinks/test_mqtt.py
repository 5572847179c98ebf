"""The MQTT link's lifecycle against a real Mosquitto (availability, will, clean stop, retained states
replayed after a broker restart, no broker at all) and its configuration through a fake paho client."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
from paho.mqtt.client import ConnectFlags, MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from linewatch.config import MqttSection
from linewatch.sinks.mqtt import MqttLink
from linewatch.sinks.mqtt_link import RECEIVE_MAXIMUM
from linewatch.sinks.mqtt_payloads import Topics
from linewatch.types import CameraStatus
from tests.services.mosquitto import MosquittoBroker, MqttWatcher, free_port, wait_until
from tests.sinks.mqtt_fakes import FakeFactory, RecordingHandlers

ROOT = Path(__file__).resolve().parents[2]


def section(broker: MosquittoBroker, **overrides: object) -> MqttSection:
    fields: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "keepalive_s": 5,
        "ack_timeout_s": 2.0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
    }
    return MqttSection(**{**fields, **overrides})


@pytest.fixture
def link(broker: MosquittoBroker, mqtt_prefix: str) -> Iterator[MqttLink]:
    link = MqttLink(section(broker), mqtt_prefix, f"lw-{mqtt_prefix.split('/')[1]}", RecordingHandlers())
    link.start()
    assert link.wait_connected(5)
    yield link
    link.stop()


def barrier(watcher: MqttWatcher, prefix: str) -> None:
    """Publish a marker and wait for it: everything the broker handled before it has been seen too."""
    marker = f"{prefix}/barrier"
    payload = str(time.monotonic_ns())
    watcher.publish(marker, payload)
    watcher.wait_for(lambda seen: seen.topic == marker and seen.text == payload)


def test_online_on_connect_and_stopped_on_clean_stop_without_the_will(
    broker: MosquittoBroker, mqtt_prefix: str
) -> None:
    topics = Topics(mqtt_prefix)
    link = MqttLink(section(broker), mqtt_prefix, "lw-clean-stop", RecordingHandlers())
    link.start()
    assert link.wait_connected(5)
    assert link.stats.connects == 1
    with MqttWatcher(broker, topics.available, f"{mqtt_prefix}/barrier") as watcher:
        # Live (if it subscribed before "online" reached the broker) or retained: either way "online".
        assert watcher.wait_for(lambda s: s.topic == topics.available).text == "online"
        with MqttWatcher(broker, topics.available) as later:  # the broker has it now: its retained copy
            seen = later.wait_for(lambda s: s.topic == topics.available)
            assert (seen.text, seen.retain) == ("online", True)
        link.stop()
        assert not link.connected
        watcher.wait_for(lambda s: s.topic == topics.available and s.text == "stopped")
        barrier(watcher, mqtt_prefix)
        assert [s.text for s in watcher.on(topics.available)] == ["online", "stopped"]  # no "offline" will
    with MqttWatcher(broker, topics.available) as late:
        assert late.wait_for(lambda s: s.topic == topics.available).text == "stopped"  # retained
    link.stop()  # a second stop is harmless


def test_a_clean_stop_sets_every_camera_offline_before_saying_stopped(
    broker: MosquittoBroker, mqtt_prefix: str
) -> None:
    """An HMI tile must not keep showing a camera as online once nothing inspects it (issue 19)."""
    topics = Topics(mqtt_prefix)
    link = MqttLink(section(broker), mqtt_prefix, "lw-offline-at-stop", RecordingHandlers())
    link.start()
    assert link.wait_connected(5)
    link.publish_camera_status("cam1", CameraStatus.ONLINE)
    link.publish_camera_status("cam2", CameraStatus.DISABLED)
    with MqttWatcher(broker, f"{mqtt_prefix}/+/status", topics.available) as watcher:
        watcher.wait_for(lambda s: s.topic == topics.status("cam2") and s.text == "disabled")
        link.stop()
        watcher.wait_for(lambda s: s.topic == topics.available and s.text == "stopped")
        order = [(s.topic, s.text) for s in list(watcher.messages) if s.text in ("offline", "stopped")]
    cam1, cam2 = topics.status("cam1"), topics.status("cam2")
    assert order == [(cam1, "offline"), (cam2, "offline"), (topics.available, "stopped")]
    with MqttWatcher(broker, f"{mqtt_prefix}/+/status") as late:  # what a tile reads after the stop: retained
        late.wait_for(lambda _s: {m.topic for m in list(late.messages)} >= {cam1, cam2})
        assert {s.topic: s.text for s in list(late.messages)} == {cam1: "offline", cam2: "offline"}


CHILD = """
import sys, time
from linewatch.config import MqttSection
from linewatch.sinks.mqtt import MqttLink
from tests.sinks.mqtt_fakes import RecordingHandlers
mqtt = MqttSection(host="127.0.0.1", port=int(sys.argv[1]), keepalive_s=5)
link = MqttLink(mqtt, sys.argv[2], "lw-child", RecordingHandlers())
link.start()
assert link.wait_connected(10), "child could not connect"
print("connected", flush=True)
time.sleep(60)
"""


def test_the_will_says_offline_when_the_process_dies(broker: MosquittoBroker, mqtt_prefix: str) -> None:
    topics = Topics(mqtt_prefix)
    with MqttWatcher(broker, topics.available) as watcher:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(broker.port), mqtt_prefix], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None and child.stdout.readline().strip() == "connected"
            watcher.wait_for(lambda s: s.topic == topics.available and s.text == "online")
            child.kill()  # SIGKILL: no DISCONNECT, the broker sees the socket close
            child.wait(5)
            offline = watcher.wait_for(lambda s: s.topic == topics.available and s.text == "offline")
            assert offline.qos == 1
        finally:
            child.kill()
            child.wait(5)
    with MqttWatcher(broker, topics.available) as late:
        seen = late.wait_for(lambda s: s.topic == topics.available)
        assert (seen.text, seen.retain) == ("offline", True)


def test_retained_states_are_published_and_replayed_after_the_broker_lost_them(
    broker: MosquittoBroker, mqtt_prefix: str, link: MqttLink
) -> None:
    topics = Topics(mqtt_prefix)
    state = {
        "version": "v3",
        "backbone": "tiny",
        "hash": "abc",
        "threshold": 0.5,
        "trained_at": None,
        "status": "active",
    }
    link.publish_camera_status("cam1", CameraStatus.ONLINE)
    link.publish_camera_status("cam_2", "stalled")
    link.publish_model_state(state)
    with MqttWatcher(broker, f"{mqtt_prefix}/#") as watcher:
        watcher.wait_until(lambda seen: len({s.topic for s in seen}) >= 4)
        assert watcher.on(topics.status("cam1"))[-1].text == "online"
        assert watcher.on(topics.status("cam_2"))[-1].text == "stalled"
        assert json.loads(watcher.on(topics.model_state)[-1].payload) == state

    broker.stop()
    wait_until(lambda: not link.connected)
    link.publish_camera_status("cam1", CameraStatus.OFFLINE)  # while the broker is away: remembered
    broker.forget()  # it comes back without our session or any retained message
    broker.start()
    assert link.wait_connected(5)
    assert (link.stats.connects, link.stats.disconnects) == (2, 1)
    with MqttWatcher(broker, f"{mqtt_prefix}/#") as late:
        retained = {s.topic: s.text for s in late.wait_until(lambda seen: len({s.topic for s in seen}) >= 4)}
    assert retained[topics.available] == "online"
    assert retained[topics.status("cam1")] == "offline"
    assert retained[topics.status("cam_2")] == "stalled"
    assert json.loads(retained[topics.model_state]) == state


def test_a_stale_status_resent_after_a_crash_does_not_overwrite_the_newer_one(
    broker: MosquittoBroker, mqtt_prefix: str, link: MqttLink
) -> None:
    topics = Topics(mqtt_prefix)
    broker.pause()
    link.publish_camera_status("cam1", CameraStatus.STALLED)  # on the wire, never acknowledged
    broker.kill()
    wait_until(lambda: not link.connected)
    link.publish_camera_status("cam1", CameraStatus.ONLINE)  # the camera recovered meanwhile
    broker.start()
    assert link.wait_connected(5)
    marker = link.publish(f"{mqtt_prefix}/marker", b"", qos=1)  # the broker handles our messages in order
    assert link.wait_acked([marker], 5, link.epoch) == 1
    with MqttWatcher(broker, topics.status("cam1")) as late:
        assert late.wait_for(lambda s: s.retain).text == "online"


def test_bad_states_are_refused_at_the_call(link: MqttLink) -> None:
    with pytest.raises(ValueError, match="camera name"):
        link.publish_camera_status("cam/1", CameraStatus.ONLINE)
    with pytest.raises(ValueError):
        link.publish_camera_status("cam1", "sleeping")
    with pytest.raises(ValueError):
        link.publish_model_state({"threshold": float("nan")})


def test_without_a_broker_start_returns_at_once_and_reports_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="linewatch.sinks.mqtt_link")
    closed = MqttSection(host="127.0.0.1", port=free_port(), reconnect_min_s=0.05, reconnect_max_s=0.05)
    link = MqttLink(closed, "lwtest/nobroker", "lw-nobroker", RecordingHandlers())
    began = time.monotonic()
    link.start()
    assert time.monotonic() - began < 0.5
    assert not link.wait_connected(0.4)  # several attempts meanwhile
    assert not link.connected
    link.publish_camera_status("cam1", CameraStatus.ONLINE)  # remembered, not an error
    began = time.monotonic()
    link.stop()
    assert time.monotonic() - began < 2.0
    unreachable = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(unreachable) == 1 and "Connection refused" in unreachable[0].getMessage()  # the cause, named


def test_configuration_reaches_the_client_and_secrets_stay_out_of_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    files = {name: tmp_path / name for name in ("ca.pem", "client.pem", "client.key")}
    mqtt = MqttSection(
        host="broker.plant", port=8883, username="line1", password="s3cret-pw", tls=True, keepalive_s=20,
        ca_file=files["ca.pem"], cert_file=files["client.pem"], key_file=files["client.key"],
        reconnect_min_s=2.0, reconnect_max_s=90.0,
    )  # fmt: skip
    factory = FakeFactory(online=False)
    link = MqttLink(mqtt, "linewatch/s1/l1", "linewatch-s1-l1", RecordingHandlers(), client_factory=factory)
    link.start()
    link.stop()
    client = factory.clients[0]
    assert client.client_id == "linewatch-s1-l1"
    assert client.calls["username_pw_set"] == ("line1", "s3cret-pw")
    assert client.calls["tls_set"] == {
        "ca_certs": str(files["ca.pem"]),
        "certfile": str(files["client.pem"]),
        "keyfile": str(files["client.key"]),
    }
    assert client.calls["will_set"] == ("linewatch/s1/l1/available", "offline", 1, True)
    assert client.calls["reconnect_delay_set"] == (2.0, 2.0)  # the first wait; each later one is set before it
    assert client.calls["connect_async"] == ("broker.plant", 8883, 20)
    options = client.calls["connect_options"]
    assert options["clean_start"] is False  # paho's default would start the first session clean
    assert options["properties"].SessionExpiryInterval == 14 * 86400
    assert options["properties"].ReceiveMaximum == RECEIVE_MAXIMUM
    assert client.calls["disconnect"] and client.calls["loop_stop"]
    assert client.sent == []  # never connected: no "stopped" either
    assert "s3cret-pw" not in caplog.text


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_subscriptions_keep_the_retain_flag_under_mqtt_5(protocol: Literal["5", "3.1.1"]) -> None:
    factory = FakeFactory()
    link = MqttLink(MqttSection(protocol=protocol), "p/l", "lw", RecordingHandlers(), client_factory=factory)
    link.start()
    client = factory.clients[0]
    assert client.protocol == protocol
    subscribed = client.calls["subscribe"]
    assert [topic for topic, _ in subscribed] == list(Topics("p/l").subscriptions)
    if protocol == "5":
        assert all(o.QoS == 1 and o.retainAsPublished for _, o in subscribed)
    else:
        assert all(qos == 1 for _, qos in subscribed) and client.calls["connect_options"] == {}
    link.stop()


def test_a_command_is_acknowledged_once_handled_and_only_on_its_own_connection() -> None:
    """The broker resends an unacknowledged command under the same packet id after a reconnect; an ack for
    the old copy sent on the new connection could acknowledge another message that reused the id."""
    handlers = RecordingHandlers(gate=threading.Event())
    factory = FakeFactory()
    link = MqttLink(MqttSection(), "p/l", "lw", handlers, client_factory=factory)
    link.start()
    client = factory.clients[0]
    label = b'{"inspection_id": "insp-1", "label": "normal"}'
    client.on_message(client, None, received("p/l/cam1/feedback/set", label, mid=7))
    assert handlers.entered.wait(5)
    assert client.acked == []  # queued and being handled: not acknowledged yet
    client.drop()
    client.reconnect()
    handlers.gate.set()
    wait_until(lambda: link.stats.received == 1)
    client.on_message(client, None, received("p/l/cam1/feedback/set", label, mid=7))  # the broker's resend
    client.on_message(client, None, received("p/l/cam1/enabled/set", b"maybe", mid=8))  # refused: acked too
    wait_until(lambda: len(client.acked) == 2)
    link.stop()
    assert client.acked == [(7, 1), (8, 1)]
    assert len(handlers.calls) == 2  # handled twice: the journal's repeat window makes the second a no-op


def test_a_redelivery_before_our_suback_is_acknowledged() -> None:
    """A persistent session's unacknowledged commands come right after CONNACK, before the SUBACK that
    makes the link "connected": they must be acknowledged all the same, or the broker redelivers them at
    every reconnect (and a label repeated after the 60 s repeat window is journaled twice)."""
    factory = FakeFactory(online=False)
    link = MqttLink(MqttSection(), "p/l", "lw", RecordingHandlers(), client_factory=factory)
    link.start()
    client = factory.clients[0]
    client.on_connect(client, None, ConnectFlags(True), ReasonCode(PacketTypes.CONNACK, "Success"), None)
    client.on_message(client, None, received("p/l/cam1/enabled/set", b"true", mid=3))
    wait_until(lambda: client.acked == [(3, 1)])
    assert not link.connected  # no SUBACK yet
    link.stop()


def received(topic: str, payload: bytes, mid: int) -> MQTTMessage:
    message = MQTTMessage(mid, topic.encode())
    message.payload, message.qos = payload, 1
    return message


def test_tls_without_a_ca_file_uses_the_system_store_and_missing_files_are_named(tmp_path: Path) -> None:
    factory = FakeFactory(online=False)
    MqttLink(MqttSection(tls=True), "p", "c", RecordingHandlers(), client_factory=factory)
    assert factory.clients[0].calls["tls_set"] == {"ca_certs": None, "certfile": None, "keyfile": None}
    assert "username_pw_set" not in factory.clients[0].calls
    with pytest.raises(ValueError, match="ca_file"):  # the real paho client loads the files at once
        MqttLink(MqttSection(tls=True, ca_file=tmp_path / "missing.pem"), "p", "c", RecordingHandlers())


def test_reconnect_waits_grow_to_the_cap_with_jitter_and_restart_after_a_session() -> None:
    """Issue 15, item 10: paho doubled its wait up to reconnect_max_s (then 60 s) in lock step on every line;
    now each wait is set before it, exponential from the minimum, capped, and jittered to 1/2..1 of that."""
    factory = FakeFactory(online=False)
    link = MqttLink(MqttSection(reconnect_min_s=0.5), "p/l", "lw", RecordingHandlers(), client_factory=factory)
    link.start()
    client = factory.clients[0]
    waits = []
    for _ in range(40):
        client.on_connect_fail(client, None)
        low, high = client.calls["reconnect_delay_set"]
        assert low == high
        waits.append(low)
    assert waits[0] == 0.5 and 0.5 <= waits[1] <= 1.0 and 1.0 <= waits[2] <= 2.0
    assert all(2.5 <= wait <= 5.0 for wait in waits[5:])  # the default cap: alerts flow within 5 s of a return
    assert len(set(waits[5:])) > 20  # jittered, so the lines of a plant do not reconnect in step
    client.reconnect()  # a session: the next loss starts again from the minimum
    client.drop()
    assert client.calls["reconnect_delay_set"] == (0.5, 0.5)
    link.stop()


def test_connection_changes_are_logged_once_each(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="linewatch.sinks.mqtt_link")
    factory = FakeFactory(online=False)
    link = MqttLink(MqttSection(), "p/l", "lw", RecordingHandlers(), client_factory=factory)
    link.start()
    client = factory.clients[0]
    for _ in range(3):
        client.refuse()
    for _ in range(3):
        client.on_connect_fail(client, None)
    client.reconnect()
    client.drop()
    client.reconnect()
    link.stop()
    logged = [(r.levelname, r.getMessage().split(" (")[0].split(";")[0]) for r in caplog.records]
    assert logged == [
        ("INFO", "MQTT: connecting to localhost:1883 as lw"),
        ("ERROR", "MQTT: broker localhost:1883 refused us: Not authorized"),
        ("WARNING", "MQTT: cannot connect to localhost:1883"),
        ("INFO", "MQTT: connected to localhost:1883 as lw"),
        ("WARNING", "MQTT: lost the connection to localhost:1883"),
        ("INFO", "MQTT: connected to localhost:1883 as lw"),
        ("INFO", "MQTT: disconnected from localhost:1883"),
    ]
    assert (link.stats.connects, link.stats.disconnects) == (2, 2)

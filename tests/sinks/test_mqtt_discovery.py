"""Home Assistant MQTT discovery: the configs as Home Assistant reads them (JSON, ids, topics, templates
rendered with Jinja as it renders them, command payloads our own parser accepts), and what an MQTT client
sees of them on a real Mosquitto: every config retained after the link connects, published again when Home
Assistant announces itself ``online``, and nothing at all with discovery off.

Each broker test uses a discovery prefix of its own (``ha-<test id>`` for ``homeassistant``): the broker is
shared, and retained configs of one test must not show up in another's subscription.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import jinja2
import pytest
from paho.mqtt.client import topic_matches_sub
from pydantic import ValidationError

from linewatch.config import MqttSection
from linewatch.sinks.mqtt import MqttLink
from linewatch.sinks.mqtt_discovery import (
    AVAILABILITY_TEMPLATE,
    Discovery,
    discovery_configs,
    home_assistant_discovery,
)
from linewatch.sinks.mqtt_payloads import CommandTopic, Topics, parse_payload, topic_kind, verdict_message
from linewatch.types import CameraStatus, VerdictLabel
from tests.services.mosquitto import MosquittoBroker, MqttWatcher, wait_until
from tests.sinks.mqtt_fakes import FakeFactory, RecordingHandlers
from tests.sinks.test_mqtt import section
from tests.sinks.test_mqtt_forwarder import verdict

SITE, LINE = "plant-augsburg", "press-line-3"
CAMERAS = ("cam1", "cam_2")  # the cameras RecordingHandlers knows
PREFIX = f"linewatch/{SITE}/{LINE}"
HA_ID = re.compile(r"^[A-Za-z0-9_-]+$")  # Home Assistant's node and object ids
ON = MqttSection(discovery=True)


def render(template: str, payload: bytes) -> str:
    """A value template as Home Assistant renders it: ``value`` is the payload, ``value_json`` its JSON."""
    text = payload.decode()
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    return jinja2.Environment().from_string(template).render(value=text, value_json=document)


def by_name(discovery: Discovery) -> dict[str, dict[str, object]]:
    return {str(config.document["name"]): config.document for config in discovery.configs}


@pytest.fixture
def discovery() -> Discovery:
    found = home_assistant_discovery(ON, PREFIX, SITE, LINE, CAMERAS)
    assert found is not None
    return found


# --- the configs --------------------------------------------------------------------------------------------


def test_every_config_is_json_under_the_discovery_prefix_with_its_own_stable_id(discovery: Discovery) -> None:
    assert discovery.status_topic == "homeassistant/status"
    assert len(discovery.configs) == 4 * len(CAMERAS) + 1  # status, score, defect, enabled; one retrain button
    node = f"linewatch_{SITE}_{LINE}"
    ids = []
    for config in discovery.configs:
        document = json.loads(config.payload)
        assert document == config.document
        ha, component, node_id, object_id, last = config.topic.split("/")
        assert (ha, node_id, last) == ("homeassistant", node, "config")
        assert component in {"sensor", "binary_sensor", "switch", "button"}
        assert HA_ID.match(node_id) and HA_ID.match(object_id)
        assert document["unique_id"] == f"{node}_{object_id}"
        assert document["device"]["identifiers"] == [node]  # one device: the daemon of this line
        assert document["availability"] == [{"topic": f"{PREFIX}/available", "value_template": AVAILABILITY_TEMPLATE}]
        ids.append(document["unique_id"])
    assert len(set(ids)) == len(ids)
    again = discovery_configs(Topics(PREFIX), "homeassistant", SITE, LINE, CAMERAS)
    assert [c.payload for c in again] == [c.payload for c in discovery.configs]  # the same after a restart


def test_characters_home_assistant_refuses_in_ids_are_replaced() -> None:
    configs = discovery_configs(Topics("lw/p"), "ha", "plant 1", "línea.2", ["cam1"])
    for config in configs:
        _, _, node_id, object_id, _ = config.topic.split("/")
        assert node_id == "linewatch_plant_1_l_nea_2" and HA_ID.match(object_id)


def test_the_switch_and_the_button_send_what_the_daemon_accepts(discovery: Discovery) -> None:
    topics = Topics(PREFIX)
    switch, button = by_name(discovery)["cam1 enabled"], by_name(discovery)["Retrain"]
    for config in (switch, button):
        assert any(topic_matches_sub(sub, str(config["command_topic"])) for sub in topics.subscriptions)
    assert switch["state_topic"] == topics.enabled("cam1")
    assert topic_kind(topics, str(switch["command_topic"])) == CommandTopic("enabled", "cam1", "homeassistant")
    assert parse_payload("enabled", str(switch["payload_on"]).encode(), False, 4096) is True
    assert parse_payload("enabled", str(switch["payload_off"]).encode(), False, 4096) is False
    assert (switch["state_on"], switch["state_off"]) == ("true", "false")  # the echo on P/<camera>/enabled
    assert topic_kind(topics, str(button["command_topic"])) == CommandTopic("retrain", None, "homeassistant")
    assert parse_payload("retrain", str(button["payload_press"]).encode(), False, 4096) is None


@pytest.mark.parametrize(
    ("payload", "reads"), [("online", "online"), ("offline", "offline"), ("stopped", "offline"), ("", "offline")]
)
def test_availability_reads_stopped_as_unavailable(payload: str, reads: str) -> None:
    assert render(AVAILABILITY_TEMPLATE, payload.encode()) == reads


def test_score_and_defect_read_the_retained_verdict(discovery: Discovery) -> None:
    entities = by_name(discovery)
    score, defect, status = entities["cam1 score"], entities["cam1 defect"], entities["cam1 status"]
    assert score["state_topic"] == defect["state_topic"] == Topics(PREFIX).verdict("cam1")
    assert score["suggested_display_precision"] == 3 and defect["device_class"] == "problem"
    for label, expected_state in ((VerdictLabel.DEFECT, "ON"), (VerdictLabel.NORMAL, "OFF")):
        message = json.dumps(verdict_message(verdict("cam1", 1, label), SITE, LINE)).encode()
        assert render(str(defect["value_template"]), message) == expected_state
        assert float(render(str(score["value_template"]), message)) == json.loads(message)["score"]
    assert status["options"] == [str(s) for s in CameraStatus] and status["device_class"] == "enum"


def test_off_by_default_and_the_prefix_is_checked() -> None:
    assert (MqttSection().discovery, MqttSection().discovery_prefix) == (False, "homeassistant")
    assert home_assistant_discovery(MqttSection(), PREFIX, SITE, LINE, CAMERAS) is None
    for bad in ("", "ha/#", "ha/+/x", "ha/"):
        with pytest.raises(ValidationError, match="discovery_prefix must be"):
            MqttSection(discovery_prefix=bad)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_the_birth_topic_is_subscribed_at_qos_0_beside_the_commands(protocol: Literal["5", "3.1.1"]) -> None:
    factory = FakeFactory()
    mqtt = MqttSection(protocol=protocol, discovery=True)
    found = home_assistant_discovery(mqtt, "p/l", SITE, LINE, CAMERAS)
    assert found is not None
    link = MqttLink(mqtt, "p/l", "lw", RecordingHandlers(), client_factory=factory, discovery=found)
    link.start()
    client = factory.clients[0]
    *commands, (topic, options) = client.calls["subscribe"]
    assert [t for t, _ in commands] == list(Topics("p/l").subscriptions)
    assert topic == "homeassistant/status" and (options == 0 if protocol == "3.1.1" else options.QoS == 0)
    assert {sent.topic for sent in client.sent} >= {config.topic for config in found.configs}  # at SUBACK
    link.stop()


# --- on a real broker ---------------------------------------------------------------------------------------


@pytest.fixture
def ha_prefix(mqtt_prefix: str) -> str:
    return f"ha-{mqtt_prefix.split('/')[1]}"


@dataclass
class Started:
    link: MqttLink  # not started yet: a test may prepare the broker first
    discovery: Discovery
    handlers: RecordingHandlers


@pytest.fixture
def line(broker: MosquittoBroker, mqtt_prefix: str, ha_prefix: str) -> Iterator[Started]:
    """A link with discovery on; stopped afterwards."""
    mqtt = section(broker, discovery=True, discovery_prefix=ha_prefix)
    found = home_assistant_discovery(mqtt, mqtt_prefix, SITE, LINE, CAMERAS)
    assert found is not None
    handlers = RecordingHandlers()
    link = MqttLink(mqtt, mqtt_prefix, f"lw-ha-{mqtt_prefix.split('/')[1]}", handlers, discovery=found)
    yield Started(link, found, handlers)
    link.stop()


def configs_seen(watcher: MqttWatcher) -> Counter[str]:
    """How often each config topic came with a config (empty payloads are deletions)."""
    return Counter(s.topic for s in list(watcher.messages) if s.topic.endswith("/config") and s.payload)


def retained_configs(broker: MosquittoBroker, ha_prefix: str, count: int) -> dict[str, object]:
    """What a client subscribing now gets: the broker's retained configs."""
    with MqttWatcher(broker, f"{ha_prefix}/+/+/+/config") as late:
        seen = late.wait_until(lambda messages: len(messages) == count)
    assert all(s.retain for s in seen)
    return {s.topic: json.loads(s.payload) for s in seen}


def test_a_client_sees_every_config_retained_and_again_after_home_assistant_says_online(
    line: Started, broker: MosquittoBroker, mqtt_prefix: str, ha_prefix: str
) -> None:
    expected = {config.topic: config.document for config in line.discovery.configs}
    birth, topics = f"{ha_prefix}/status", Topics(mqtt_prefix)
    with MqttWatcher(broker, f"{ha_prefix}/#", f"{mqtt_prefix}/+/enabled") as ha:
        ha.publish(birth, "online", retain=True)  # the broker's copy comes at our subscribe: no news, skipped
        line.link.start()
        assert line.link.wait_connected(5)
        ha.wait_until(lambda _seen: set(configs_seen(ha)) == set(expected))
        assert retained_configs(broker, ha_prefix, len(expected)) == expected
        for topic in expected:  # forget them, as a broker that lost its retained store would
            ha.publish(topic, b"", retain=True)
        ha.publish(birth, "offline")  # Home Assistant's will: nothing to do
        ha.publish(birth, "online")
        # A marker through the link: it takes messages in order, so its echo follows every re-publication.
        ha.publish(f"{topics.enabled('cam1')}/set", "true")
        ha.wait_for(lambda s: s.topic == topics.enabled("cam1"))
        assert configs_seen(ha) == dict.fromkeys(expected, 2)  # at connect and after the live birth only
        assert retained_configs(broker, ha_prefix, len(expected)) == expected
        ha.publish(birth, b"", retain=True)
    assert line.handlers.calls == [("set_enabled", "cam1", True)]  # the births never reached the command worker
    assert line.link.stats.arrived == 1 and not line.link.stats.rejected


def test_the_switch_and_the_button_work_through_the_broker(line: Started, broker: MosquittoBroker) -> None:
    entities = by_name(line.discovery)
    switch, button = entities["cam_2 enabled"], entities["Retrain"]
    line.link.start()
    assert line.link.wait_connected(5)
    with MqttWatcher(broker, str(switch["state_topic"])) as ha:
        ha.publish(str(switch["command_topic"]), str(switch["payload_off"]))
        ha.publish(str(button["command_topic"]), str(button["payload_press"]))
        echo = ha.wait_for(lambda s: s.topic == switch["state_topic"])
    assert echo.text == switch["state_off"]
    wait_until(lambda: len(line.handlers.calls) == 2)
    assert line.handlers.calls == [("set_enabled", "cam_2", False), ("retrain", None)]


def test_with_discovery_off_nothing_is_published_under_the_prefix(
    broker: MosquittoBroker, mqtt_prefix: str, ha_prefix: str
) -> None:
    mqtt = section(broker, discovery_prefix=ha_prefix)
    assert home_assistant_discovery(mqtt, mqtt_prefix, SITE, LINE, CAMERAS) is None
    link = MqttLink(mqtt, mqtt_prefix, f"lw-ha-off-{mqtt_prefix.split('/')[1]}", RecordingHandlers())
    status = Topics(mqtt_prefix).status("cam1")
    with MqttWatcher(broker, f"{ha_prefix}/#", status) as ha:
        link.start()
        try:
            assert link.wait_connected(5)  # what it publishes at connect comes before the marker
            link.publish_camera_status("cam1", CameraStatus.ONLINE)
            ha.wait_for(lambda s: s.topic == status)
        finally:
            link.stop()
        assert [s.topic for s in list(ha.messages) if s.topic.startswith(ha_prefix)] == []

"""Home Assistant MQTT discovery: the retained config messages that make a line appear in Home Assistant
without any YAML there. No I/O here: :class:`linewatch.sinks.mqtt_link.MqttLink` publishes them (QoS 1,
retained) after every connect, and again whenever Home Assistant announces itself ``online`` on
``<discovery_prefix>/status`` (its birth message, sent when it starts). Off by default: ``[mqtt] discovery``.

One Home Assistant device per daemon, that is per line, not one per camera: availability (``P/available``),
the software version and the retrain button belong to the daemon, and a camera has no connection of its own
that Home Assistant could watch. The cameras are entities of that device, named after the camera:

- sensor ``<camera> status``: ``P/<camera>/status`` as an enum (online, offline, stalled, disabled);
- sensor ``<camera> score``: ``score`` of the retained ``P/<camera>/verdict``;
- binary sensor ``<camera> defect`` (device class problem): on while that verdict is ``defect``;
- switch ``<camera> enabled``: state from the ``P/<camera>/enabled`` echo, commands ``true`` / ``false`` on
  ``P/<camera>/enabled/set/homeassistant`` (what :func:`linewatch.sinks.mqtt_payloads.parse_payload` accepts);
- button ``Retrain`` (one per daemon): ``{}`` on ``P/retrain/set/homeassistant``.

The commands end in the client level ``homeassistant`` (:class:`linewatch.sinks.mqtt_payloads.CommandTopic`):
the actions record them as ``mqtt: homeassistant``, and a broker ACL that grants Home Assistant's account
write on just those topics (deploy/mosquitto/linewatch.acl) makes that a name the broker vouches for.

Config topics are ``<discovery_prefix>/<component>/<node>/<object>/config`` with node
``linewatch_<site>_<line>`` and object ``<camera>_<entity>`` (or ``retrain``), the ``unique_id`` being
``<node>_<object>``: stable across restarts and the same on every line PC that runs this line, so a
reinstalled daemon takes over its entities instead of adding new ones. The node level lets a broker ACL grant
the daemon write on ``<discovery_prefix>/+/<node>/+/config`` and nothing else of the discovery tree. Home
Assistant accepts only ``[A-Za-z0-9_-]`` in node and object ids; other characters become ``_``.

Availability: Home Assistant compares an availability payload with ``payload_available`` (``online``) and
``payload_not_available`` (``offline``) and ignores anything else, so the daemon's ``stopped`` after a clean
exit would leave the entities showing the last values as if live. :data:`AVAILABILITY_TEMPLATE` maps every
payload but ``online`` to ``offline``.

Entities of a camera removed from the config stay in Home Assistant (their configs are retained on the
broker): docs/mqtt.md says how to clear them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from linewatch import __version__
from linewatch.config import MqttSection
from linewatch.sinks.mqtt_payloads import Topics, dumps
from linewatch.types import CameraStatus

REFUSED_IN_IDS = re.compile(r"[^A-Za-z0-9_-]")  # Home Assistant's node and object ids: [a-zA-Z0-9_-]
AVAILABILITY_TEMPLATE = "{{ 'online' if value == 'online' else 'offline' }}"
DEFECT_TEMPLATE = "{{ 'ON' if value_json.verdict == 'defect' else 'OFF' }}"
SCORE_TEMPLATE = "{{ value_json.score }}"
SCORE_PRECISION = 3  # anomaly scores sit near their thresholds; 3 decimals tell a close call from a clear one
BIRTH_PAYLOAD = b"online"  # Home Assistant's default birth message
CLIENT = "homeassistant"  # the client level of its commands: recorded as "mqtt: homeassistant"


@dataclass(frozen=True)
class DiscoveryConfig:
    """One entity's config: ``document`` is published as JSON on ``topic``."""

    topic: str
    document: dict[str, Any]

    @property
    def payload(self) -> bytes:
        return dumps(self.document)


@dataclass(frozen=True)
class Discovery:
    """What the link publishes for Home Assistant, and the topic whose ``online`` asks for it again."""

    status_topic: str  # <discovery_prefix>/status, Home Assistant's birth and will
    configs: tuple[DiscoveryConfig, ...]

    def asks_again(self, payload: bytes, retain: bool) -> bool:
        """True for a live birth message. A retained one is the broker's copy, sent at our subscribe: the
        configs go out after every connect anyway."""
        return payload == BIRTH_PAYLOAD and not retain


def object_id(text: str) -> str:
    """``text`` with every character Home Assistant refuses in a node or object id replaced by ``_``."""
    return REFUSED_IN_IDS.sub("_", text)


def discovery_configs(
    topics: Topics, discovery_prefix: str, site: str, line: str, cameras: Sequence[str], version: str = __version__
) -> tuple[DiscoveryConfig, ...]:
    """Every entity's config for the line ``site``/``line`` publishing under ``topics``, cameras in the
    given order, the retrain button last."""
    node = object_id(f"linewatch_{site}_{line}")
    shared = {
        "device": {"identifiers": [node], "name": f"linewatch {site} {line}", "model": "visual inspection",
                   "sw_version": version},
        "origin": {"name": "linewatch", "sw_version": version},
        "availability": [{"topic": topics.available, "value_template": AVAILABILITY_TEMPLATE}],
        "qos": 1,  # commands queue in the daemon's persistent session while it is away
    }  # fmt: skip

    def config(component: str, entity: str, name: str, fields: dict[str, Any]) -> DiscoveryConfig:
        object_ = object_id(entity)
        document = {"name": name, "unique_id": f"{node}_{object_}", **fields, **shared}
        return DiscoveryConfig(f"{discovery_prefix}/{component}/{node}/{object_}/config", document)

    configs: list[DiscoveryConfig] = []
    for camera in cameras:
        verdict = topics.verdict(camera)
        configs += [
            config("sensor", f"{camera}_status", f"{camera} status", {
                "state_topic": topics.status(camera), "device_class": "enum",
                "options": [str(status) for status in CameraStatus],
            }),
            config("sensor", f"{camera}_score", f"{camera} score", {
                "state_topic": verdict, "value_template": SCORE_TEMPLATE, "state_class": "measurement",
                "suggested_display_precision": SCORE_PRECISION,
            }),
            config("binary_sensor", f"{camera}_defect", f"{camera} defect", {
                "state_topic": verdict, "value_template": DEFECT_TEMPLATE, "device_class": "problem",
            }),
            config("switch", f"{camera}_enabled", f"{camera} enabled", {
                "state_topic": topics.enabled(camera), "command_topic": f"{topics.enabled(camera)}/set/{CLIENT}",
                "payload_on": "true", "payload_off": "false", "state_on": "true", "state_off": "false",
            }),
        ]  # fmt: skip
    configs.append(config("button", "retrain", "Retrain", {"command_topic": f"{topics.prefix}/retrain/set/{CLIENT}",
                                                          "payload_press": "{}"}))  # fmt: skip
    return tuple(configs)


def home_assistant_discovery(
    section: MqttSection, prefix: str, site: str, line: str, cameras: Sequence[str]
) -> Discovery | None:
    """What :class:`~linewatch.sinks.mqtt_link.MqttLink` under topic ``prefix`` takes as ``discovery``; None
    while ``[mqtt] discovery`` is off."""
    if not section.discovery:
        return None
    configs = discovery_configs(Topics(prefix), section.discovery_prefix, site, line, cameras)
    return Discovery(f"{section.discovery_prefix}/status", configs)

"""Test doubles for the MQTT sink (not a test module): a paho-like client whose connection, SUBACK and
PUBACKs the test drives by hand, and handlers that record what they were asked to do."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.client import ConnectFlags
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from linewatch.sinks.mqtt import LabelCommand, RejectedPayload


class FakeInfo:
    """What the link reads of paho's MQTTMessageInfo: ``rc``, ``mid``, ``is_published``, ``wait_for_publish``."""

    def __init__(self, mid: int) -> None:
        self.mid = mid
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self.published = False

    def is_published(self) -> bool:
        return self.published

    def wait_for_publish(self, timeout: float | None = None) -> None:
        return None


@dataclass
class Sent:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    info: FakeInfo


class FakeClient:
    """Records configuration and publishes. ``loop_start`` "connects" (CONNACK, then SUBACK) unless
    ``online`` is False; ``puback(n)`` acknowledges the oldest n unacknowledged publishes (``auto_ack`` more
    publishes are acknowledged as they are made); ``drop()`` loses the connection; ``reconnect()``
    establishes it again; ``next_rc`` is the return code the next publish reports. ``acked`` lists the
    (mid, qos) of the received messages the link acknowledged."""

    def __init__(self, client_id: str, protocol: str = "5") -> None:
        self.client_id = client_id
        self.protocol = protocol
        self.calls: dict[str, Any] = {}
        self.acked: list[tuple[int, int]] = []
        self.sent: list[Sent] = []
        self.online = True
        self.auto_ack = 0
        self.next_rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._mid = 0
        self._subscribe_mid: int | None = None
        self.on_connect: Any = None
        self.on_connect_fail: Any = None
        self.on_subscribe: Any = None
        self.on_disconnect: Any = None
        self.on_publish: Any = None
        self.on_message: Any = None

    # configuration, recorded
    def username_pw_set(self, username: str | None, password: str | None = None) -> None:
        self.calls["username_pw_set"] = (username, password)

    def tls_set(self, **kwargs: Any) -> None:
        self.calls["tls_set"] = kwargs

    def will_set(self, topic: str, payload: str, qos: int = 0, retain: bool = False) -> None:
        self.calls["will_set"] = (topic, payload, qos, retain)

    def reconnect_delay_set(self, min_delay: float, max_delay: float) -> None:
        self.calls["reconnect_delay_set"] = (min_delay, max_delay)

    def max_inflight_messages_set(self, inflight: int) -> None:
        self.calls["max_inflight"] = inflight

    def enable_logger(self, logger: Any) -> None:
        self.calls["logger"] = logger

    def connect_async(self, host: str, port: int, keepalive: int, **options: Any) -> None:
        self.calls["connect_async"] = (host, port, keepalive)
        self.calls["connect_options"] = options

    # the connection, driven by the test
    def loop_start(self) -> None:
        if self.online:
            self.reconnect()

    def loop_stop(self) -> None:
        self.calls["loop_stop"] = True

    def disconnect(self) -> None:
        self.calls["disconnect"] = True
        self.on_disconnect(self, None, None, ReasonCode(PacketTypes.DISCONNECT, "Success"), None)

    def reconnect(self) -> None:
        self.on_connect(self, None, ConnectFlags(False), ReasonCode(PacketTypes.CONNACK, "Success"), None)
        if self._subscribe_mid is not None:
            granted = [ReasonCode(PacketTypes.SUBACK, identifier=1)] * 3
            self.on_subscribe(self, None, self._subscribe_mid, granted, None)

    def refuse(self) -> None:
        """A CONNACK refusing us, then paho's disconnect; it will try again."""
        self.on_connect(self, None, ConnectFlags(False), ReasonCode(PacketTypes.CONNACK, "Not authorized"), None)
        self.drop()

    def drop(self) -> None:
        self.on_disconnect(self, None, None, ReasonCode(PacketTypes.DISCONNECT, "Unspecified error"), None)

    def subscribe(self, topics: list[tuple[str, Any]]) -> tuple[MQTTErrorCode, int]:
        self.calls["subscribe"] = topics
        self._subscribe_mid = self._next_mid()
        return MQTTErrorCode.MQTT_ERR_SUCCESS, self._subscribe_mid

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False) -> FakeInfo:
        info = FakeInfo(self._next_mid())
        info.rc, self.next_rc = self.next_rc, MQTTErrorCode.MQTT_ERR_SUCCESS
        self.sent.append(Sent(topic, payload.encode() if isinstance(payload, str) else payload, qos, retain, info))
        if self.auto_ack > 0:
            self.auto_ack -= 1
            self._ack(info)
        return info

    def puback(self, count: int | None = None) -> None:
        waiting = [sent.info for sent in self.sent if not sent.info.published]
        for info in waiting[:count]:
            self._ack(info)

    def ack(self, mid: int, qos: int) -> MQTTErrorCode:
        """paho's manual acknowledgement of a received message."""
        self.acked.append((mid, qos))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _ack(self, info: FakeInfo) -> None:
        info.published = True
        self.on_publish(self, None, info.mid, ReasonCode(PacketTypes.PUBACK, "Success"), None)

    def on_topic(self, topic: str) -> list[bytes]:
        return [sent.payload for sent in self.sent if sent.topic == topic]

    def _next_mid(self) -> int:
        self._mid += 1
        return self._mid


class FakeFactory:
    """A client_factory that keeps the clients it made; ``online=False``: they never connect."""

    def __init__(self, online: bool = True) -> None:
        self.online = online
        self.clients: list[FakeClient] = []

    def __call__(self, client_id: str, protocol: str) -> Any:
        client = FakeClient(client_id, protocol)
        client.online = self.online
        self.clients.append(client)
        return client


@dataclass
class RecordingHandlers:
    """InboundHandlers that record calls. Known ids and cameras are accepted; others are refused with
    RejectedPayload like the app does; ``fail`` makes every call raise RuntimeError. With a ``gate``, a
    feedback call sets ``entered`` and waits for the gate (the command worker is then busy)."""

    known_ids: set[str] = field(default_factory=lambda: {"insp-1", "ev-1"})
    cameras: set[str] = field(default_factory=lambda: {"cam1", "cam_2"})
    fail: bool = False
    calls: list[tuple[Any, ...]] = field(default_factory=list)
    bursts: list[int] = field(default_factory=list)  # how many labels each feedback call carried
    senders: list[str] = field(default_factory=list)  # ``by`` of each enable and retrain call, in order
    gate: threading.Event | None = None
    entered: threading.Event = field(default_factory=threading.Event)

    def feedback(self, commands: Sequence[LabelCommand]) -> list[RejectedPayload | None]:
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10), "the test never opened the gate"
        self._check(None)
        self.bursts.append(len(commands))
        outcomes: list[RejectedPayload | None] = []
        for command in commands:
            camera, request = command.camera, command.request
            if camera not in self.cameras:
                outcomes.append(RejectedPayload("unknown_camera", f"no camera {camera!r}"))
            elif request.target_id not in self.known_ids:
                outcomes.append(RejectedPayload("unknown_id", f"no {request.target} with id {request.target_id!r}"))
            else:
                outcomes.append(None)
                self.calls.append(("feedback", camera, request.target, request.target_id, request.label, request.user))
        return outcomes

    def set_enabled(self, camera: str, enabled: bool, by: str) -> None:
        self._check(camera)
        self.calls.append(("set_enabled", camera, enabled))
        self.senders.append(by)

    def select_product(self, camera: str, product: str, by: str) -> None:
        self._check(camera)
        self.calls.append(("select_product", camera, product))
        self.senders.append(by)

    def trigger(self, name: str, part_id: str | None, by: str) -> str:
        self._check(name)
        self.calls.append(("trigger", name, part_id))
        self.senders.append(by)
        return part_id or f"{name}-1"

    def retrain(self, reason: str | None, by: str) -> dict[str, Any]:
        self._check(None)
        self.calls.append(("retrain", reason))
        self.senders.append(by)
        return {"status": "queued", "reason": reason}

    def _check(self, camera: str | None) -> None:
        if self.fail:
            raise RuntimeError("handler exploded")
        if camera is not None and camera not in self.cameras:
            raise RejectedPayload("unknown_camera", f"no camera {camera!r}")

"""The broker connection: one paho-mqtt 2 client (callback API VERSION2) for the daemon's whole life.

Session: persistent, under the stable client id from the config, so the broker keeps our subscriptions and
queues QoS 1 commands (feedback, enable, retrain) that arrive while linewatch is offline. MQTT 5 by default
(``[mqtt] protocol``): ``clean_start`` false with a ``session_expiry_s``, a Receive Maximum that bounds the
commands in flight to us, and subscriptions with retain-as-published, so a command published *retained*
while we are subscribed still carries its retain flag and is refused (3.1.1 clears the flag on live
delivery: such a command cannot be told from a live one and is carried out). ``protocol = "3.1.1"`` is for
brokers without MQTT 5 (``clean_session`` false; the broker decides when a session expires, Mosquitto:
``persistent_client_expiration``). Either way a session outlives a renamed client id until it expires.

Connection: ``start`` never blocks and never fails for a missing broker (``connect_async`` +
``loop_start``); paho reconnects, and we set each wait before it: exponential from ``reconnect_min_s``,
capped at ``reconnect_max_s`` (5 s by default, so alerts flow within about 5 s of a broker's return),
jittered to between half and all of that, so the lines of a plant do not reconnect in step after a broker
restart. The last will is ``offline`` (QoS 1, retained) on ``P/available``; a clean ``stop``
publishes ``stopped`` and sends DISCONNECT, so the broker discards the will.

"Connected" (the ``connected`` property, what forwarders wait for) starts only when the broker has
answered our SUBSCRIBE, not at CONNACK: paho calls ``on_connect`` *before* it resends the QoS 1 messages
left unacknowledged by the previous connection. Anything published from ``on_connect`` (or by another
thread right after it) would overtake those resends: a fresh ``status`` would be overwritten by the stale
one resent after it, and a new event would overtake older ones. By SUBACK the resends are already queued
ahead, so from then on publication order is preserved. At that point ``online`` and every remembered
retained state (camera status, model state, enabled echoes, retrain state) are published again, which
also restores them on a broker that lost its retained store.

With Home Assistant discovery on (``discovery``, see :mod:`linewatch.sinks.mqtt_discovery`), the entity configs
go out (QoS 1, retained) after that replay at every connect, and again when Home Assistant says ``online`` on
its status topic. That subscription is QoS 0: a birth missed while we were away needs no replay, since the
connect publishes the configs anyway. Its messages never reach the command intake.

Incoming commands are only queued on paho's network thread: :mod:`linewatch.sinks.mqtt_commands` checks
them, carries them out and acknowledges them (paho's ``manual_ack``) once handled. Passwords are never logged.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from linewatch.backoff import backoff_delay
from linewatch.clock import Clock, SystemClock
from linewatch.config import MqttSection
from linewatch.sinks.mqtt_commands import CommandIntake, InboundHandlers, MqttStats, Received
from linewatch.sinks.mqtt_discovery import Discovery
from linewatch.sinks.mqtt_payloads import CAMERA, Topics, dumps
from linewatch.types import CameraStatus

log = logging.getLogger(__name__)

MAX_INFLIGHT = 128  # QoS 1 messages on the wire at once; more wait in paho's queue, in order
RECEIVE_MAXIMUM = 256  # MQTT 5: unacknowledged commands the broker may send us at once (one command batch)
STOP_WAIT_S = 2.0  # how long stop() waits for the broker to acknowledge "stopped"
ACK_POLL_S = 0.02  # paho signals on_publish just before it marks the message published: re-check this often


class MqttUnavailable(ConnectionError):
    """Not connected to the broker (forwarders back off and retry)."""


def paho_client(client_id: str, protocol: str) -> mqtt.Client:
    """The production client: callback API VERSION2, a persistent session, commands acknowledged by us
    once handled (see :mod:`linewatch.sinks.mqtt_commands`)."""
    version = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
    return mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=version, manual_ack=True,
        **({} if version == mqtt.MQTTv5 else {"clean_session": False}),
    )  # fmt: skip


class MqttLink:
    """One broker connection shared by the MQTT forwarder (events, verdicts) and the app (states, commands)."""

    def __init__(
        self,
        section: MqttSection,
        prefix: str,
        client_id: str,
        handlers: InboundHandlers,
        client_factory: Callable[[str, str], mqtt.Client] = paho_client,
        clock: Clock | None = None,
        discovery: Discovery | None = None,
    ) -> None:
        self.section = section
        self.topics = Topics(prefix)
        self._discovery = discovery
        self._subscriptions = self.topics.subscriptions + ((discovery.status_topic,) if discovery else ())
        self.client_id = client_id
        self.stats = MqttStats()
        self._clock = clock or SystemClock()
        self._where = f"{section.host}:{section.port}"
        self._connected = threading.Event()
        self._acks = threading.Condition()  # notified on every PUBACK and on disconnect
        self._epoch = 0  # +1 per established session
        self._state_lock = threading.Lock()  # orders retained-state publishes against the on-connect replay
        self._retained: dict[str, bytes] = {}  # topic -> latest retained payload we own
        self._cameras: set[str] = set()  # cameras whose status was published: set offline at stop
        # +1 at every accepted CONNACK and every disconnect: a command is acknowledged only on the connection it
        # came on, which may be before our SUBACK (a persistent session's redeliveries arrive right after CONNACK)
        self._connection = 0
        self._subscribe_mid: int | None = None
        self._reported = ""  # last connection state logged: log once per change
        self._started = self._stopping = False
        self._failed_attempts = 0  # since the last established session: sets the next reconnect wait
        self._random = random.Random()
        self._v5 = section.protocol == "5"
        self._client = client_factory(client_id, section.protocol)
        self._commands = CommandIntake(
            self.topics, section.max_payload_bytes, handlers, self.stats, self._publish_retained, self._acknowledge,
            self._clock,
        )  # fmt: skip
        self._configure()

    def _configure(self) -> None:
        section, client = self.section, self._client
        if section.username is not None:
            client.username_pw_set(section.username, section.password)
        if section.tls:
            try:
                client.tls_set(
                    ca_certs=None if section.ca_file is None else str(section.ca_file),  # None: system CAs
                    certfile=None if section.cert_file is None else str(section.cert_file),
                    keyfile=None if section.key_file is None else str(section.key_file),
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise ValueError(f"mqtt.ca_file / cert_file / key_file: cannot load the TLS files: {exc}") from exc
        client.will_set(self.topics.available, "offline", qos=1, retain=True)
        client.reconnect_delay_set(section.reconnect_min_s, section.reconnect_min_s)  # type: ignore[arg-type]
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message

    # --- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; returns at once whether or not a broker answers."""
        if self._started:
            raise RuntimeError("MqttLink.start() called twice")
        self._started = True
        self._commands.start()
        section = self.section
        if self._v5:  # keep the session across reconnects and restarts (paho's default starts the first clean)
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = section.session_expiry_s
            properties.ReceiveMaximum = RECEIVE_MAXIMUM
            self._client.connect_async(
                section.host, section.port, keepalive=section.keepalive_s, clean_start=False, properties=properties
            )
        else:
            self._client.connect_async(section.host, section.port, keepalive=section.keepalive_s)
        self._client.loop_start()
        log.info(
            "MQTT: connecting to %s as %s (MQTT %s, tls %s, %s)", self._where, self.client_id, section.protocol,
            "on" if section.tls else "off", "with credentials" if section.username else "anonymous",
        )  # fmt: skip

    def stop(self) -> None:
        """Set every camera's retained status to ``offline`` (nothing inspects them any more; an HMI that
        shows the camera tiles must not keep showing ``online``), say ``stopped`` (retained; waits up to
        STOP_WAIT_S for the broker's ack when connected), disconnect cleanly so the will is not published,
        and stop the network thread."""
        if not self._started or self._stopping:
            return
        self._stopping = True
        self._commands.stop()  # still connected: what it finishes is acknowledged
        if self.connected:
            with self._state_lock:
                for camera in sorted(self._cameras):
                    topic = self.topics.status(camera)
                    self._retained[topic] = str(CameraStatus.OFFLINE).encode()
                    self._client.publish(topic, self._retained[topic], qos=1, retain=True)
                info = self._client.publish(self.topics.available, "stopped", qos=1, retain=True)
            try:
                info.wait_for_publish(STOP_WAIT_S)
            except (RuntimeError, ValueError) as exc:
                log.warning("MQTT: could not publish 'stopped': %s", exc)
        self._client.disconnect()
        self._client.loop_stop()
        self._set_disconnected()
        self._report("stopped", logging.INFO, "MQTT: disconnected from %s (stopped)", self._where)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def epoch(self) -> int:
        """Changes with every established session: a publisher that sees it change knows the connection
        it was using is gone."""
        return self._epoch

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # --- publishing ---------------------------------------------------------------------------------------

    def publish_camera_status(self, camera: str, status: CameraStatus | str) -> None:
        if not CAMERA.match(camera):
            raise ValueError(f"camera name {camera!r} cannot be used in a topic")
        with self._state_lock:
            self._cameras.add(camera)  # stop() sets it offline
        self._publish_retained(self.topics.status(camera), str(CameraStatus(status)).encode())

    def publish_camera_enabled(self, camera: str, enabled: bool) -> None:
        """``P/<camera>/enabled``: at start and at every switch, whichever channel made it (MQTT, the page, a
        reload), so HMIs and Home Assistant's switch show the state without waiting for an MQTT command."""
        self._publish_retained(self.topics.enabled(camera), b"true" if enabled else b"false")

    def publish_camera_product(self, camera: str, product: str) -> None:
        """``P/<camera>/product``: the recipe the camera inspects, at start and at every changeover."""
        self._publish_retained(self.topics.product(camera), product.encode())

    def publish_model_state(self, state: dict[str, Any]) -> None:
        self._publish_retained(self.topics.model_state, dumps(state))

    def publish_stats(self, document: dict[str, Any]) -> None:
        self._publish_retained(self.topics.stats, dumps(document))

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        """Remember (for the on-connect replay) and publish now when connected, QoS 1, retained."""
        with self._state_lock:
            self._retained[topic] = payload
            if self.connected:
                self._client.publish(topic, payload, qos=1, retain=True)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        """Hand one message to paho; the returned info tells when the broker acknowledged it."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0:
            # The connection dropped under us: paho keeps the message and resends it after the reconnect, but
            # its info would keep the error and make is_published() raise even once it is acknowledged.
            info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        elif info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttUnavailable(f"publish to {topic} refused: {mqtt.error_string(info.rc)}")
        return info

    def wait_acked(self, infos: Sequence[mqtt.MQTTMessageInfo], timeout: float, epoch: int) -> int:
        """Wait until all ``infos`` are acknowledged, ``timeout`` seconds pass, or session ``epoch`` ends;
        returns how many LEADING infos are acknowledged. Real time: this waits on the network."""
        deadline = time.monotonic() + timeout
        with self._acks:
            while True:
                done = 0
                while done < len(infos) and infos[done].is_published():
                    done += 1
                remaining = deadline - time.monotonic()
                if done == len(infos) or remaining <= 0 or self._epoch != epoch or not self.connected:
                    return done
                self._acks.wait(min(remaining, ACK_POLL_S))

    # --- paho callbacks (network thread) ---------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:  # paho disconnects and retries with backoff
            unsupported = self._v5 and reason.value in (1, 132)  # "unsupported protocol version"
            hint = ' (a broker without MQTT 5: set [mqtt] protocol = "3.1.1")' if unsupported else ""
            self._report(f"refused {reason}", logging.ERROR, "MQTT: broker %s refused us: %s%s", self._where, reason,
                         hint)  # fmt: skip
            return
        self._connection += 1
        log.debug("MQTT: CONNACK from %s (session present: %s)", self._where, flags.session_present)
        # Subscribe even with a session present: cheap, and right if the broker lost the session. MQTT 5 keeps
        # the retain flag of a command published retained while we are subscribed, so it is refused too.
        if self._v5:
            command: Any = SubscribeOptions(qos=1, retainAsPublished=True)
            birth: Any = SubscribeOptions(qos=0)
        else:
            command, birth = 1, 0
        wanted = [(topic, command) for topic in self.topics.subscriptions]
        if self._discovery is not None:
            wanted.append((self._discovery.status_topic, birth))
        _, self._subscribe_mid = client.subscribe(wanted)

    def _on_subscribe(
        self, client: mqtt.Client, _userdata: Any, mid: int, reasons: list[ReasonCode], _props: Any
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [t for t, r in zip(self._subscriptions, reasons, strict=False) if r.is_failure]
        if refused:
            log.error(
                "MQTT: broker refused the subscriptions %s (check its ACL): those messages will not arrive", refused
            )
        with self._state_lock:  # see the module docstring: paho's resends are queued by now
            client.publish(self.topics.available, "online", qos=1, retain=True)
            for topic, payload in self._retained.items():
                client.publish(topic, payload, qos=1, retain=True)
            self._publish_discovery()
            with self._acks:
                self._epoch += 1
                self._failed_attempts = 0
                self.stats.connects += 1
                self._connected.set()
                self._acks.notify_all()
        self._report("connected", logging.INFO, "MQTT: connected to %s as %s", self._where, self.client_id)

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this from inside its ``except OSError`` and passes no error: read it from there, so a
        # TLS failure (wrong CA, expired certificate) says so instead of looking like a network problem.
        cause = sys.exc_info()[1]
        self._schedule_reconnect()
        self._report(
            "unreachable", logging.WARNING, "MQTT: cannot connect to %s (%s); retrying every %s to %s s",
            self._where, cause or "unreachable", self.section.reconnect_min_s, self.section.reconnect_max_s,
        )  # fmt: skip

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self._connection += 1  # commands received on the lost connection are no longer acknowledged
        # Also called after every failed attempt. Losing a session is news; so is a connection the broker
        # dropped before accepting it (with TLS 1.3 a refused client certificate surfaces only this way);
        # a refused CONNACK was already reported by _on_connect.
        self._schedule_reconnect()
        if self._stopping:
            self._set_disconnected()
        elif self._set_disconnected():
            self._report(
                "disconnected", logging.WARNING, "MQTT: lost the connection to %s (%s); reconnecting",
                self._where, reason,
            )  # fmt: skip
        elif not self._reported.startswith("refused"):
            self._report(
                "dropped", logging.WARNING,
                "MQTT: %s closed the connection before accepting it (%s): check TLS client certificate and ACL",
                self._where, reason,
            )  # fmt: skip

    def _schedule_reconnect(self) -> None:
        """Set paho's next wait (it reconnects after this callback returns): paho's own backoff doubles up
        to the maximum without jitter. A failed attempt may reach both failure callbacks; counting it twice
        only reaches the cap sooner."""
        minimum, maximum = self.section.reconnect_min_s, self.section.reconnect_max_s
        ceiling = backoff_delay(self._failed_attempts, minimum, maximum)
        self._failed_attempts += 1
        wait = max(minimum, ceiling * self._random.uniform(0.5, 1.0))
        self._client.reconnect_delay_set(wait, wait)  # type: ignore[arg-type]

    def _set_disconnected(self) -> bool:
        """Clear "connected" and wake ack waiters; True if a session was established until now."""
        with self._acks:
            was = self._connected.is_set()
            if was:
                self.stats.disconnects += 1
            self._connected.clear()
            self._acks.notify_all()
        return was

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, _mid: int, _reason: ReasonCode, _props: Any) -> None:
        # Runs with paho's message lock held: only touch our own condition here (never call into paho).
        with self._acks:
            self.stats.published += 1
            self._acks.notify_all()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Only queue it: the command worker checks, carries out and then acknowledges (see mqtt_commands).
        try:
            topic: str | None = message.topic
        except UnicodeDecodeError:
            topic = None
        if self._discovery is not None and topic == self._discovery.status_topic:
            if self._discovery.asks_again(bytes(message.payload), bool(message.retain)):
                self._republish_discovery()
            return
        received = Received(topic, bytes(message.payload), bool(message.retain), message.mid, message.qos,
                            self._connection)  # fmt: skip
        self._commands.put(received)

    def _republish_discovery(self) -> None:
        """Home Assistant (re)started: publish the discovery configs again, here on the network thread (paho
        only queues a few dozen messages; nothing waits). Not a command: QoS 0, nothing to acknowledge. Before
        our SUBACK there is nothing to do: the connect publishes them then."""
        with self._state_lock:
            if not self.connected:
                return
            self._publish_discovery()
        log.info("MQTT: Home Assistant is online: its discovery configs published again")

    def _publish_discovery(self) -> None:
        """The Home Assistant configs (none with discovery off), QoS 1, retained; the caller holds
        ``_state_lock``."""
        for config in self._discovery.configs if self._discovery is not None else ():
            self._client.publish(config.topic, config.payload, qos=1, retain=True)

    def _acknowledge(self, received: Received) -> None:
        """PUBACK a handled command, on the connection it came on only (module docstring of mqtt_commands)."""
        if received.qos == 0 or received.connection != self._connection:
            return
        self._client.ack(received.mid, received.qos)

    def _report(self, state: str, level: int, message: str, *args: object) -> None:
        """Log a connection state once per change; repeats go to DEBUG."""
        if state == self._reported:
            level = logging.DEBUG
        self._reported = state
        log.log(level, message, *args)

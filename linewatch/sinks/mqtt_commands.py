"""Commands received over MQTT: checked and carried out off paho's network thread, acknowledged once handled.

Why a worker: a label counts as received only once it is journaled (durable: an fsync). Done on the network
thread one message at a time, that held a flood to about 36 commands/s; the broker queued the rest and,
past its queue limit, dropped them without a word. Here the network thread only queues the message. One
worker takes what has arrived (up to MAX_BATCH), checks each message in arrival order, journals the labels
among them in one transaction (one fsync for the lot: InboundHandlers.feedback takes a burst), carries out
the other commands in between, in order, and then acknowledges every message of the batch, in order.

Acknowledging after handling (paho's ``manual_ack``) is what lets a command survive a crash: the broker
redelivers an unacknowledged QoS 1 message when the persistent session resumes, and a label delivered twice
is recognised by the journal's repeat window. A message is acknowledged only on the connection it came on
(``Received.connection``): after a reconnect the broker resends it under the same packet id, and an ack sent
later for the old copy could acknowledge a different message that reused the id. How many unacknowledged
commands wait here is bounded by the broker's window: our MQTT 5 Receive Maximum, Mosquitto's
``max_inflight_messages`` under 3.1.1.

Every refused message is counted in ``stats.rejected[(kind, reason)]`` and logged at most once per
``REJECT_LOG_INTERVAL_S`` per (kind, reason); nothing a message holds can stop the worker.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from linewatch.clock import Clock
from linewatch.feedback import FeedbackRequest
from linewatch.sinks.mqtt_payloads import CommandTopic, Rejected, Topics, dumps, parse_payload, speaker, topic_kind

log = logging.getLogger(__name__)

MAX_BATCH = 256  # messages handled (and labels journaled) together at most
REJECT_LOG_INTERVAL_S = 10.0
STOP_WAIT_S = 5.0  # how long stop() waits for the batch in hand


class RejectedPayload(Exception):
    """A handler's refusal of a well-formed command (unknown id or camera). ``reason`` is a short counter
    label (no ids in it); ``detail`` (or the chained cause) goes to the log line."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class LabelCommand:
    """One label received on ``<camera>/feedback/set``."""

    camera: str
    request: FeedbackRequest


class InboundHandlers(Protocol):
    """What the application does with checked commands. Called on the command worker's thread."""

    def feedback(self, commands: Sequence[LabelCommand]) -> list[RejectedPayload | None]:
        """Journal a burst of labels at once; per command, None (journaled) or why it was refused."""
        ...

    def set_enabled(self, camera: str, enabled: bool, by: str) -> None: ...  # by: CommandTopic.by

    def select_product(self, camera: str, product: str, by: str) -> None: ...  # the App publishes P/<camera>/product

    def trigger(self, name: str, part_id: str | None, by: str) -> str: ...  # the part id taken (one is made if None)

    def retrain(self, reason: str | None, by: str) -> dict[str, Any]: ...  # echoed on P/retrain/state


@dataclass
class MqttStats:
    connects: int = 0  # sessions established (SUBACK received)
    disconnects: int = 0  # established sessions lost or closed
    published: int = 0  # QoS 1 messages the broker acknowledged
    arrived: int = 0  # command messages the broker delivered (queued for the command worker)
    received: int = 0  # command messages handled, valid or not
    accepted: int = 0  # commands a handler accepted
    rejected: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic kind, reason) -> count


@dataclass(frozen=True)
class Received:
    """A message as the network thread hands it over. ``topic`` is None when it is not UTF-8."""

    topic: str | None
    payload: bytes
    retain: bool
    mid: int
    qos: int
    connection: int  # the link's connection count when it arrived


class CommandIntake:
    """The worker between paho's network thread and the handlers. ``echo(topic, payload)`` publishes a
    retained echo; ``acknowledge(received)`` sends the PUBACK if the message's connection is still up."""

    def __init__(
        self,
        topics: Topics,
        max_payload_bytes: int,
        handlers: InboundHandlers,
        stats: MqttStats,
        echo: Callable[[str, bytes], None],
        acknowledge: Callable[[Received], None],
        clock: Clock,
    ) -> None:
        self.topics = topics
        self._max_payload_bytes = max_payload_bytes
        self._handlers = handlers
        self._stats = stats
        self._echo = echo
        self._acknowledge = acknowledge
        self._clock = clock
        self._queue: queue.SimpleQueue[Received | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._reject_log: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (last logged, suppressed)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-commands", daemon=True)
        self._thread.start()

    def put(self, received: Received) -> None:
        """Queue one message (network thread: never blocks)."""
        self._stats.arrived += 1
        self._queue.put(received)

    def stop(self) -> None:
        """Finish what was queued before now, then end. Messages arriving later stay unacknowledged: the broker
        delivers them again when the session resumes."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(STOP_WAIT_S)
        if self._thread.is_alive():
            log.warning("MQTT: the command worker did not finish within %s s; its commands will be redelivered",
                        STOP_WAIT_S)  # fmt: skip

    # --- the worker ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            batch: list[Received | None] = [self._queue.get()]
            while len(batch) < MAX_BATCH and batch[-1] is not None:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            messages = [item for item in batch if item is not None]
            try:
                self._handle(messages)
            except Exception:  # a bug here must not end command handling for the life of the daemon
                log.exception("MQTT: unexpected error handling %d commands", len(messages))
                self._count(("unknown", "internal_error"))
            for message in messages:
                self._acknowledge(message)
            if batch[-1] is None:
                return

    def _handle(self, messages: Sequence[Received]) -> None:
        """Check each message in order; journal runs of labels together; carry out the rest one by one."""
        labels: list[tuple[Received, LabelCommand]] = []
        for message in messages:
            self._stats.received += 1
            checked = self._check(message)
            if checked is None:
                continue
            command, value = checked
            if command.kind == "feedback":
                assert command.camera is not None and isinstance(value, FeedbackRequest)
                request = replace(value, user=speaker(value.user, command.client))
                labels.append((message, LabelCommand(command.camera, request)))
                continue
            self._journal_labels(labels)  # labels that came first are journaled first
            labels = []
            self._carry_out(message, command, value)
        self._journal_labels(labels)

    def _check(self, message: Received) -> tuple[CommandTopic, FeedbackRequest | bool | str | None] | None:
        """(what the topic says, the payload's value) of a valid command; None when it was refused (counted and
        logged)."""
        if message.topic is None:
            self._reject("unknown", "bad_topic", "?", "topic is not UTF-8")
            return None
        try:
            command = topic_kind(self.topics, message.topic)
        except Rejected as problem:
            self._reject("unknown", problem.reason, message.topic, problem.detail)
            return None
        if message.retain and not message.payload:  # someone clearing a retained command, as the log asks
            log.debug("MQTT: retained command on %s cleared", message.topic)
            return None
        try:
            return command, parse_payload(command.kind, message.payload, message.retain, self._max_payload_bytes)
        except Rejected as problem:
            self._reject(command.kind, problem.reason, message.topic, problem.detail)
            return None

    def _journal_labels(self, labels: Sequence[tuple[Received, LabelCommand]]) -> None:
        if not labels:
            return
        try:
            outcomes = self._handlers.feedback([command for _, command in labels])
        except Exception as exc:  # the journal is not writable (disk full): every label of the burst is refused
            for message, _ in labels:
                self._reject("feedback", "handler_error", str(message.topic), f"{type(exc).__name__}: {exc}")
            log.warning("MQTT: %d labels not journaled", len(labels), exc_info=True)
            return
        for (message, command), outcome in zip(labels, outcomes, strict=True):
            if outcome is not None:
                self._refused(message, "feedback", outcome)
                continue
            self._stats.accepted += 1
            request = command.request
            log.log(logging.INFO if len(labels) == 1 else logging.DEBUG,
                    "MQTT: %s labelled %s on %s %s by %s", command.camera, request.label, request.target,
                    request.target_id, request.user or "an unnamed operator")  # fmt: skip
        if len(labels) > 1:
            log.info("MQTT: %d labels received together, journaled in one transaction", len(labels))

    def _carry_out(self, message: Received, command: CommandTopic, value: Any) -> None:
        camera, kind = command.camera, command.kind
        try:
            if kind == "enabled":
                assert camera is not None and isinstance(value, bool)
                self._handlers.set_enabled(camera, value, command.by)
                log.info("MQTT: camera %s %s by %s", camera, "enabled" if value else "disabled", command.by)
                self._echo(self.topics.enabled(camera), b"true" if value else b"false")
            elif kind == "trigger":
                assert camera is not None and (value is None or isinstance(value, str))
                part_id = self._handlers.trigger(camera, value, command.by)
                log.debug("MQTT: %s triggered for part %s by %s", camera, part_id, command.by)
            elif kind == "product":
                assert camera is not None and isinstance(value, str)
                self._handlers.select_product(camera, value, command.by)
                log.info("MQTT: camera %s changed over to %r by %s", camera, value, command.by)
            else:
                state = self._handlers.retrain(value, command.by)
                log.info("MQTT: retrain requested by %s (%s)", command.by, value or "no reason given")
                self._echo(self.topics.retrain_state, dumps(state))
        except RejectedPayload as problem:
            self._refused(message, kind, problem)
        except Exception as exc:
            self._reject(kind, "handler_error", str(message.topic), f"{type(exc).__name__}: {exc}", exc_info=True)
        else:
            self._stats.accepted += 1

    def _refused(self, message: Received, kind: str, problem: RejectedPayload) -> None:
        cause = problem.__cause__
        detail = problem.detail or (str(cause) if cause else problem.reason)
        self._reject(kind, problem.reason, str(message.topic), detail)

    def _reject(self, kind: str, reason: str, topic: str, detail: str, exc_info: bool = False) -> None:
        key = (kind, reason)
        self._count(key)
        now = self._clock.monotonic()
        last, suppressed = self._reject_log.get(key, (None, 0))
        if last is not None and now - last < REJECT_LOG_INTERVAL_S:
            self._reject_log[key] = (last, suppressed + 1)
            return
        self._reject_log[key] = (now, 0)
        more = f" ({suppressed} more like it since the last report)" if suppressed else ""
        log.warning("MQTT: rejected a %s message on %s: %s: %s%s", kind, repr(topic)[:120], reason, detail[:300],
                    more, exc_info=exc_info)  # fmt: skip

    def _count(self, key: tuple[str, str]) -> None:
        self._stats.rejected[key] = self._stats.rejected.get(key, 0) + 1

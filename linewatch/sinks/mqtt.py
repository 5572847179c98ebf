"""MQTT output: the broker link (:mod:`linewatch.sinks.mqtt_link`) and the journal forwarder that publishes
defect events and the latest verdict per camera.

Topics under the prefix P (``linewatch/<site>/<line>``): ``P/available`` (online | offline as the will |
stopped), ``P/<camera>/status``, ``P/<camera>/defect`` (events, QoS 1, not retained), ``P/<camera>/verdict``
(retained, last verdict), ``P/model/state``, ``P/<camera>/enabled`` and ``P/retrain/state`` (echoes), and
the commands linewatch subscribes to: ``P/+/feedback/set``, ``P/+/enabled/set``, ``P/retrain/set``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import paho.mqtt.client as mqtt

from linewatch.pipeline.journal.records import (
    JournalError,
    JournalRecord,
    event_from_payload,
    part_from_payload,
    verdict_from_payload,
)
from linewatch.sinks.mqtt_commands import InboundHandlers, LabelCommand, MqttStats, RejectedPayload
from linewatch.sinks.mqtt_link import MqttLink, MqttUnavailable, paho_client
from linewatch.sinks.mqtt_payloads import dumps, event_message, part_message, verdict_message

__all__ = [
    "InboundHandlers",
    "LabelCommand",
    "MqttForwarder",
    "MqttLink",
    "MqttStats",
    "MqttUnavailable",
    "RejectedPayload",
    "paho_client",
]

log = logging.getLogger(__name__)


class MqttForwarder:
    """Publishes journal events (QoS 1 on ``P/<camera>/defect``) and verdicts (QoS 1, retained, on
    ``P/<camera>/verdict``; only the latest of each camera in a chunk, the tile shows nothing else) and
    reports a record delivered only once the broker acknowledged it (PUBACK).

    Why events arrive in journal order, and none is lost:

    - ``send`` refuses (raises) while the link is not connected, so nothing new is published into a dead
      connection; the runner backs off and offers the same records again.
    - Within a call, messages are published back to back in journal order on one connection, and the broker
      forwards them in the order received (MQTT requires it per topic, i.e. per camera; Mosquitto keeps it
      across topics too).
    - The return value is the leading prefix whose messages are all acknowledged within ``ack_timeout_s``;
      everything after it is offered again, and the journal cursor never passes an unacknowledged event.
    - A message published but not yet acknowledged when the connection dropped stays in paho's session
      state; paho resends it (DUP) first thing after the reconnect, in the original order. So we do not
      publish it again: the in-flight message is remembered per record (``_pending``) and, when that record
      is offered again, we wait for the original message's PUBACK instead. A consumer therefore only sees
      duplicates as redeliveries of the same message (same ``event_id`` and ``seq``), never a reordering.
    - New messages after a reconnect come after paho's resends because the link reports "connected" only at
      SUBACK (see :mod:`linewatch.sinks.mqtt_link`). If the session changes while we publish (epoch), we
      stop publishing the rest of the chunk.
    - A process restart loses paho's in-memory state but not the journal: unacknowledged records are
      published again from the cursor, in order (at least once).

    Verdicts are acknowledged like events: waiting costs one round trip per chunk (the events' wait is
    paid anyway), and it keeps a verdict resent after a reconnect from landing after a newer one.
    A record whose journal payload the journal's own parser refuses (JournalError: a bug, not an outage) is
    skipped with an error log and counted in ``skipped``: retrying it forever would stall every later alert.
    """

    name = "mqtt"
    kinds = frozenset({"event", "verdict", "part"})

    def __init__(self, link: MqttLink, site: str, line: str, public_url: str | None = None) -> None:
        self._link = link
        self._site = site
        self._line = line
        self._public_url = public_url  # [web] public_url: absolute evidence links in the payloads
        self._pending: dict[tuple[str, str], tuple[int, mqtt.MQTTMessageInfo]] = {}  # (kind, key) -> position, info
        self.skipped = 0

    def send(self, records: Sequence[JournalRecord]) -> int:
        link = self._link
        if not link.connected:
            raise MqttUnavailable(f"not connected to the MQTT broker {link.section.host}:{link.section.port}")
        if not records:
            return 0
        epoch = link.epoch
        first = records[0].position
        self._pending = {key: entry for key, entry in self._pending.items() if entry[0] >= first}
        latest = {record.camera: index for index, record in enumerate(records) if record.kind == "verdict"}
        waits: list[mqtt.MQTTMessageInfo | None] = []  # per record: the message to wait for, None: nothing to wait
        for index, record in enumerate(records):
            if record.kind not in self.kinds or (record.kind == "verdict" and latest[record.camera] != index):
                waits.append(None)  # not ours, or a newer verdict of this camera follows in this chunk
                continue
            pending = self._pending.get((record.kind, record.key))
            if pending is not None:
                waits.append(pending[1])
                continue
            if not link.connected or link.epoch != epoch:
                break  # the session changed under us: publish the rest after the next connect
            message = self._message(record)
            if message is None:
                waits.append(None)
                continue
            topic, payload, retain = message
            info = link.publish(topic, payload, qos=1, retain=retain)
            self._pending[(record.kind, record.key)] = (record.position, info)
            waits.append(info)
        tracked = [(index, info) for index, info in enumerate(waits) if info is not None]
        acked = link.wait_acked([info for _, info in tracked], link.section.ack_timeout_s, epoch)
        delivered = tracked[acked][0] if acked < len(tracked) else len(waits)
        for record in records[:delivered]:
            self._pending.pop((record.kind, record.key), None)
        return delivered

    def _message(self, record: JournalRecord) -> tuple[str, bytes, bool] | None:
        topics = self._link.topics
        try:
            if record.kind == "event":
                document = event_message(event_from_payload(record.payload), self._site, self._line, self._public_url)
                return topics.defect(record.camera), dumps(document), False
            if record.kind == "part":  # the journal's camera column holds the station
                document = part_message(part_from_payload(record.payload), self._site, self._line)
                return topics.part(record.camera), dumps(document), False
            document = verdict_message(verdict_from_payload(record.payload), self._site, self._line, self._public_url)
            return topics.verdict(record.camera), dumps(document), True
        except JournalError as exc:
            self.skipped += 1
            log.error("MQTT: journal record #%d (%s %s) cannot be published, skipped: %s",
                      record.position, record.kind, record.key, exc)  # fmt: skip
            return None

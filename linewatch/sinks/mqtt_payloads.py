"""MQTT topics and payloads: what linewatch publishes and how it checks what it receives. No I/O here.

Topics hang under one prefix P (``linewatch/<site>/<line>`` by default); see :class:`Topics`. Outgoing
messages are compact JSON built from the typed Event / Verdict that :mod:`linewatch.pipeline.journal` parses (and
checks) from its records, so the payload schema is read in one place. Incoming ones are checked in a fixed
order (topic shape, retained flag, then size, UTF-8, JSON by :func:`linewatch.feedback.decode_json`, the
strict decoder every untrusted channel shares, then schema) and every failure is a :class:`Rejected`
carrying a short reason code (a counter label, never an id) and a sentence for the log.

Incoming retained messages are refused: a command left retained on a ``.../set`` topic would be replayed
at every (re)subscribe, re-running a retrain or re-applying a stale enable on each reconnect. Commands sent
while linewatch was offline still arrive (the persistent session queues them) and are not flagged retained.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from linewatch.feedback import (
    ID_PATTERN,
    MAX_ID_LENGTH,
    MAX_USER_LENGTH,
    FeedbackError,
    FeedbackRequest,
    check_reason,
    decode_json,
    feedback_from_document,
)
from linewatch.pipeline.journal.records import format_ts, part_payload
from linewatch.sinks.mqtt_stats import STATS_FIELDS
from linewatch.types import Event, PartResult, Verdict

CAMERA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
CAMERA_COMMANDS = ("feedback", "enabled", "product")  # P/<camera>/<command>/set
PLACEHOLDER = re.compile(r"<[a-z]+>")  # <camera>, <station>, <name>: one topic level


@dataclass(frozen=True)
class TopicSpec:
    """One topic of linewatch's MQTT interface: the registry :class:`Topics` builds names from, the
    subscriptions come from, and ``docs/mqtt.md``'s table is written from (``python -m linewatch.mqtt_reference``)."""

    suffix: str  # under the prefix; "<camera>" stands for a camera's name
    published: bool  # True: linewatch publishes it; False: linewatch subscribes to it
    qos: int
    retained: bool
    payload: str  # what a message holds, in a sentence
    fields: tuple[str, ...] = ()  # the keys of its JSON object, in order, where they are fixed


EVENT_FIELDS = (
    "event_id", "type", "seq", "site", "line", "camera", "product", "frame_ts", "score", "threshold", "verdict",
    "model_version", "inspection_id", "part_id", "snapshot", "heatmap", "snapshot_url", "heatmap_url", "end_reason",
)  # fmt: skip
VERDICT_FIELDS = (
    "inspection_id", "site", "line", "camera", "product", "frame_ts", "score", "threshold", "verdict",
    "model_version", "snapshot", "heatmap", "snapshot_url", "heatmap_url",
)  # fmt: skip
PART_FIELDS = (
    "result_id", "site", "line", "station", "part_id", "verdict", "score", "reason", "at", "model_version", "product",
    "inspections",
)  # fmt: skip
MODEL_STATE_FIELDS = (
    "version", "path", "backbone", "pretrained", "backbone_sha256", "random_weights", "runtime", "thresholds",
    "calibration_warnings", "trained_at", "status", "retrain",
)  # fmt: skip
TOPIC_SPECS = (
    TopicSpec("available", True, 1, True, "`online` on every connect, `offline` as the last will, `stopped` on a "
              "clean exit"),
    TopicSpec("model/state", True, 1, True, "the model in service and the latest retraining news", MODEL_STATE_FIELDS),
    TopicSpec("retrain/state", True, 1, True, "the answer to `retrain/set`: `status` (`started`, `busy`, `disabled` "
              "or `refused`), `trigger`, `requested`, and a `reason` when it did not start"),
    TopicSpec("stats", True, 1, True, "counters since `since`: frames per camera, verdicts per product and verdict; "
              "every `[mqtt] stats_interval_s`", STATS_FIELDS),
    TopicSpec("<camera>/status", True, 1, True, "`online`, `offline`, `stalled` or `disabled`; every camera goes "
              "`offline` at a clean stop (after a crash read `P/available`, the will)"),
    TopicSpec("<camera>/defect", True, 1, False, "a defect episode's `new`, `update` and `end` messages", EVENT_FIELDS),
    TopicSpec("<camera>/verdict", True, 1, True, "the camera's latest verdict, for HMI tiles", VERDICT_FIELDS),
    TopicSpec("<camera>/enabled", True, 1, True, "`true` or `false`: whether the camera is read; at start, at every "
              "switch from any channel, and as the echo of `<camera>/enabled/set`"),
    TopicSpec("<camera>/product", True, 1, True, "the product (recipe) the camera inspects: at start and at every "
              "changeover"),
    TopicSpec("<station>/part", True, 1, False, "a station's verdict on one part: `OK`, `NOK` or `incomplete` "
              "(a camera did not report by the deadline), with the reason", PART_FIELDS),
    TopicSpec("<camera>/feedback/set", False, 1, False, 'an operator\'s label: `{"inspection_id" or "event_id": ..., '
              '"label": "normal"|"defect", "user": ...}`'),
    TopicSpec("<camera>/enabled/set", False, 1, False, '`true`, `false` or `{"enabled": true|false}`'),
    TopicSpec("<camera>/product/set", False, 1, False, '`"<product>"` or `{"product": "<product>"}`: change over from '
              "the camera's next frame; refused for a product the model in service does not know"),
    TopicSpec("<name>/trigger", False, 1, False, 'a part arrived at a station or triggered camera `<name>`: `{}`, '
              '`"<part id>"` or `{"part_id": "..."}` (an empty payload too); its next frame is scored for that part'),
    TopicSpec("retrain/set", False, 1, False, '`{}` or `{"reason": "..."}`: retrain now'),
)  # fmt: skip


@dataclass(frozen=True)
class Topics:
    """Every topic name under ``prefix``. ``subscriptions`` are the only ones linewatch listens to, so its
    own retained state and echoes never come back to it."""

    prefix: str

    @property
    def available(self) -> str:
        return f"{self.prefix}/available"

    @property
    def model_state(self) -> str:
        return f"{self.prefix}/model/state"

    @property
    def retrain_state(self) -> str:
        return f"{self.prefix}/retrain/state"

    @property
    def stats(self) -> str:
        return f"{self.prefix}/stats"

    def status(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/status"

    def defect(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/defect"

    def verdict(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/verdict"

    def enabled(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/enabled"

    def product(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/product"

    def part(self, station: str) -> str:
        return f"{self.prefix}/{station}/part"

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The TOPIC_SPECS linewatch listens to, a camera's name as the ``+`` wildcard. ``/#`` also matches the
        topic itself (MQTT 3.1.1 4.7.1.2), so one subscription takes a command with or without its client level
        (:func:`topic_kind`)."""
        return tuple(
            f"{self.prefix}/{PLACEHOLDER.sub('+', spec.suffix)}/#" for spec in TOPIC_SPECS if not spec.published
        )


# --- incoming ---------------------------------------------------------------------------------------------------


class Rejected(Exception):
    """An incoming message that is not acted on. ``reason`` is a short counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CommandTopic:
    """What a command's topic says: its kind, its camera, and who sent it.

    ``client`` is the optional last level (``P/<camera>/enabled/set/<client>``). MQTT does not tell a subscriber
    who published, but the broker's ACL can: a grant of write on ``.../set/anna`` to anna's account alone
    makes the level a name the broker vouches for (deploy/mosquitto/linewatch.acl). Commands on the bare topic
    are still taken, recorded as from an unnamed MQTT client; an ACL that grants no bare topic refuses them."""

    kind: str  # "feedback" | "enabled" | "product" | "retrain" | "trigger"
    # camera: the camera, or for "trigger" the station or camera named
    camera: str | None
    client: str | None

    @property
    def by(self) -> str:
        """Who sent it, as actions and retrain triggers record it: ``mqtt: <client>`` or ``mqtt``."""
        return f"mqtt: {self.client}" if self.client else "mqtt"


def topic_kind(topics: Topics, topic: str) -> CommandTopic:
    """The command a topic we subscribe to carries; raises Rejected ("bad_topic") for anything else, including
    a camera segment that is not a camera name or a client level that is not a name."""
    head = topics.prefix + "/"
    rest = topic[len(head) :].split("/") if topic.startswith(head) else []
    command = rest[:2] if rest[:2] == ["retrain", "set"] or rest[1:2] == ["trigger"] else rest[:3]
    client = _client(rest[len(command) :])
    if command == ["retrain", "set"]:
        return CommandTopic("retrain", None, client)
    if len(command) == 2 and command[1] == "trigger":
        if not CAMERA.match(command[0]):
            raise Rejected("bad_topic", f"name {command[0][:40]!r} is not a station or camera name")
        return CommandTopic("trigger", command[0], client)
    if len(command) == 3 and command[1] in CAMERA_COMMANDS and command[2] == "set":
        if not CAMERA.match(command[0]):
            raise Rejected("bad_topic", f"camera segment {command[0][:40]!r} is not a camera name")
        return CommandTopic(command[1], command[0], client)
    raise Rejected("bad_topic", "not a topic linewatch accepts commands on")


def _client(levels: list[str]) -> str | None:
    """The client level after a command's topic: none, or one printable name of at most MAX_USER_LENGTH."""
    if not levels:
        return None
    name = levels[0]
    if len(levels) > 1 or not name or len(name) > MAX_USER_LENGTH or not name.isprintable():
        raise Rejected("bad_topic", "after .../set only one level may follow: the sending client's name")
    return name


def speaker(declared: str | None, client: str | None) -> str | None:
    """The user a label records: the broker-vouched client, and the person it names in the payload's ``user``
    when that differs (an HMI's one account speaking for its operators); a bare topic keeps the declared name."""
    if client is None or declared in (None, client):
        return client or declared
    return f"{declared} via {client}"


def parse_payload(kind: str, payload: bytes, retain: bool, max_bytes: int) -> FeedbackRequest | bool | str | None:
    """Check one message for a topic of ``kind`` (from :func:`topic_kind`): a FeedbackRequest for feedback,
    the bool for enabled, the product (str) for product, the reason (str | None) for retrain. Raises Rejected."""
    if retain:
        raise Rejected("retained", "retained command ignored (clear it: publish an empty retained message)")
    if kind == "trigger" and not payload.strip():
        return None  # a PLC gateway's bare pulse: a part arrived, no id
    try:  # FeedbackError's reasons (too_large, not_utf8, bad_json, schema) become ours unchanged
        document = decode_json(payload, max_bytes)
        if kind == "feedback":
            return feedback_from_document(document)
    except FeedbackError as problem:
        raise Rejected(problem.reason, str(problem)) from None
    if kind == "enabled":
        return _enabled(document)
    if kind == "product":
        return _product(document)
    if kind == "trigger":
        return _part_id(document)
    return _retrain_reason(document)


def _part_id(document: Any) -> str | None:
    """``{}``, ``"<part id>"`` or ``{"part_id": "<part id>"}``: an id as inspection ids are (ID_PATTERN)."""
    if isinstance(document, dict):
        unknown = sorted(set(document) - {"part_id"})
        if unknown:
            raise Rejected("schema", f"unknown keys {unknown}; allowed: part_id")
        document = document.get("part_id")
    if document is None:
        return None
    if not (isinstance(document, str) and len(document) <= MAX_ID_LENGTH and ID_PATTERN.match(document)):
        raise Rejected("schema", f"part_id must be an id of at most {MAX_ID_LENGTH} characters "
                                 "(letters, digits and . _ : - ; not starting with a sign)")  # fmt: skip
    return document


def _product(document: Any) -> str:
    """``"<product>"`` or ``{"product": "<product>"}``; whether the model knows it is the handler's question."""
    if isinstance(document, dict):
        unknown = sorted(set(document) - {"product"})
        if unknown:
            raise Rejected("schema", f"unknown keys {unknown}; allowed: product")
        document = document.get("product")
    if not (isinstance(document, str) and 0 < len(document) <= MAX_USER_LENGTH and document.isprintable()):
        raise Rejected("schema", f'payload must be "<product>" or {{"product": "<product>"}}, a printable name '
                                 f"of 1 to {MAX_USER_LENGTH} characters")  # fmt: skip
    return document


def _enabled(document: Any) -> bool:
    """``true`` / ``false`` or ``{"enabled": true|false}``."""
    if isinstance(document, dict):
        unknown = sorted(set(document) - {"enabled"})
        if unknown:
            raise Rejected("schema", f"unknown keys {unknown}; allowed: enabled")
        document = document.get("enabled")
    if not isinstance(document, bool):
        raise Rejected("schema", 'payload must be true, false or {"enabled": true|false}')
    return document


def _retrain_reason(document: Any) -> str | None:
    """``{}`` or ``{"reason": "..."}``."""
    if not isinstance(document, dict):
        raise Rejected("schema", f"payload must be a JSON object, got {type(document).__name__}")
    unknown = sorted(set(document) - {"reason"})
    if unknown:
        raise Rejected("schema", f"unknown keys {unknown}; allowed: reason")
    try:
        return check_reason(document.get("reason"))
    except FeedbackError as problem:
        raise Rejected(problem.reason, str(problem)) from None


# --- outgoing ---------------------------------------------------------------------------------------------------


def dumps(document: Any) -> bytes:
    """Compact strict JSON (no NaN/Infinity: every consumer must be able to parse it)."""
    return json.dumps(document, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def evidence_link(public_url: str | None, path: str | None) -> str | None:
    """The absolute address of an evidence file on the page (``<public_url>evidence/<path>``), for consumers
    that show the picture; None without a public URL or a file."""
    return None if public_url is None or path is None else f"{public_url}evidence/{quote(path)}"


def event_message(event: Event, site: str, line: str, public_url: str | None = None) -> dict[str, Any]:
    """An event as published on ``P/<camera>/defect``. The journal calls the verdict ``label``; the message
    calls it ``verdict`` (label is what an operator gives)."""
    return {
        "event_id": event.event_id,
        "type": event.type.value,
        "seq": event.seq,
        "site": site,
        "line": line,
        "camera": event.camera,
        "product": event.product,
        "frame_ts": format_ts(event.frame_ts),
        "score": event.score,
        "threshold": event.threshold,
        "verdict": event.label.value,
        "model_version": event.model_version,
        "inspection_id": event.inspection_id,
        "part_id": event.part_id,
        "snapshot": event.snapshot,
        "heatmap": event.heatmap,
        "snapshot_url": evidence_link(public_url, event.snapshot),
        "heatmap_url": evidence_link(public_url, event.heatmap),
        "end_reason": None if event.end_reason is None else event.end_reason.value,  # quiet|stopped|restarted
    }


def part_message(part: PartResult, site: str, line: str) -> dict[str, Any]:
    """A station's part verdict as published on ``P/<station>/part``: the journal's payload with the line's names."""
    payload = part_payload(part)
    return {"result_id": payload.pop("result_id"), "site": site, "line": line, **payload}


def verdict_message(verdict: Verdict, site: str, line: str, public_url: str | None = None) -> dict[str, Any]:
    """A verdict as retained on ``P/<camera>/verdict`` for HMI tiles."""
    return {
        "inspection_id": verdict.inspection_id,
        "site": site,
        "line": line,
        "camera": verdict.camera,
        "product": verdict.product,
        "frame_ts": format_ts(verdict.frame_ts),
        "score": verdict.score,
        "threshold": verdict.threshold,
        "verdict": verdict.label.value,
        "model_version": verdict.model_version,
        "snapshot": verdict.snapshot,
        "heatmap": verdict.heatmap,
        "snapshot_url": evidence_link(public_url, verdict.snapshot),
        "heatmap_url": evidence_link(public_url, verdict.heatmap),
    }

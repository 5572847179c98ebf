"""MQTT topics and payloads: what linewatch publishes and how it checks what it receives. No I/O here.

Topics hang under one prefix P (``linewatch/<site>/<line>`` by default); see :class:`Topics`. Outgoing
messages are compact JSON built from journal record payloads; incoming ones are checked in a fixed order
(topic shape, retained flag, size, UTF-8, JSON, schema) and every failure is a :class:`Rejected` carrying a
short reason code (a counter label, never an id) and a sentence for the log.

Incoming retained messages are refused: a command left retained on a ``.../set`` topic would be replayed
at every (re)subscribe, re-running a retrain or re-applying a stale enable on each reconnect. Commands sent
while linewatch was offline still arrive (the persistent session queues them) and are not flagged retained.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from linewatch.feedback import FeedbackError, FeedbackRequest, feedback_from_document

CAMERA = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
MAX_REASON_LENGTH = 200


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

    def status(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/status"

    def defect(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/defect"

    def verdict(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/verdict"

    def enabled(self, camera: str) -> str:
        return f"{self.prefix}/{camera}/enabled"

    @property
    def subscriptions(self) -> tuple[str, ...]:
        return (f"{self.prefix}/+/feedback/set", f"{self.prefix}/+/enabled/set", f"{self.prefix}/retrain/set")


# --- incoming ---------------------------------------------------------------------------------------------------


class Rejected(Exception):
    """An incoming message that is not acted on. ``reason`` is a short counter label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def topic_kind(topics: Topics, topic: str) -> tuple[str, str | None]:
    """("feedback" | "enabled" | "retrain", camera or None) for a topic we subscribe to; raises Rejected
    ("bad_topic") for anything else, including a camera segment that is not a camera name."""
    head = topics.prefix + "/"
    rest = topic[len(head) :].split("/") if topic.startswith(head) else []
    if rest == ["retrain", "set"]:
        return "retrain", None
    if len(rest) == 3 and rest[1] in ("feedback", "enabled") and rest[2] == "set":
        if not CAMERA.match(rest[0]):
            raise Rejected("bad_topic", f"camera segment {rest[0][:40]!r} is not a camera name")
        return rest[1], rest[0]
    raise Rejected("bad_topic", "not a topic linewatch accepts commands on")


def parse_payload(kind: str, payload: bytes, retain: bool, max_bytes: int) -> FeedbackRequest | bool | str | None:
    """Check one message for a topic of ``kind`` (from :func:`topic_kind`): a FeedbackRequest for feedback,
    the bool for enabled, the reason (str | None) for retrain. Raises Rejected."""
    if retain:
        raise Rejected("retained", "retained command ignored (clear it: publish an empty retained message)")
    document = decode_json(payload, max_bytes)
    if kind == "feedback":
        try:
            return feedback_from_document(document)
        except FeedbackError as problem:
            raise Rejected(problem.reason, str(problem)) from None
    if kind == "enabled":
        return _enabled(document)
    return _retrain_reason(document)


def decode_json(payload: bytes, max_bytes: int) -> Any:
    if len(payload) > max_bytes:
        raise Rejected("too_large", f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("not_utf8", "payload is not UTF-8 text") from None
    if not text.strip():
        raise Rejected("bad_json", "payload is empty")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise Rejected("bad_json", f"payload is not JSON ({exc.msg} at position {exc.pos})") from None
    except ValueError as exc:
        raise Rejected("bad_json", str(exc)) from None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"key {key[:40]!r} appears twice")
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


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
    reason = document.get("reason")
    if reason is not None and not (
        isinstance(reason, str) and 0 < len(reason) <= MAX_REASON_LENGTH and reason.isprintable()
    ):
        raise Rejected("schema", f"reason must be a printable string of 1 to {MAX_REASON_LENGTH} characters")
    return reason


# --- outgoing ---------------------------------------------------------------------------------------------------


def dumps(document: Any) -> bytes:
    """Compact strict JSON (no NaN/Infinity: every consumer must be able to parse it)."""
    return json.dumps(document, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_message(payload: dict[str, Any], site: str, line: str) -> dict[str, Any]:
    """A journal event payload as published on ``P/<camera>/defect``. The journal calls the verdict
    ``label``; the message calls it ``verdict`` (label is what an operator gives)."""
    return {
        "event_id": payload["event_id"],
        "type": payload["type"],
        "seq": payload["seq"],
        "site": site,
        "line": line,
        "camera": payload["camera"],
        "product": payload["product"],
        "frame_ts": payload["frame_ts"],
        "score": payload["score"],
        "threshold": payload["threshold"],
        "verdict": payload["label"],
        "model_version": payload["model_version"],
        "inspection_id": payload["inspection_id"],
        "part_id": payload.get("part_id"),
        "snapshot": payload.get("snapshot"),
        "heatmap": payload.get("heatmap"),
    }


def verdict_message(payload: dict[str, Any], site: str, line: str) -> dict[str, Any]:
    """A journal verdict payload as retained on ``P/<camera>/verdict`` for HMI tiles."""
    return {
        "inspection_id": payload["inspection_id"],
        "site": site,
        "line": line,
        "camera": payload["camera"],
        "product": payload["product"],
        "frame_ts": payload["frame_ts"],
        "score": payload["score"],
        "threshold": payload["threshold"],
        "verdict": payload["label"],
        "model_version": payload["model_version"],
        "snapshot": payload.get("snapshot"),
        "heatmap": payload.get("heatmap"),
    }

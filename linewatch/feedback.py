"""Operator feedback requests: what every channel (MQTT, ``linewatch label``, HTTP, the review page) accepts.

A label names an inspection or a whole defect episode (event) and says ``normal`` or ``defect``. This
module only parses and validates requests from untrusted input (strict JSON, ids, users), so the channels
in ``sinks/`` and ``web/`` can share it; accepting a request into the journal is
:func:`linewatch.daemon.feedback.submit`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from linewatch.types import LabelTarget, VerdictLabel

FEEDBACK_MAX_BYTES = 4096  # a feedback body is well under 1 KiB; HTTP uses this, MQTT its max_payload_bytes
MAX_ID_LENGTH = 128
MAX_USER_LENGTH = 64
MAX_REASON_LENGTH = 200
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")  # inspection and event ids


class FeedbackError(ValueError):
    """A feedback request that cannot be accepted. ``reason`` is a short counter label (no ids in it)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class FeedbackRequest:
    target: LabelTarget
    target_id: str
    label: VerdictLabel
    user: str | None = None


def parse_feedback(data: bytes, max_bytes: int) -> FeedbackRequest:
    """Validate a JSON feedback body: ``{"inspection_id" | "event_id": ID, "label": "normal"|"defect",
    "user": optional name}``. Anything else (too big, not UTF-8, not JSON, both or neither id, extra keys,
    wrong types) raises :class:`FeedbackError` naming the problem."""
    return feedback_from_document(decode_json(data, max_bytes))


def decode_json(payload: bytes, max_bytes: int) -> Any:
    """Strict JSON from an untrusted channel (MQTT, HTTP): size-limited, UTF-8, not empty, no duplicate
    keys (which copy would win is parser-dependent) and no NaN/Infinity. Raises FeedbackError with the
    reason ``too_large``, ``not_utf8`` or ``bad_json``."""
    if len(payload) > max_bytes:
        raise FeedbackError("too_large", f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise FeedbackError("not_utf8", "payload is not UTF-8 text") from None
    if not text.strip():
        raise FeedbackError("bad_json", "payload is empty")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise FeedbackError("bad_json", f"payload is not JSON ({exc.msg} at position {exc.pos})") from None
    except ValueError as exc:
        raise FeedbackError("bad_json", str(exc)) from None
    except RecursionError:  # [[[[...]]]]: the parser recurses once per level
        raise FeedbackError("bad_json", "payload is nested too deeply") from None


def check_reason(value: Any, key: str = "reason") -> str | None:
    """An optional free-text field of a command (a retrain reason, a version name): None, or 1 to
    MAX_REASON_LENGTH printable characters, so no newline or terminal escape reaches the log or the store.
    Raises FeedbackError("schema")."""
    fits = isinstance(value, str) and 0 < len(value) <= MAX_REASON_LENGTH and value.isprintable()
    if value is not None and not fits:
        raise FeedbackError("schema", f"{key} must be a printable string of 1 to {MAX_REASON_LENGTH} characters")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for key, value in pairs:
        if key in document:
            raise ValueError(f"key {key[:40]!r} appears twice")
        document[key] = value
    return document


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def feedback_from_document(document: Any) -> FeedbackRequest:
    if not isinstance(document, dict):
        raise FeedbackError("schema", f"payload must be a JSON object, got {type(document).__name__}")
    unknown = sorted(set(document) - {"inspection_id", "event_id", "label", "user"})
    if unknown:
        raise FeedbackError("schema", f"unknown keys {unknown}; allowed: inspection_id or event_id, label, user")
    ids = [
        (target, document[key])
        for target, key in ((LabelTarget.INSPECTION, "inspection_id"), (LabelTarget.EVENT, "event_id"))
        if key in document
    ]
    if len(ids) != 1:
        raise FeedbackError("schema", "give exactly one of inspection_id and event_id")
    target, target_id = ids[0]
    if not isinstance(target_id, str) or len(target_id) > MAX_ID_LENGTH or not ID_PATTERN.match(target_id):
        raise FeedbackError("schema", f"{target}_id must be an id string of at most {MAX_ID_LENGTH} characters")
    label = document.get("label")
    if label not in ("normal", "defect"):
        raise FeedbackError("schema", 'label must be "normal" or "defect"')
    user = document.get("user")
    if user is not None and not (isinstance(user, str) and 0 < len(user) <= MAX_USER_LENGTH and user.isprintable()):
        raise FeedbackError("schema", f"user must be a printable string of 1 to {MAX_USER_LENGTH} characters")
    return FeedbackRequest(target, target_id, VerdictLabel(label), user)

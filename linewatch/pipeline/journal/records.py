"""What the journal holds: its records and their JSON payloads, checked both ways.

Every reader of journal payloads (the store forwarder, MQTT, the operator page) gets typed values or a
:class:`JournalError` naming the record, never a half-checked dict. Datetimes are written as UTC ISO 8601
with exactly six fractional digits and a ``Z``; naive datetimes are refused. Payloads are strict JSON (no
NaN/Infinity), so MQTT and PostgreSQL consumers can always parse them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from linewatch.types import (
    ACTION_KINDS,
    PART_VERDICTS,
    Action,
    EndReason,
    Event,
    EventType,
    Label,
    LabelTarget,
    PartResult,
    Verdict,
    VerdictLabel,
)

_T = TypeVar("_T")


class JournalError(Exception):
    """The journal cannot do what was asked: bad file, newer schema, bad payload, misuse of a cursor."""


@dataclass(frozen=True)
class JournalRecord:
    position: int  # monotonically increasing, gap-free order of commit across all kinds
    kind: str  # "verdict" | "event" | "label" | "action" | "part"
    key: str  # inspection_id for verdicts, f"{event_id}:{seq}" for events, label_id / action_id for the others
    camera: str
    payload: dict[str, Any]  # verdict_payload / event_payload / label_payload
    committed_at: str  # UTC ISO 8601 with 'Z', from the journal's clock


def format_ts(value: datetime) -> str:
    """UTC ISO 8601, always six fractional digits, 'Z' suffix. Naive datetimes are refused."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise JournalError(f"datetime {value.isoformat()} is naive; the journal stores timezone-aware UTC only")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_ts(text: str) -> datetime:
    if not isinstance(text, str) or not text.endswith("Z"):
        raise JournalError(f"timestamp {text!r} is not UTC ISO 8601 ending in 'Z'")
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError as exc:
        raise JournalError(f"timestamp {text!r} is not ISO 8601: {exc}") from exc


def verdict_payload(verdict: Verdict) -> dict[str, Any]:
    return {
        "inspection_id": verdict.inspection_id,
        "camera": verdict.camera,
        "product": verdict.product,
        "seq": verdict.seq,
        "frame_ts": format_ts(verdict.frame_ts),
        "captured_mono": verdict.captured_mono,
        "score": verdict.score,
        "threshold": verdict.threshold,
        "label": str(verdict.label),
        "model_version": verdict.model_version,
        "part_id": verdict.part_id,
        "snapshot": verdict.snapshot,
        "heatmap": verdict.heatmap,
    }


def verdict_from_payload(payload: dict[str, Any]) -> Verdict:
    return _parse(
        "verdict",
        payload,
        lambda p: Verdict(
            inspection_id=_text(p["inspection_id"]),
            camera=_text(p["camera"]),
            product=_text(p["product"]),
            seq=_whole(p["seq"]),
            frame_ts=parse_ts(p["frame_ts"]),
            captured_mono=_finite(p["captured_mono"]),
            score=_finite(p["score"]),
            threshold=_finite(p["threshold"]),
            label=VerdictLabel(p["label"]),
            model_version=_text(p["model_version"]),
            part_id=_optional_text(p.get("part_id")),
            snapshot=_optional_text(p.get("snapshot")),
            heatmap=_optional_text(p.get("heatmap")),
        ),
    )


def event_payload(event: Event) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "type": str(event.type),
        "seq": event.seq,
        "camera": event.camera,
        "product": event.product,
        "frame_ts": format_ts(event.frame_ts),
        "score": event.score,
        "threshold": event.threshold,
        "label": str(event.label),
        "model_version": event.model_version,
        "inspection_id": event.inspection_id,
        "part_id": event.part_id,
        "snapshot": event.snapshot,
        "heatmap": event.heatmap,
        "end_reason": None if event.end_reason is None else str(event.end_reason),
    }


def event_from_payload(payload: dict[str, Any]) -> Event:
    return _parse(
        "event",
        payload,
        lambda p: Event(
            event_id=_text(p["event_id"]),
            type=EventType(p["type"]),
            seq=_whole(p["seq"]),
            camera=_text(p["camera"]),
            product=_text(p["product"]),
            frame_ts=parse_ts(p["frame_ts"]),
            score=_finite(p["score"]),
            threshold=_finite(p["threshold"]),
            label=VerdictLabel(p["label"]),
            model_version=_text(p["model_version"]),
            inspection_id=_text(p["inspection_id"]),
            part_id=_optional_text(p.get("part_id")),
            snapshot=_optional_text(p.get("snapshot")),
            heatmap=_optional_text(p.get("heatmap")),
            end_reason=None if p.get("end_reason") is None else EndReason(p["end_reason"]),  # older records: none
        ),
    )


def label_payload(label: Label) -> dict[str, Any]:
    return {
        "label_id": label.label_id,
        "target": str(label.target),
        "target_id": label.target_id,
        "camera": label.camera,
        "label": str(label.label),
        "source": label.source,
        "user": label.user,
        "labelled_at": format_ts(label.labelled_at),
    }


def label_from_payload(payload: dict[str, Any]) -> Label:
    return _parse(
        "label",
        payload,
        lambda p: Label(
            label_id=_text(p["label_id"]),
            target=LabelTarget(p["target"]),
            target_id=_text(p["target_id"]),
            camera=_text(p["camera"]),
            label=VerdictLabel(p["label"]),
            source=_text(p["source"]),
            labelled_at=parse_ts(p["labelled_at"]),
            user=_optional_text(p.get("user")),
        ),
    )


def action_payload(action: Action) -> dict[str, Any]:
    return {
        "action_id": action.action_id,
        "kind": action.kind,
        "by": action.by,
        "at": format_ts(action.at),
        "camera": action.camera,
        "detail": action.detail,
    }


def action_from_payload(payload: dict[str, Any]) -> Action:
    return _parse(
        "action",
        payload,
        lambda p: Action(
            action_id=_text(p["action_id"]),
            kind=_one_of(p["kind"], ACTION_KINDS),
            by=_text(p["by"]),
            at=parse_ts(p["at"]),
            camera=_optional_text(p.get("camera")),
            detail=_optional_text(p.get("detail")),
        ),
    )


def part_payload(part: PartResult) -> dict[str, Any]:
    return {
        "result_id": part.result_id,
        "station": part.station,
        "part_id": part.part_id,
        "verdict": part.verdict,
        "score": part.score,
        "reason": part.reason,
        "at": format_ts(part.at),
        "model_version": part.model_version,
        "product": part.product,
        "inspections": list(part.inspections),
    }


def part_from_payload(payload: dict[str, Any]) -> PartResult:
    return _parse(
        "part",
        payload,
        lambda p: PartResult(
            station=_text(p["station"]),
            part_id=_text(p["part_id"]),
            verdict=_one_of(p["verdict"], PART_VERDICTS),
            score=None if p["score"] is None else _finite(p["score"]),
            reason=_text(p["reason"]),
            at=parse_ts(p["at"]),
            model_version=_optional_text(p.get("model_version")),
            product=_optional_text(p.get("product")),
            inspections=tuple(_text(i) for i in p["inspections"]),
            result_id=_text(p["result_id"]),
        ),
    )


def _one_of(value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _parse(kind: str, payload: dict[str, Any], build: Callable[[dict[str, Any]], _T]) -> _T:
    """Readers of journal payloads (the store, MQTT) get typed values or a JournalError naming the record,
    never a half-checked dict: a missing key, a wrong type or a non-finite number is refused here."""
    try:
        return build(payload)
    except (KeyError, TypeError, ValueError, JournalError) as exc:
        raise JournalError(f"bad {kind} payload ({type(exc).__name__}: {exc}): {payload!r}") from exc


def _text(value: Any) -> str:
    # NUL is refused here: PostgreSQL cannot store it, and one such record would block its whole chunk.
    if not isinstance(value, str) or not value or "\x00" in value:
        raise TypeError(f"expected a non-empty string without NUL, got {value!r}")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _whole(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _finite(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TypeError(f"expected a finite number, got {value!r}")
    return float(value)


def event_key(event: Event) -> str:
    return f"{event.event_id}:{event.seq}"


def encode_payload(kind: str, key: str, payload: dict[str, Any]) -> str:
    """The stored form of a payload: compact, sorted, strict JSON; a value JSON cannot hold is a JournalError."""
    try:
        return json.dumps(payload, allow_nan=False, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise JournalError(f"{kind} {key!r} cannot be journaled: {exc}") from exc

"""Value types passed between the daemon's stages. No behaviour beyond trivial derived properties.

Data flows one way: source -> Frame -> batcher -> Batch -> scorer -> Verdict -> events -> Event ->
journal. Timestamps: ``captured_at`` is wall-clock UTC (what plant systems see); ``captured_mono``
is the monotonic clock at capture (what latency and timeouts are measured with).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import numpy as np


class CameraStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    STALLED = "stalled"
    DISABLED = "disabled"


class VerdictLabel(StrEnum):
    NORMAL = "normal"
    DEFECT = "defect"


class EventType(StrEnum):
    NEW = "new"
    UPDATE = "update"
    END = "end"


class EndReason(StrEnum):
    """Why an episode ended: its camera went quiet for the quiet period, the daemon stopped cleanly with
    it open, or the daemon found it left open (a crash or SIGKILL) at its next start."""

    QUIET = "quiet"
    STOPPED = "stopped"
    RESTARTED = "restarted"


@dataclass(frozen=True)
class Frame:
    """One captured image, already cropped and rotated as the camera's config asks."""

    camera: str
    seq: int  # per camera, strictly increasing from 1 for the life of the process
    captured_at: datetime  # UTC, timezone-aware
    captured_mono: float  # monotonic seconds at capture
    image: np.ndarray = field(repr=False)  # (H, W, 3) uint8 RGB
    product: str
    part_id: str | None = None
    model_image: np.ndarray | None = field(default=None, repr=False)  # (S, S, 3) resized for the model


@dataclass(frozen=True)
class Batch:
    """Frames cut together by the batcher; ``reason`` says why the batch was cut."""

    frames: tuple[Frame, ...]
    reason: str  # "full" | "timeout" | "drain"

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True)
class Verdict:
    """The scorer's judgement of one frame."""

    inspection_id: str  # stable, unique: "<camera>-<boot id>-<seq>"
    camera: str
    product: str
    seq: int
    frame_ts: datetime
    captured_mono: float
    score: float
    threshold: float
    label: VerdictLabel
    model_version: str
    part_id: str | None = None
    snapshot: str | None = None  # evidence JPEG, relative to the evidence folder; None when not kept
    heatmap: str | None = None  # heatmap overlay JPEG, same rules


@dataclass(frozen=True)
class Event:
    """One message of a defect episode: new, then updates, then end. Consumers dedupe on event_id + seq."""

    event_id: str  # stable for the whole episode
    type: EventType
    seq: int  # 1, 2, ... within the episode
    camera: str
    product: str
    frame_ts: datetime
    score: float
    threshold: float
    label: VerdictLabel
    model_version: str
    inspection_id: str
    part_id: str | None = None
    snapshot: str | None = None  # evidence of the inspection that produced this message
    heatmap: str | None = None
    end_reason: EndReason | None = None  # set on "end" messages only


class LabelTarget(StrEnum):
    INSPECTION = "inspection"
    EVENT = "event"


@dataclass(frozen=True)
class Label:
    """An operator's judgement of one inspection or one whole defect episode (event)."""

    label_id: str  # unique per submission (uuid4 hex); the journal and the store dedupe on it
    target: LabelTarget
    target_id: str  # inspection_id or event_id
    camera: str
    label: VerdictLabel
    source: str  # "mqtt" | "cli" | "http" | "web"
    labelled_at: datetime  # UTC, timezone-aware
    user: str | None = None


@dataclass(frozen=True)
class Action:
    """Something a person or a system did to the line (a camera switched, a retrain asked for, a rollback, a
    product changed, an account changed), and who: the audit trail the page shows and the store keeps."""

    action_id: str  # uuid4 hex; the journal and the store dedupe on it
    kind: str  # ACTION_KINDS
    by: str  # the channel and, where it vouches for one, the user: "web: erin", "mqtt: operator-anna", "http"
    at: datetime  # UTC, timezone-aware
    camera: str | None = None
    detail: str | None = None  # what was chosen or asked: the product, the version, the reason


ACTION_KINDS = (
    "camera_enabled", "camera_disabled", "product_selected", "retrain_requested", "rollback",
    "user_added", "user_removed", "user_role_changed", "user_password_changed", "nok_acknowledged",
)  # fmt: skip


PART_VERDICTS = ("OK", "NOK", "incomplete")


@dataclass(frozen=True)
class PartResult:
    """One part's verdict at one station (linewatch/plant/stations.py): the worst of its cameras' verdicts, or
    ``incomplete`` when a camera did not report by the station's deadline."""

    station: str
    part_id: str
    verdict: str  # PART_VERDICTS
    score: float | None  # the worst camera's score relative to its threshold (>= 1 is a defect); None: no camera
    reason: str  # why, in a sentence: the defect cameras, or the cameras that did not report in time
    at: datetime  # UTC, when the verdict was reached
    model_version: str | None
    product: str | None
    inspections: tuple[str, ...]  # the inspection ids of the frames judged, one per camera that reported
    result_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the journal and the store dedupe on it
    triggered_mono: float | None = None  # monotonic seconds of the trigger (latency metrics; not journaled)

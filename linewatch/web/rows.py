"""Value types the page's queries return and its views and plot read; no behaviour."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

ReviewTarget = Literal["event", "inspection"]
LabelFilter = Literal["normal", "defect", "unlabelled"]


@dataclass(frozen=True)
class ReviewItem:
    """One thing an operator should look at: a defect episode, or an inspection scored close to its threshold."""

    target: ReviewTarget
    target_id: str  # event_id or inspection id: what a label names
    camera: str
    product: str
    ts: datetime  # the episode's start, or the inspection's frame time (UTC)
    last_ts: datetime  # the episode's latest frame time; the frame time again for an inspection
    score: float  # the episode's peak score, or the inspection's score
    threshold: float
    verdict: str  # the scorer's: always "defect" for an episode
    model_version: str
    snapshot: str | None  # evidence paths relative to the evidence folder; None when none was kept
    heatmap: str | None
    label: str | None  # the latest operator label, None until labelled
    label_user: str | None
    labelled_at: datetime | None
    open: bool  # an episode not ended yet; always False for an inspection


@dataclass(frozen=True)
class InspectionRow:
    """One row of the history table."""

    inspection_id: str
    camera: str
    product: str
    frame_ts: datetime
    score: float
    threshold: float
    verdict: str
    model_version: str
    part_id: str | None
    snapshot: str | None
    heatmap: str | None
    label: str | None
    label_user: str | None
    labelled_at: datetime | None


@dataclass(frozen=True)
class HistoryFilter:
    """What the history page shows; None means any. Times are timezone-aware; ``until`` is exclusive."""

    camera: str | None = None
    product: str | None = None
    verdict: Literal["normal", "defect"] | None = None
    label: LabelFilter | None = None
    since: datetime | None = None
    until: datetime | None = None
    part_id: str | None = None  # a part's frames (every camera that saw it)


@dataclass(frozen=True)
class ScorePoint:
    """One inspection on the score-over-time plot, or one rolled-up minute (``rolled``)."""

    ts: datetime
    score: float
    threshold: float
    product: str
    verdict: str
    label: str | None
    rolled: bool = False  # a minute some of whose rows retention deleted: its highest score

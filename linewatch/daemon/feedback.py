"""Accepting operator feedback: one path for every channel (MQTT, ``linewatch label``, HTTP, the review page).

A label is checked against the journal (an unknown id is refused, so labels never point at nothing) and then
journaled like a verdict: durable at once, forwarded to the main store in order after the record it refers
to, and replayed if the store is down. Retraining later reads confirmed normals from the store. Parsing the
request is :mod:`linewatch.feedback`, shared with the channels that receive it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from linewatch.clock import Clock
from linewatch.feedback import FeedbackError, FeedbackRequest
from linewatch.pipeline.journal.outbox import Journal
from linewatch.types import Label, LabelTarget

REPEAT_WINDOW = timedelta(seconds=60)


def submit(journal: Journal, clock: Clock, request: FeedbackRequest, source: str, camera: str | None = None) -> Label:
    """Journal one label; see :func:`submit_many`. Raises FeedbackError("unknown_id" | "wrong_camera")."""
    outcome = submit_many(journal, clock, [(request, camera)], source)[0]
    if isinstance(outcome, FeedbackError):
        raise outcome
    return outcome


def submit_many(
    journal: Journal, clock: Clock, requests: Sequence[tuple[FeedbackRequest, str | None]], source: str
) -> list[Label | FeedbackError]:
    """Journal the labels of ``requests`` (each with the camera its channel names, or None) in ONE transaction,
    so a burst costs one fsync, not one per label. Per request, in order: the journaled Label, or the
    FeedbackError ("unknown_id" | "wrong_camera") that refused it. A JournalError (disk full) refuses all.

    A target must exist (and, when the channel names a camera, as the MQTT topic does, belong to it). The same
    judgement repeated within REPEAT_WINDOW (a QoS 1 redelivery, a double click), in this burst or before it,
    returns the label already journaled instead of a second copy; a changed mind is always journaled."""
    targets = [_target_camera(journal, request, camera) for request, camera in requests]
    latest = _latest_judgements(journal, requests, targets, clock.now() - REPEAT_WINDOW)
    outcomes: list[Label | FeedbackError] = []
    new: list[Label] = []
    for (request, _), target in zip(requests, targets, strict=True):
        if isinstance(target, FeedbackError):
            outcomes.append(target)
            continue
        key = (request.target, request.target_id)
        earlier = latest.get(key)
        judgement = (request.label, request.user, source)
        if earlier is not None and (earlier.label, earlier.user, earlier.source) == judgement:
            outcomes.append(earlier)
            continue
        label = Label(
            label_id=uuid.uuid4().hex,
            target=request.target,
            target_id=request.target_id,
            camera=target,
            label=request.label,
            source=source,
            labelled_at=clock.now(),
            user=request.user,
        )
        latest[key] = label  # a later repeat in this burst is a repeat of this one
        outcomes.append(label)
        new.append(label)
    if new:
        journal.append_batch((), (), new)
    return outcomes


def _target_camera(journal: Journal, request: FeedbackRequest, camera: str | None) -> str | FeedbackError:
    """The camera of the request's target, or why the request is refused."""
    found = journal.camera_of(request.target, request.target_id)
    if found is None:
        return FeedbackError("unknown_id", f"no {request.target} with id {request.target_id!r} in the journal")
    if camera is not None and found != camera:
        return FeedbackError(
            "wrong_camera", f"{request.target} {request.target_id!r} belongs to camera {found!r}, not {camera!r}"
        )
    return found


def _latest_judgements(
    journal: Journal,
    requests: Sequence[tuple[FeedbackRequest, str | None]],
    targets: Sequence[str | FeedbackError],
    since: datetime,
) -> dict[tuple[LabelTarget, str], Label]:
    """The newest label journaled since ``since`` on each accepted request's target: one query per camera."""
    ids_by_camera: dict[str, set[str]] = {}
    for (request, _), camera in zip(requests, targets, strict=True):
        if isinstance(camera, str):
            ids_by_camera.setdefault(camera, set()).add(request.target_id)
    latest: dict[tuple[LabelTarget, str], Label] = {}
    for camera, ids in ids_by_camera.items():
        for label in journal.recent_labels(camera, ids, since):  # newest first: the first seen wins
            latest.setdefault((label.target, label.target_id), label)
    return latest

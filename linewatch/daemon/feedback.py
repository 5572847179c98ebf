"""Accepting operator feedback: one path for every channel (MQTT, ``linewatch label``, HTTP, the review page).

A label is checked against the journal (an unknown id is refused, so labels never point at nothing) and then
journaled like a verdict: durable at once, forwarded to the main store in order after the record it refers
to, and replayed if the store is down. Retraining later reads confirmed normals from the store. Parsing the
request is :mod:`linewatch.feedback`, shared with the channels that receive it.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from linewatch.clock import Clock
from linewatch.feedback import FeedbackError, FeedbackRequest
from linewatch.pipeline.journal.outbox import Journal
from linewatch.types import Label

REPEAT_WINDOW = timedelta(seconds=60)


def submit(journal: Journal, clock: Clock, request: FeedbackRequest, source: str, camera: str | None = None) -> Label:
    """Journal the label after checking its target exists (and, when the channel names a camera, as the
    MQTT topic does, that the target belongs to it). Raises FeedbackError("unknown_id" | "wrong_camera").

    The same judgement repeated within REPEAT_WINDOW (a QoS 1 redelivery, a double click) returns the
    label already journaled instead of a second copy; a changed mind is always journaled."""
    found = journal.camera_of(request.target, request.target_id)
    if found is None:
        raise FeedbackError("unknown_id", f"no {request.target} with id {request.target_id!r} in the journal")
    if camera is not None and found != camera:
        raise FeedbackError(
            "wrong_camera", f"{request.target} {request.target_id!r} belongs to camera {found!r}, not {camera!r}"
        )
    for earlier in journal.recent_labels(found, clock.now() - REPEAT_WINDOW):
        if (earlier.target, earlier.target_id) == (request.target, request.target_id):
            if (earlier.label, earlier.user, earlier.source) == (request.label, request.user, source):
                return earlier
            break  # the latest judgement of this target differs: this one is news
    label = Label(
        label_id=uuid.uuid4().hex,
        target=request.target,
        target_id=request.target_id,
        camera=found,
        label=request.label,
        source=source,
        labelled_at=clock.now(),
        user=request.user,
    )
    journal.append_batch((), (), (label,))
    return label

"""Pure episode logic: one camera's verdicts -> defect episode messages (new, update, end).

No clock, no I/O: time is the verdict's ``frame_ts`` (capture time, wall-clock UTC), or the ``now``
passed to :func:`tick`. The per-camera state is an immutable :class:`CameraEpisodes`, replaced on
every call, so the rules are tested by tables and replay gives the same messages.

Rules, in the order :func:`step` applies them to one verdict:

1. Quiet end. If an episode is open and ``frame_ts - last_defect_at >= end_after_s``, it ends: an
   ``end`` message carrying this verdict's data (score, label, ...) with the next ``seq``. The
   debounce window is cleared, so a new episode needs the debounce again. This check runs before
   the verdict is counted, so a defect arriving after a gap longer than the quiet period (camera
   paused, slow line) ends the old episode rather than extending it; the outcome is the same
   whether or not :func:`tick` was called during the gap.
2. Debounce. The verdict's defect flag joins the last ``debounce_m`` flags.
3. New. With no episode open, when at least ``debounce_n`` of those flags are defects, a ``new``
   message (``seq`` 1) carrying this verdict's data opens an episode whose id is
   ``make_event_id(verdict)`` (default :func:`event_id_for`).
4. Update. With an episode open (before this verdict), a defect verdict whose score is above the
   highest score announced so far in the episode (by ``new`` or ``update``) emits an ``update``
   when at least ``update_min_interval_s`` has passed since the last ``new``/``update``. So
   consumers see the episode get worse, at a bounded rate. A higher score inside the interval is
   not announced by itself; a later verdict above the announced peak is.

:func:`tick` applies rule 1 with ``now`` when no verdicts arrive at all (camera stopped, stalled or
disabled); its ``end`` copies the last verdict seen in the episode with the next ``seq``. Both say
``end_reason`` quiet. :func:`close` ends an open episode at once (the daemon stops cleanly: ``stopped``),
and :func:`end_left_open` ends one that a crash left open, from its last journaled message (``restarted``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from linewatch.types import EndReason, Event, EventType, Verdict, VerdictLabel

# Fixed namespace for event ids: uuid5(EVENT_ID_NAMESPACE, "<camera>/<inspection_id>").
EVENT_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:linewatch:event")


@dataclass(frozen=True)
class EpisodePolicy:
    debounce_n: int = 2  # an episode starts when at least N of the last M verdicts of the camera are defects
    debounce_m: int = 3
    end_after_s: float = 5.0  # the episode ends after this long without a defect verdict (frame time)
    update_min_interval_s: float = 1.0  # "update" at most this often, and only when the score beats the peak

    def __post_init__(self) -> None:
        if self.debounce_n < 1:
            raise ValueError(f"debounce_n must be >= 1, got {self.debounce_n}")
        if self.debounce_m < self.debounce_n:
            raise ValueError(f"debounce_m must be >= debounce_n ({self.debounce_n}), got {self.debounce_m}")
        if not self.end_after_s > 0:
            raise ValueError(f"end_after_s must be > 0, got {self.end_after_s}")
        if not self.update_min_interval_s >= 0:
            raise ValueError(f"update_min_interval_s must be >= 0, got {self.update_min_interval_s}")


@dataclass(frozen=True)
class CameraEpisodes:
    """One camera's episode state; immutable, replaced on each step."""

    recent: tuple[bool, ...] = ()  # last M defect flags, oldest first
    event_id: str | None = None  # the open episode's id, None when no episode is open
    seq: int = 0  # messages emitted in the open episode
    started_at: datetime | None = None  # frame time of the verdict that opened the episode
    last_defect_at: datetime | None = None  # frame time of the camera's latest defect verdict
    last_update_at: datetime | None = None  # frame time of the episode's latest new/update message
    peak_score: float = 0.0  # highest score announced in the open episode
    last_verdict: Verdict | None = None  # latest verdict seen while the episode is open (for tick's end)

    @property
    def is_open(self) -> bool:
        return self.event_id is not None


def initial_state() -> CameraEpisodes:
    return CameraEpisodes()


def event_id_for(verdict: Verdict) -> str:
    """Stable episode id from the verdict that opened it: a UUID5 of ``"<camera>/<inspection_id>"`` in
    :data:`EVENT_ID_NAMESPACE`. Replaying the same verdicts yields the same ids (forwarders upsert on
    it); the fixed-length form is safe in topics, filenames and DB keys whatever the camera name."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{verdict.camera}/{verdict.inspection_id}"))


def _event(event_id: str, type_: EventType, seq: int, v: Verdict, end_reason: EndReason | None = None) -> Event:
    return Event(
        event_id=event_id,
        type=type_,
        seq=seq,
        camera=v.camera,
        product=v.product,
        frame_ts=v.frame_ts,
        score=v.score,
        threshold=v.threshold,
        label=v.label,
        model_version=v.model_version,
        inspection_id=v.inspection_id,
        part_id=v.part_id,
        snapshot=v.snapshot,
        heatmap=v.heatmap,
        end_reason=end_reason,
    )


def _quiet(state: CameraEpisodes, now: datetime, policy: EpisodePolicy) -> bool:
    if not state.is_open or state.last_defect_at is None:
        return False
    return (now - state.last_defect_at).total_seconds() >= policy.end_after_s


def _closed(state: CameraEpisodes) -> CameraEpisodes:
    """The state after an end: no episode, debounce window cleared, last defect time kept."""
    return CameraEpisodes(last_defect_at=state.last_defect_at)


def step(
    state: CameraEpisodes,
    verdict: Verdict,
    policy: EpisodePolicy,
    make_event_id: Callable[[Verdict], str] = event_id_for,
) -> tuple[CameraEpisodes, list[Event]]:
    """Feed one verdict of the camera; returns the new state and the messages to send (maybe none)."""
    if state.last_verdict is not None and state.last_verdict.camera != verdict.camera:
        raise ValueError(f"state belongs to camera {state.last_verdict.camera!r}, got a verdict of {verdict.camera!r}")
    events: list[Event] = []
    ts = verdict.frame_ts

    # 1. quiet end, judged before this verdict counts
    if _quiet(state, ts, policy):
        assert state.event_id is not None
        events.append(_event(state.event_id, EventType.END, state.seq + 1, verdict, EndReason.QUIET))
        state = _closed(state)

    # 2. debounce window
    defect = verdict.label == VerdictLabel.DEFECT
    recent = (*state.recent, defect)[-policy.debounce_m :]
    was_open = state.is_open
    state = replace(state, recent=recent, last_defect_at=ts if defect else state.last_defect_at)

    if not was_open:
        # 3. new
        if sum(recent) >= policy.debounce_n:
            event_id = make_event_id(verdict)
            events.append(_event(event_id, EventType.NEW, 1, verdict))
            state = replace(
                state,
                event_id=event_id,
                seq=1,
                started_at=ts,
                last_update_at=ts,
                peak_score=verdict.score,
                last_verdict=verdict,
            )
        return state, events

    # 4. update
    assert state.event_id is not None and state.last_update_at is not None
    state = replace(state, last_verdict=verdict)
    if (
        defect
        and verdict.score > state.peak_score
        and (ts - state.last_update_at).total_seconds() >= policy.update_min_interval_s
    ):
        seq = state.seq + 1
        events.append(_event(state.event_id, EventType.UPDATE, seq, verdict))
        state = replace(state, seq=seq, last_update_at=ts, peak_score=verdict.score)
    return state, events


def tick(state: CameraEpisodes, now: datetime, policy: EpisodePolicy) -> tuple[CameraEpisodes, list[Event]]:
    """End the open episode when no verdict has arrived for the quiet period (``now`` is wall-clock
    UTC, comparable with frame times). The ``end`` copies the episode's last verdict with the next
    ``seq``. Returns the state unchanged and no messages otherwise."""
    if not _quiet(state, now, policy):
        return state, []
    assert state.event_id is not None and state.last_verdict is not None
    end = _event(state.event_id, EventType.END, state.seq + 1, state.last_verdict, EndReason.QUIET)
    return _closed(state), [end]


def close(state: CameraEpisodes, reason: EndReason) -> tuple[CameraEpisodes, list[Event]]:
    """End the open episode now, whatever the quiet period says (the daemon is stopping): the ``end``
    copies the episode's last verdict with the next ``seq``. No messages when none is open."""
    if not state.is_open:
        return state, []
    assert state.event_id is not None and state.last_verdict is not None
    end = _event(state.event_id, EventType.END, state.seq + 1, state.last_verdict, reason)
    return _closed(state), [end]


def end_left_open(last: Event) -> Event:
    """The ``end`` of an episode whose latest journaled message is ``last`` (not an end): a crash or a
    SIGKILL kept the daemon from ending it. It copies that message, next ``seq``, reason ``restarted``; its
    frame time is the last one known, since when the episode really ended nobody saw."""
    if last.type is EventType.END:
        raise ValueError(f"episode {last.event_id} has ended already")
    return replace(last, type=EventType.END, seq=last.seq + 1, end_reason=EndReason.RESTARTED)

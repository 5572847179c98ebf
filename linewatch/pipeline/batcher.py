"""Per-camera slots -> batches: the hand-off between camera reader threads and the scorer thread.

Producers (one reader thread per camera) call :meth:`Batcher.put`, which never blocks beyond a short
lock and never refuses a frame silently: every frame that will not be scored is counted in
:class:`DropCounts` with its reason. The single consumer (the scorer thread) calls
:meth:`Batcher.next_batch`, which cuts a batch when :func:`cut_decision` says so.

Decisions made here:

- Slot policy per camera. ``LATEST`` keeps one frame and a newer frame replaces it (counted
  ``replaced``): right for live inspection where only the newest view matters. ``QUEUE`` keeps up
  to ``queue_size`` frames in capture order; when full the OLDEST frame is dropped to make room
  (counted ``queue_full``), so a backlog never grows stale. ``LATEST`` is always a one-frame slot:
  its ``queue_size`` is ignored (the config carries one ``queue_size`` whatever the policy).
- Cut-off: a batch is cut ``full`` when at least ``max_size`` frames are pending over all cameras,
  or ``timeout`` when the oldest pending frame (smallest ``captured_mono`` among the cameras'
  heads) has waited ``max_wait_s``. The deadline is computed as ``oldest + max_wait_s`` and compared
  with ``now`` so that a clock advanced by exactly ``max_wait_s`` always cuts (no float surprise).
- Fairness: a batch is filled round-robin, one frame per camera per round, oldest frame of each
  camera first, starting with the camera after the one that led (came first in) the previous
  batch. A fast camera cannot starve the others, and within a camera frames keep capture order.
- Stop: when the stop event is set, ``next_batch`` returns what is pending as ``drain`` batches of
  at most ``max_size`` frames (the scorer's batch size is a GPU memory bound), and ``None`` once
  nothing is pending. The caller loops until ``None``.
- Close: :meth:`Batcher.close` stops accepting frames (later puts are counted ``stopped``) and
  hands back the frames still pending; ``close(count_stopped=True)`` also counts them ``stopped``
  for callers that do not drain. After close, ``next_batch`` returns ``None`` at once.
- Time: only ``clock.monotonic()`` and ``frame.captured_mono`` are used for the cut-off. The wait
  itself uses real time in slices of at most ``poll_s`` (woken early by ``put``), so a fake clock
  advanced from another thread is noticed within one slice and the stop event within ``poll_s``.
  Frames must be stamped with the same clock the batcher is given (a frame "from the future"
  waits until the clock reaches its capture time plus ``max_wait_s``).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

from linewatch.clock import Clock
from linewatch.types import Batch, Frame


class SlotPolicy(StrEnum):
    LATEST = "latest"
    QUEUE = "queue"


class DropReason(StrEnum):
    REPLACED = "replaced"  # latest slot overwritten before its frame was scored
    QUEUE_FULL = "queue_full"  # queue policy: the oldest frame dropped to make room
    UNKNOWN_CAMERA = "unknown_camera"  # put for a camera never registered
    STOPPED = "stopped"  # put after close, or left pending at close without drain


class CutReason(StrEnum):
    FULL = "full"
    TIMEOUT = "timeout"
    ALL_CAMERAS = "all_cameras"
    DRAIN = "drain"


@dataclass
class DropCounts:
    """Dropped frames per (camera, reason). Not locked itself: the batcher guards it."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, camera: str, reason: DropReason | str, n: int = 1) -> None:
        if n <= 0:
            return
        key = (camera, str(reason))
        self.counts[key] = self.counts.get(key, 0) + n

    def snapshot(self) -> dict[tuple[str, str], int]:
        return dict(self.counts)

    def total(self, reason: DropReason | str | None = None) -> int:
        return sum(v for (_, r), v in self.counts.items() if reason is None or r == str(reason))


def cut_decision(
    pending: int,
    max_size: int,
    oldest_mono: float | None,
    now_mono: float,
    max_wait_s: float,
    cameras_waiting: int = 0,
    cameras: int = 0,
) -> str | None:
    """Pure cut-off rule: ``"full"`` when ``pending >= max_size``; ``"timeout"`` when something is
    pending and ``now_mono >= oldest_mono + max_wait_s``; ``"all_cameras"`` when every registered
    camera has a frame waiting; else ``None`` (keep waiting).

    The last rule is linewatch's: once every camera has contributed, waiting longer only adds latency
    (each camera's next frame is a frame period away), while a busy scorer still gets full batches
    because frames pile up while it works.
    """
    if pending <= 0:
        return None
    if pending >= max_size:
        return CutReason.FULL.value
    if oldest_mono is not None and now_mono >= oldest_mono + max_wait_s:
        return CutReason.TIMEOUT.value
    if cameras > 0 and cameras_waiting >= cameras:
        return CutReason.ALL_CAMERAS.value
    return None


@dataclass
class _Slot:
    policy: SlotPolicy
    frames: deque[Frame]


class Batcher:
    """Thread-safe: many producers (``put``), one consumer (``next_batch``)."""

    def __init__(self, max_size: int, max_wait_s: float, clock: Clock) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._max_size = max_size
        self._max_wait_s = max_wait_s
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._slots: dict[str, _Slot] = {}  # registration order is the round-robin order
        self._order: list[str] = []
        self._next_start = 0  # index into _order of the camera that leads the next batch's round
        self._drops = DropCounts()
        self._closed = False

    @property
    def max_size(self) -> int:
        return self._max_size

    @property
    def max_wait_s(self) -> float:
        return self._max_wait_s

    def add_camera(self, camera: str, policy: SlotPolicy, queue_size: int = 1) -> None:
        """Register a camera; ``queue_size`` bounds a ``QUEUE`` slot (``LATEST`` always holds one frame)."""
        policy = SlotPolicy(policy)
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size} for camera {camera!r}")
        size = 1 if policy is SlotPolicy.LATEST else queue_size
        with self._cond:
            if camera in self._slots:
                raise ValueError(f"camera {camera!r} is already registered")
            self._slots[camera] = _Slot(policy, deque(maxlen=size))
            self._order.append(camera)

    def put(self, frame: Frame) -> None:
        """Hand over a frame; never blocks the camera thread beyond the short lock."""
        with self._cond:
            slot = self._slots.get(frame.camera)
            if slot is None:
                self._drops.add(frame.camera, DropReason.UNKNOWN_CAMERA)
                return
            if self._closed:
                self._drops.add(frame.camera, DropReason.STOPPED)
                return
            q = slot.frames
            if q.maxlen is not None and len(q) >= q.maxlen:
                reason = DropReason.REPLACED if slot.policy is SlotPolicy.LATEST else DropReason.QUEUE_FULL
                self._drops.add(frame.camera, reason)  # the deque drops its oldest on append
            q.append(frame)
            self._cond.notify_all()

    def next_batch(self, stop: threading.Event, poll_s: float = 0.005) -> Batch | None:
        """Block until a batch is cut (``full``/``timeout``) or ``stop`` is set (``drain``, or None when
        nothing is pending). Returns None at once after :meth:`close`."""
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        with self._cond:
            while True:
                if self._closed:
                    return None
                pending = self._pending_locked()
                if stop.is_set():
                    if pending == 0:
                        return None
                    return self._take_locked(CutReason.DRAIN.value)
                oldest = self._oldest_locked()
                now = self._clock.monotonic()
                waiting = sum(1 for slot in self._slots.values() if slot.frames)
                reason = cut_decision(pending, self._max_size, oldest, now, self._max_wait_s, waiting, len(self._slots))
                if reason is not None:
                    return self._take_locked(reason)
                timeout = poll_s
                if oldest is not None:
                    timeout = min(max(oldest + self._max_wait_s - now, 0.0), poll_s)
                self._cond.wait(timeout=timeout)

    def pending(self) -> int:
        with self._cond:
            return self._pending_locked()

    def drops(self) -> dict[tuple[str, str], int]:
        """Snapshot of dropped-frame counts per (camera, reason)."""
        with self._cond:
            return self._drops.snapshot()

    def close(self, count_stopped: bool = False) -> list[Frame]:
        """Stop accepting frames and return those still pending, oldest capture first (stable across
        cameras in registration order). With ``count_stopped`` they are also counted ``stopped``."""
        with self._cond:
            self._closed = True
            frames: list[Frame] = []
            for camera in self._order:
                q = self._slots[camera].frames
                if count_stopped:
                    self._drops.add(camera, DropReason.STOPPED, len(q))
                frames.extend(q)
                q.clear()
            self._cond.notify_all()
        frames.sort(key=lambda f: f.captured_mono)
        return frames

    # -- internals, called with the lock held ------------------------------------------------------

    def _pending_locked(self) -> int:
        return sum(len(s.frames) for s in self._slots.values())

    def _oldest_locked(self) -> float | None:
        heads = [s.frames[0].captured_mono for s in self._slots.values() if s.frames]
        return min(heads) if heads else None

    def _take_locked(self, reason: str) -> Batch:
        n = len(self._order)
        rotation = [self._order[(self._next_start + i) % n] for i in range(n)]
        frames: list[Frame] = []
        while len(frames) < self._max_size:
            took = False
            for camera in rotation:
                if len(frames) >= self._max_size:
                    break
                q = self._slots[camera].frames
                if q:
                    frames.append(q.popleft())
                    took = True
            if not took:
                break
        if frames:
            self._next_start = (self._order.index(frames[0].camera) + 1) % n
        return Batch(frames=tuple(frames), reason=reason)

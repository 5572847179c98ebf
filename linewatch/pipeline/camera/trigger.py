"""Triggered cameras: a trigger (a part arriving at the station) takes the camera's next frame and tags it with the
part's id; between triggers the camera's frames are not scored.

A trigger only counts frames captured after it: a live stream's frame already in flight when the trigger came
shows the previous part. Triggers queue in order (a fast line can trigger again before the camera delivered),
up to MAX_PENDING; one more is refused with a sentence, never dropped silently, so the caller (MQTT, OPC UA)
can report it. A trigger that no frame answers within ``expire_s`` (the camera is offline) is dropped and
counted: its part is judged ``incomplete`` by the station's deadline anyway.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

MAX_PENDING = 64


class TriggerRefused(ValueError):
    """A trigger the camera cannot take; the message says why."""


@dataclass(frozen=True)
class Trigger:
    part_id: str
    at_mono: float  # monotonic seconds when it came


class TriggerGate:
    """The pending triggers of one camera; thread-safe (triggers come from MQTT, OPC UA and station threads, the
    camera's reader takes them)."""

    def __init__(self, camera: str, expire_s: float) -> None:
        self.camera = camera
        self.expire_s = expire_s
        self.expired = 0  # triggers no frame answered in time
        self._pending: deque[Trigger] = deque()
        self._arrived = threading.Condition()

    def trigger(self, part_id: str, now_mono: float) -> None:
        with self._arrived:
            self._drop_expired(now_mono)
            if len(self._pending) >= MAX_PENDING:
                raise TriggerRefused(
                    f"camera {self.camera} has {MAX_PENDING} triggers waiting for a frame; is it online?"
                )
            self._pending.append(Trigger(part_id, now_mono))
            self._arrived.notify_all()

    def take(self, captured_mono: float) -> Trigger | None:
        """The oldest trigger that came before a frame captured at ``captured_mono``, taken; None if none."""
        with self._arrived:
            self._drop_expired(captured_mono)
            if self._pending and self._pending[0].at_mono <= captured_mono:
                return self._pending.popleft()
            return None

    def wait(self, timeout_s: float) -> bool:
        """Wait until a trigger is pending (True) or ``timeout_s`` passed: a file or synthetic source reads
        only then, instead of producing frames nobody asked for."""
        with self._arrived:
            return self._arrived.wait_for(lambda: bool(self._pending), timeout_s)

    def wake(self) -> None:
        """Wake a waiting reader (it is being stopped)."""
        with self._arrived:
            self._arrived.notify_all()

    def pending(self) -> int:
        with self._arrived:
            return len(self._pending)

    def _drop_expired(self, now_mono: float) -> None:
        while self._pending and now_mono - self._pending[0].at_mono > self.expire_s:
            self._pending.popleft()
            self.expired += 1

"""One reader per camera: open the source, read frames, crop and rotate them, hand them on; reconnect with
exponential backoff when the source breaks and report the camera's status on every change.

Statuses: ``offline`` while the source cannot be opened or has just broken, ``online`` once it is open,
``stalled`` when an open source has delivered no frame for ``stalled_after_s`` (back to ``online`` with
the next frame; never for a source whose ``idle_is_normal``, a hot folder waiting for its next file),
``disabled`` when a non-looping video file has ended (the reader then returns). Nothing is reported on
stop: the daemon's own availability topic says it stopped.

The loop is written against a Clock and a stop Event, so tests run it synchronously with a FakeClock.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from linewatch.backoff import backoff_delay
from linewatch.clock import Clock
from linewatch.pipeline.camera.sources import EndOfStream, FrameSource, SourceError
from linewatch.pipeline.camera.trigger import TriggerGate
from linewatch.types import CameraStatus, Frame

logger = logging.getLogger(__name__)

ROTATIONS = {0: None, 90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_COUNTERCLOCKWISE}
_PROBLEM_LOG_INTERVAL_S = 60.0  # bad frames and skipped files: one log line per burst, at most one a minute


def crop_and_rotate(image: np.ndarray, roi: tuple[int, int, int, int] | None, rotate: int) -> np.ndarray:
    """Crop to ``roi`` = (x, y, width, height) in pixels, clipped to the image, then rotate clockwise by
    ``rotate`` degrees (0, 90, 180 or 270). A crop is a copy, so it does not keep the full frame alive."""
    if rotate not in ROTATIONS:
        raise ValueError(f"rotate must be one of 0, 90, 180, 270 (degrees clockwise), got {rotate!r}")
    if roi is not None:
        height, width = image.shape[:2]
        x, y, w, h = (int(v) for v in roi)
        x0, y0, x1, y1 = max(0, x), max(0, y), min(width, x + w), min(height, y + h)
        if w <= 0 or h <= 0 or x1 <= x0 or y1 <= y0:
            raise ValueError(f"roi {tuple(roi)} (x, y, width, height) is empty inside the {width}x{height} image")
        if (x0, y0, x1, y1) != (0, 0, width, height):
            image = image[y0:y1, x0:x1].copy()
    code = ROTATIONS[rotate]
    return image if code is None else cv2.rotate(image, code)


@dataclass
class CameraStats:
    """Counters the metrics exporter reads; plain ints, written only by the reader thread."""

    frames: int = 0  # frames handed on
    read_errors: int = 0  # reads that broke the connection
    reconnects: int = 0  # open attempts after the first
    skipped_files: int = 0  # folder files that were not images (through CameraReader.report_skipped)
    frames_limited: int = 0  # live frames dropped by the fps limit
    frames_untriggered: int = 0  # live frames of a triggered camera read while no trigger waited
    bad_frames: int = 0  # frames the roi does not fit (empty crop), dropped


class _Throttle:
    """At most one log line per interval; counts what it held back."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._next: float | None = None
        self.held_back = 0

    def allow(self, now: float) -> bool:
        if self._next is not None and now < self._next:
            self.held_back += 1
            return False
        self._next = now + self._interval_s
        return True


class CameraReader:
    """Reads one camera until ``stop`` is set; ``run`` is the loop, ``start`` runs it in a thread.

    ``source_factory`` is called once, at the first connection attempt (again only if it raised
    SourceError); that one source is then opened and closed around every reconnect, so a folder keeps its
    record of delivered files and a synthetic stream continues rather than repeating itself.

    Sources report their own trouble as SourceError, which never ends the loop. Anything else that escapes
    (a source or the downstream failing in a way nobody foresaw) closes the source and propagates out of
    ``run``; the thread that ``start`` runs catches it, logs it with its traceback, reports the camera
    ``offline``, counts a reconnect and starts ``run`` again after a backoff, so a camera never goes silent
    while it still looks healthy.

    ``fps`` limits the frames handed on to at most one per 1/fps seconds. A live source (``live = True``,
    e.g. OpenCVSource) is still read continuously and the surplus dropped (``frames_limited``), since a
    stream that is not read buffers old frames; others are simply read less often. A frame is due 1/fps
    after the previous one was handed on, so a 25 fps camera limited to 10 fps gives 8.3 fps: set the
    limit to a divisor of the camera's own rate.

    Reconnects back off exponentially from ``reconnect_min_s`` to ``reconnect_max_s``; the backoff starts
    again from the minimum only once a reopened source has delivered a frame, so a camera that accepts a
    connection and then fails at once is not hammered.
    """

    def __init__(
        self,
        name: str,
        product: str,
        source_factory: Callable[[], FrameSource],
        on_frame: Callable[[Frame], None],
        on_status: Callable[[str, CameraStatus], None],
        stop: threading.Event,
        clock: Clock,
        fps: float | None = None,
        roi: tuple[int, int, int, int] | None = None,
        rotate: int = 0,
        stalled_after_s: float = 5.0,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        idle_poll_s: float = 0.01,
        gate: TriggerGate | None = None,
        part_id_pattern: re.Pattern[str] | None = None,
    ) -> None:
        if fps is not None and not fps > 0:
            raise ValueError(f"camera {name}: fps must be positive or None, got {fps}")
        if rotate not in ROTATIONS:
            raise ValueError(f"camera {name}: rotate must be one of 0, 90, 180, 270, got {rotate!r}")
        if roi is not None and (len(roi) != 4 or roi[2] <= 0 or roi[3] <= 0):
            raise ValueError(f"camera {name}: roi must be (x, y, width, height) with positive size, got {roi}")
        if not stalled_after_s > 0 or not idle_poll_s > 0:
            raise ValueError(
                f"camera {name}: stalled_after_s and idle_poll_s must be positive, "
                f"got {stalled_after_s} and {idle_poll_s}"
            )
        backoff_delay(0, reconnect_min_s, reconnect_max_s)  # validates the pair, naming both values
        self.name = name
        self.product = product
        self.stats = CameraStats()
        self.status: CameraStatus | None = None
        self._source_factory = source_factory
        self._on_frame = on_frame
        self._on_status = on_status
        self._stop = stop
        self._clock = clock
        self._period = None if fps is None else 1.0 / fps
        self._roi = roi
        self._rotate = rotate
        self._stalled_after_s = stalled_after_s
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._idle_poll_s = idle_poll_s
        self.gate = gate  # triggered: only the frame after each trigger is handed on, with its part id
        self._part_id_pattern = part_id_pattern  # a folder's part ids, from the file names
        self._source: FrameSource | None = None
        self._seq = 0
        self._bad_frame_log = _Throttle(_PROBLEM_LOG_INTERVAL_S)
        self._skipped_log = _Throttle(_PROBLEM_LOG_INTERVAL_S)

    def start(self, stop: threading.Event | None = None) -> threading.Thread:
        """Run in a thread. A reader whose thread has ended (a camera disabled) starts again with a fresh
        ``stop``: frame numbering, counters and the source carry on, so inspection ids stay unique for the
        life of the journal, counters never go backwards and a folder does not deliver its files twice."""
        if stop is not None:
            self._stop = stop
            self.status = None  # the first status after a restart is a change: it is reported
        thread = threading.Thread(target=self._supervise, name=f"camera-{self.name}", daemon=False)
        thread.start()
        return thread

    def _supervise(self) -> None:
        """The thread's body: ``run`` until it returns (stopped, or a file ended), restarting it after an
        unforeseen exception. The backoff grows while restarts deliver no frame."""
        failures = 0
        while True:
            frames_before = self.stats.frames
            try:
                self.run()
                return
            except Exception as exc:
                failures = 1 if self.stats.frames > frames_before else failures + 1
                delay = backoff_delay(failures - 1, self._reconnect_min_s, self._reconnect_max_s)
                self.stats.reconnects += 1
                logger.error(
                    "camera %s: reader failed (%s: %s); restarting in %.1f s",
                    self.name, type(exc).__name__, exc, delay, exc_info=True,
                )  # fmt: skip
                try:
                    self._set_status(CameraStatus.OFFLINE)
                except Exception:  # the status consumer failing too must not end the camera for good
                    logger.exception("camera %s: reporting offline failed", self.name)
            if self._clock.wait(delay, self._stop):
                return

    def report_skipped(self, path: Path, reason: str) -> None:
        """``on_skipped`` callback for a FolderSource: counts the file, logs once per burst."""
        self.stats.skipped_files += 1
        if self._skipped_log.allow(self._clock.monotonic()):
            logger.warning(
                "camera %s: skipped %s (%s); %d skipped so far", self.name, path, reason, self.stats.skipped_files
            )

    def run(self) -> None:
        attempt = 0  # connections that failed in a row; sets the backoff
        opened_before = False
        try:
            while not self._stop.is_set():
                if opened_before:
                    self.stats.reconnects += 1
                opened_before = True
                error = self._open()
                if error is not None:
                    delay = backoff_delay(attempt, self._reconnect_min_s, self._reconnect_max_s)
                    attempt += 1
                    if self._set_status(CameraStatus.OFFLINE):
                        logger.warning("camera %s: offline: %s; retrying in %.1f s", self.name, error, delay)
                    else:
                        logger.debug("camera %s: still offline: %s; retrying in %.1f s", self.name, error, delay)
                    if self._clock.wait(delay, self._stop):
                        break
                    continue

                assert self._source is not None
                if self._set_status(CameraStatus.ONLINE):
                    logger.info("camera %s: online (%s)", self.name, self._source.description)
                outcome, delivered = self._stream(self._source)
                self._close()
                if delivered:
                    attempt = 0
                if outcome is None:
                    break  # stopped
                if isinstance(outcome, EndOfStream):
                    self._set_status(CameraStatus.DISABLED)
                    logger.info("camera %s: disabled: %s", self.name, outcome)
                    return
                self.stats.read_errors += 1
                delay = backoff_delay(attempt, self._reconnect_min_s, self._reconnect_max_s)
                attempt += 1
                self._set_status(CameraStatus.OFFLINE)
                logger.warning("camera %s: offline: %s; reconnecting in %.1f s", self.name, outcome, delay)
                if self._clock.wait(delay, self._stop):
                    break
            logger.info("camera %s: stopped", self.name)
        finally:
            self._close()

    def _open(self) -> SourceError | None:
        try:
            if self._source is None:
                self._source = self._source_factory()
            self._source.open()
        except SourceError as exc:
            self._close()
            return exc
        return None

    def _close(self) -> None:
        if self._source is None:
            return
        try:
            self._source.close()
        except Exception:  # a failed release must not stop the reconnect loop or mask the original error
            logger.warning("camera %s: closing %s failed", self.name, self._source.description, exc_info=True)

    def _stream(self, source: FrameSource) -> tuple[SourceError | EndOfStream | None, bool]:
        """Read until stop (None), a broken source (SourceError) or the end (EndOfStream); also says whether
        any frame arrived."""
        clock, stop, period = self._clock, self._stop, self._period
        live = bool(getattr(source, "live", False))
        gate = self.gate
        # A hot folder waits for files by design, and a triggered camera that reads only when asked for triggers.
        stalls = not getattr(source, "idle_is_normal", False) and not (gate is not None and not live)
        last_frame = clock.monotonic()  # the stalled window counts from the open
        last_emit: float | None = None
        delivered = False
        while not stop.is_set():
            if period is not None and not live and last_emit is not None:
                remaining = last_emit + period - clock.monotonic()
                if remaining > 0 and clock.wait(remaining, stop):
                    break
            if gate is not None and not live and not gate.wait(self._idle_poll_s * 10):
                continue  # a file or synthetic source reads only for a trigger: no frames nobody asked for
            try:
                image = source.read()
            except (SourceError, EndOfStream) as exc:
                return exc, delivered
            now = clock.monotonic()

            if image is None:
                if stalls and now - last_frame >= self._stalled_after_s and self.status == CameraStatus.ONLINE:
                    self._set_status(CameraStatus.STALLED)
                    logger.warning("camera %s: stalled: no frame for %.1f s", self.name, now - last_frame)
                if clock.wait(self._idle_poll_s, stop):
                    break
                continue

            last_frame = now
            delivered = True
            if self._set_status(CameraStatus.ONLINE):
                logger.info("camera %s: online again, frames are coming", self.name)
            if live and period is not None and last_emit is not None and now - last_emit < period:
                self.stats.frames_limited += 1
                continue
            try:
                image = crop_and_rotate(image, self._roi, self._rotate)
            except ValueError as exc:
                self.stats.bad_frames += 1
                if self._bad_frame_log.allow(now):
                    logger.warning("camera %s: frame dropped: %s; %d so far", self.name, exc, self.stats.bad_frames)
                continue
            part_id = self._part_id(source)
            if gate is not None:
                taken = gate.take(now)
                if taken is None:  # a live frame between triggers
                    self.stats.frames_untriggered += 1
                    continue
                part_id = taken.part_id
            self._seq += 1
            frame = Frame(
                camera=self.name,
                seq=self._seq,
                captured_at=clock.now(),
                captured_mono=now,
                image=image,
                product=self.product,
                part_id=part_id,
            )
            last_emit = now
            self.stats.frames += 1
            self._on_frame(frame)
        return None, delivered

    def _part_id(self, source: FrameSource) -> str | None:
        """A folder file's part id: the pattern's group ``part`` (or its whole match) in the file's name."""
        name = getattr(source, "last_name", None)
        if self._part_id_pattern is None or name is None:
            return None
        found = self._part_id_pattern.search(name)
        if found is None:
            return None
        return found.groupdict().get("part") or found.group(0)

    def _set_status(self, status: CameraStatus) -> bool:
        """Report ``status`` if it is a change; True when it was."""
        if status == self.status:
            return False
        self.status = status
        self._on_status(self.name, status)
        return True

"""Evidence on disk: the frame as JPEG and a heatmap overlay, for every defect and every Nth normal.

Layout (relative to the evidence folder, POSIX separators, so the same string works in the journal, the
DB and event payloads on any platform)::

    <camera>/<YYYY-MM-DD>/<inspection_id>-<verdict>.jpg           the frame (camera resolution, ROI applied)
    <camera>/<YYYY-MM-DD>/<inspection_id>-<verdict>-heatmap.jpg   the frame, coloured where the map reaches
                                                                  the pixel threshold, those regions outlined

The map comes relative to the product's calibrated pixel threshold (1.0 = the threshold; see
:func:`linewatch.images.heatmap_overlay` for the colours), so a region is outlined where the model's map
says "not like the normals" at the false-reject rate the model was calibrated for.

The date is the frame's capture date in UTC: a folder per day bounds directory sizes and lets retention
(linewatch/sinks/retention.py) age files without opening them; UTC keeps the folder stable across DST and
identical for every plant system that reads the path.

Writing happens on one thread behind a bounded queue (:class:`EvidenceWriter`), because JPEG encoding and
disk latency must never stall scoring: when the queue is full or the disk is below the free-space watermark
the evidence is dropped and counted, and the inspection goes on. Files are written atomically
(``write_image``: temp file + ``os.replace``), so a reader never sees half a JPEG. Paths are handed out
before the write happens; a reader of the journal must therefore tolerate a missing file (a failed write,
or evidence already removed by retention; verdict rows outlive images by design).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path, PurePosixPath

import numpy as np

from linewatch.clock import Clock, SystemClock
from linewatch.images import heatmap_overlay, write_image
from linewatch.types import VerdictLabel

logger = logging.getLogger(__name__)

SNAPSHOT_SUFFIX = ".jpg"
HEATMAP_SUFFIX = "-heatmap.jpg"
DATE_FORMAT = "%Y-%m-%d"
# File names are limited to 255 bytes on common filesystems; the longest suffix ("-defect-heatmap.jpg") must fit.
MAX_SEGMENT_BYTES = 200
_UNSAFE_CHARS = ("/", "\\", "\0")


class DropReason(StrEnum):
    """Why ``EvidenceWriter.submit`` refused a job (keys of ``EvidenceWriterStats.dropped``)."""

    QUEUE_FULL = "queue_full"  # the writer is behind (slow disk); newer evidence is not worth stalling for
    DISK_LOW = "disk_low"  # free space below the watermark: the disk must never fill because of evidence
    STOPPED = "stopped"  # submitted before start() or after stop()


def safe_segment(value: str, what: str) -> str:
    """Return ``value`` if it can be one path segment; ValueError naming ``what`` and the value otherwise.

    Refused: empty, leading '.' (covers '.' and '..', and keeps evidence apart from the writer's hidden temp
    files, which retention treats as crash leftovers), separators ('/' and '\\', so a path written on Linux
    cannot climb out when read on Windows), NUL, and names too long for a file name.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} {value!r} is not a safe path segment: it must be a non-empty string")
    if value.startswith("."):
        raise ValueError(f"{what} {value!r} is not a safe path segment: it must not start with '.'")
    if any(char in value for char in _UNSAFE_CHARS):
        raise ValueError(f"{what} {value!r} is not a safe path segment: it must not contain '/', '\\' or NUL")
    if len(value.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
        raise ValueError(f"{what} {value[:40]!r}... is not a safe path segment: longer than {MAX_SEGMENT_BYTES} bytes")
    return value


def parse_verdict(verdict: VerdictLabel | str) -> VerdictLabel:
    try:
        return VerdictLabel(verdict)
    except ValueError:
        allowed = ", ".join(label.value for label in VerdictLabel)
        raise ValueError(f"verdict {verdict!r} is not one of: {allowed}") from None


@dataclass(frozen=True)
class EvidencePaths:
    """Relative POSIX paths of one inspection's evidence, as stored in the journal, the DB and events."""

    snapshot: str
    heatmap: str


def evidence_paths(camera: str, frame_ts: datetime, inspection_id: str, verdict: VerdictLabel | str) -> EvidencePaths:
    """The layout's two paths for one inspection. Naive timestamps are refused: the date would be a guess."""
    safe_segment(camera, "camera")
    safe_segment(inspection_id, "inspection id")
    label = parse_verdict(verdict)
    if not isinstance(frame_ts, datetime) or frame_ts.tzinfo is None or frame_ts.utcoffset() is None:
        raise ValueError(f"frame_ts {frame_ts!r} must be a timezone-aware datetime")
    folder = PurePosixPath(camera, evidence_date(frame_ts))
    stem = f"{inspection_id}-{label.value}"
    return EvidencePaths(
        snapshot=str(folder / f"{stem}{SNAPSHOT_SUFFIX}"), heatmap=str(folder / f"{stem}{HEATMAP_SUFFIX}")
    )


def evidence_date(frame_ts: datetime) -> str:
    """The date folder name of a capture time: its UTC date."""
    return frame_ts.astimezone(UTC).strftime(DATE_FORMAT)


@dataclass(frozen=True)
class EvidenceName:
    """What an evidence file name says about itself (see :func:`parse_evidence_name`)."""

    inspection_id: str
    verdict: VerdictLabel
    heatmap: bool


def parse_evidence_name(name: str) -> EvidenceName | None:
    """Parse a file name written by this layout; None for anything else (retention must leave those alone)."""
    if name.endswith(HEATMAP_SUFFIX):
        stem, heatmap = name[: -len(HEATMAP_SUFFIX)], True
    elif name.endswith(SNAPSHOT_SUFFIX):
        stem, heatmap = name[: -len(SNAPSHOT_SUFFIX)], False
    else:
        return None
    inspection_id, _, verdict = stem.rpartition("-")
    try:
        return EvidenceName(safe_segment(inspection_id, "inspection id"), parse_verdict(verdict), heatmap)
    except ValueError:
        return None


class EvidenceSampler:
    """Decides which verdicts keep evidence: every defect, close calls (a normal scored within
    ``close_call_band`` of its threshold) at most one per ``close_call_interval_s`` per camera, and the 1st,
    N+1st, 2N+1st... other normal per camera.

    Normals are sampled so retraining and audits have recent good parts to look at without writing every
    frame; counting per camera keeps a fast camera from using up a slow one's share. Close calls are what the
    review page asks operators about, and a confirmed close call is the normal that teaches a retrain the
    most; the interval keeps a drifting line, where most frames become close calls, from writing every frame.
    Not thread-safe: it is called from the scorer thread only.
    """

    def __init__(self, every_nth_normal: int, close_call_band: float = 0.0, close_call_interval_s: float = 0.0) -> None:
        if isinstance(every_nth_normal, bool) or not isinstance(every_nth_normal, int) or every_nth_normal < 0:
            raise ValueError(f"every_nth_normal must be an integer >= 0 (0 = no normals), got {every_nth_normal!r}")
        if not 0.0 <= close_call_band < 1.0:
            raise ValueError(f"close_call_band must be within [0, 1), got {close_call_band!r}")
        if not close_call_interval_s >= 0.0:
            raise ValueError(f"close_call_interval_s must be >= 0, got {close_call_interval_s!r}")
        self._every = every_nth_normal
        self._band = close_call_band
        self._interval = timedelta(seconds=close_call_interval_s)
        self._normals_seen: dict[str, int] = {}  # per camera, modulo N
        self._last_close_call: dict[str, datetime] = {}  # per camera: frame time of the last close call kept

    def wants(self, camera: str, verdict: VerdictLabel | str, score: float, threshold: float, at: datetime) -> bool:
        """Whether to keep this verdict's evidence; ``at`` is its frame time."""
        if parse_verdict(verdict) is VerdictLabel.DEFECT:
            return True
        if is_close_call(score, threshold, self._band):
            last = self._last_close_call.get(camera)
            if last is None or at - last >= self._interval or at < last:  # a clock stepped back starts anew
                self._last_close_call[camera] = at
                return True
        if self._every == 0:
            return False
        seen = self._normals_seen.get(camera, 0)
        self._normals_seen[camera] = (seen + 1) % self._every
        return seen == 0


def is_close_call(score: float, threshold: float, band: float) -> bool:
    """Whether a score lies within ``band`` (a fraction of the threshold's size) of its threshold."""
    return band > 0.0 and abs(score - threshold) <= band * abs(threshold)


@dataclass(frozen=True)
class EvidenceJob:
    """One inspection's evidence to write. The arrays are held, not copied: the caller must not modify them
    after submitting (frames are treated as immutable throughout the daemon)."""

    snapshot: str  # relative path from evidence_paths
    heatmap: str
    image: np.ndarray  # (H, W, 3) uint8 RGB at camera resolution
    pixel_map: np.ndarray  # (S, S) anomaly map relative to the pixel threshold (1.0 = it); resized to the image
    verdict: VerdictLabel

    def __post_init__(self) -> None:
        for what, rel in (("snapshot", self.snapshot), ("heatmap", self.heatmap)):
            parts = PurePosixPath(rel).parts
            if not parts or PurePosixPath(rel).is_absolute() or any(part in ("", ".", "..") for part in parts):
                raise ValueError(f"{what} path {rel!r} must be relative to the evidence folder, without '..'")


@dataclass(frozen=True)
class EvidenceWriterStats:
    written: int  # jobs whose two files are on disk
    dropped: dict[str, int]  # refused by submit, per DropReason
    failed: int  # accepted jobs whose write raised
    queued: int


_STOP = object()  # queue sentinel: everything queued before it is written, then the thread ends


class EvidenceWriter:
    """Writes evidence JPEGs on its own thread from a bounded queue; ``submit`` never blocks.

    ``free_bytes`` (e.g. ``lambda: disk_free_bytes(root)``) is called only by the writer thread (and once by
    ``start``), at most every ``free_check_interval_s``, and ``submit`` reads the cached answer: a hung or
    slow filesystem query can stall evidence but never the scorer. The cache is refreshed while idle too, so
    writing resumes by itself once retention has freed space.
    """

    def __init__(
        self,
        root: Path,
        jpeg_quality: int,
        queue_size: int,
        free_bytes: Callable[[], int],
        min_free_bytes: int,
        clock: Clock | None = None,
        free_check_interval_s: float = 1.0,
    ) -> None:
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be within 1..100, got {jpeg_quality}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must be >= 0, got {min_free_bytes}")
        if not free_check_interval_s > 0:
            raise ValueError(f"free_check_interval_s must be > 0, got {free_check_interval_s}")
        self.root = Path(root)
        self._quality = jpeg_quality
        self._queue: queue.Queue[EvidenceJob | object] = queue.Queue(maxsize=queue_size)
        self._free_bytes = free_bytes
        self._min_free = min_free_bytes
        self._clock = clock or SystemClock()
        self._check_s = free_check_interval_s
        self._lock = threading.Lock()  # guards the counters and the accepting flag; never held during I/O
        self._accepting = False
        self._thread: threading.Thread | None = None
        self._disk_low = False  # last answer of free_bytes vs the watermark; read by submit
        self._checked_at = 0.0  # clock.monotonic() of the last free-space reading
        self._free_unknown = False  # free_bytes raised last time: logged once per burst
        self._written = 0
        self._failed = 0
        self._failing = 0  # failures in a row: the first of a burst is logged as a warning
        self._dropped: dict[str, int] = {}
        self._dropping = False  # the last submit was refused: a burst of drops is logged once

    def start(self) -> threading.Thread:
        if self._thread is not None:
            raise RuntimeError("evidence writer already started")
        self._refresh_free()
        self._thread = threading.Thread(target=self._run, name="evidence-writer", daemon=True)
        with self._lock:
            self._accepting = True
        self._thread.start()
        return self._thread

    def submit(self, job: EvidenceJob) -> bool:
        """Queue a job; False (and counted in ``stats.dropped``) when it will not be written."""
        with self._lock:
            if not self._accepting:
                reason = DropReason.STOPPED
            elif self._disk_low:
                reason = DropReason.DISK_LOW
            else:
                try:
                    self._queue.put_nowait(job)
                except queue.Full:
                    reason = DropReason.QUEUE_FULL
                else:
                    self._dropping = False
                    return True
            self._dropped[reason.value] = self._dropped.get(reason.value, 0) + 1
            first_of_burst, self._dropping = not self._dropping, True
        if first_of_burst:
            logger.warning(
                "evidence dropped (%s) for %s; further drops are counted, not logged", reason.value, job.snapshot
            )
        return False

    def stop(self, timeout: float = 10.0) -> bool:
        """Refuse new jobs, write everything already queued, end the thread. False if it did not end in time."""
        with self._lock:
            self._accepting = False
        thread = self._thread
        if thread is None:
            return True
        deadline = time.monotonic() + timeout  # real time: this bounds a thread join, not a decision
        with contextlib.suppress(queue.Full):  # the writer is stuck on a write; the join below reports it
            self._queue.put(_STOP, timeout=timeout)
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            logger.warning(
                "evidence writer did not finish within %.1f s (%d jobs still queued)", timeout, self._queue.qsize()
            )
            return False
        return True

    @property
    def stats(self) -> EvidenceWriterStats:
        with self._lock:
            return EvidenceWriterStats(self._written, dict(self._dropped), self._failed, self._queue.qsize())

    def _run(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=self._check_s)
            except queue.Empty:
                self._refresh_free()
                continue
            if job is _STOP:
                return
            assert isinstance(job, EvidenceJob)
            self._write(job)
            if self._clock.monotonic() - self._checked_at >= self._check_s:
                self._refresh_free()

    def _write(self, job: EvidenceJob) -> None:
        path = self.root / job.snapshot
        try:
            self._write_retrying(path, job.image)
            path = self.root / job.heatmap
            # An operator's threshold override may be 0 or negative ("flag everything"): no contour then.
            overlay = heatmap_overlay(job.image, job.pixel_map, 1.0)
            self._write_retrying(path, overlay)
        except Exception as exc:  # a bad job or a full/broken disk must not end the thread
            with self._lock:
                self._failed += 1
            self._failing += 1
            level = logging.WARNING if self._failing == 1 else logging.DEBUG
            logger.log(level, "evidence write failed for %s: %s (logged once per burst)", path, exc)
            return
        with self._lock:
            self._written += 1
        if self._failing:
            logger.info("evidence writes succeed again after %d failures", self._failing)
            self._failing = 0

    def _write_retrying(self, path: Path, rgb: np.ndarray) -> None:
        """write_image, retried once if the folder vanished: retention removes empty date folders and may do so
        between the writer's mkdir and its open."""
        try:
            write_image(path, rgb, self._quality)
        except FileNotFoundError:
            write_image(path, rgb, self._quality)

    def _refresh_free(self) -> None:
        self._checked_at = self._clock.monotonic()
        try:
            free = int(self._free_bytes())
        except Exception as exc:  # unknown free space: keep the last answer; retention guards the disk too
            if not self._free_unknown:
                logger.warning("evidence: cannot read free disk space (%s); keeping the last answer", exc)
            self._free_unknown = True
            return
        self._free_unknown = False
        low = free < self._min_free
        if low != self._disk_low:
            if low:
                logger.warning("evidence paused: %d bytes free, below the %d-byte watermark", free, self._min_free)
            else:
                logger.info("evidence resumed: %d bytes free", free)
        with self._lock:
            self._disk_low = low

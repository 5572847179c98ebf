"""Frame sources: where a camera's images come from. Each yields RGB uint8 (H, W, 3) arrays.

A source is opened, read and closed by one reader thread (see ``reader.py``), which owns reconnecting: a
source only reports what happened. ``read`` returns an image, returns None when nothing is available yet
(a quiet folder), raises ``SourceError`` when the source broke in a way a reopen may fix (camera unplugged,
stream dropped), and raises ``EndOfStream`` when a non-looping video file is finished. Every source here
can be opened again after ``close``, and keeps its position where that makes sense (a folder remembers the
files it has delivered, a synthetic stream continues its random sequence).

``live`` tells the reader how to apply an fps limit: a live source (a camera or network stream) produces
frames at its own pace whether or not anyone reads them, and drivers and FFmpeg buffer what is not read,
so it must be read continuously and surplus frames dropped; otherwise the frames scored grow seconds old.
The other sources produce a frame when asked, so the reader simply asks less often.

Descriptions and error messages never contain credentials: user info in URLs and password-like query
parameters are masked (``rtsp://admin:***@10.0.0.5/stream``).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from linewatch.images import ImageError, read_rgb, to_rgb_uint8
from linewatch.pipeline.camera.synthetic import SyntheticProduct

logger = logging.getLogger(__name__)

__all__ = [
    "CaptureLike",
    "EndOfStream",
    "FolderSource",
    "FrameSource",
    "OpenCVSource",
    "SourceError",
    "SyntheticSource",
    "VideoFileSource",
    "default_capture_factory",
    "mask_secrets",
]


class SourceError(Exception):
    """Opening or reading failed in a way a reconnect may fix; the message names the camera source."""


class EndOfStream(Exception):  # named for what happened; not an error
    """A video file with loop=False reached its end: the reader stops this camera cleanly."""


class FrameSource(Protocol):
    description: str  # where frames come from, credentials masked: "rtsp://u:***@host/s", "device 0", "folder /x"

    def open(self) -> None:
        """Connect or start; raises SourceError."""
        ...

    def read(self) -> np.ndarray | None:
        """RGB uint8 (H, W, 3); None when no frame is available right now (not an error). Raises SourceError
        when the source broke, EndOfStream when it is finished."""
        ...

    def close(self) -> None:
        """Release everything; idempotent, never raises on an already closed source."""
        ...


class CaptureLike(Protocol):
    """The part of ``cv2.VideoCapture`` the sources use, so tests can hand in a fake."""

    def isOpened(self) -> bool: ...  # OpenCV's spelling

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def set(self, prop_id: int, value: float) -> bool: ...

    def release(self) -> None: ...


CaptureFactory = Callable[[int | str, int, list[int]], CaptureLike]


def default_capture_factory(target: int | str, api_preference: int, params: list[int]) -> CaptureLike:
    """``cv2.VideoCapture(target, apiPreference, params)``; params are (property id, value) pairs flattened."""
    return cv2.VideoCapture(target, api_preference, params)


# Secrets in URLs: everything between "scheme://" and the last "@" of the authority (greedy, so a password
# holding an unencoded "@" or "/" is masked whole), and the values of password-like query parameters.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s?#]*)@")
_SECRET_QUERY = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pass|pwd|secret|token|access_token|auth|key|apikey|api_key)=)[^&;#\s]*",
    re.IGNORECASE,
)


def mask_secrets(text: str) -> str:
    """Mask credentials in any URLs inside ``text``: ``rtsp://user:pw@host`` -> ``rtsp://user:***@host``.

    User info without a password separator is masked whole, since a bare ``token@host`` is a credential.
    """

    def userinfo(match: re.Match[str]) -> str:
        user, separator, _ = match["userinfo"].partition(":")
        kept = f"{user}:***" if separator and "/" not in user else "***"
        return f"{match['scheme']}{kept}@"

    return _SECRET_QUERY.sub(r"\g<key>***", _USERINFO.sub(userinfo, text))


# OpenCV's FFmpeg backend takes its demuxer options only from this environment variable (format
# "key;value|key;value"), read on every open: there is no per-capture parameter for the RTSP transport.
# It is process-wide, so it is written at most once (when it does not already choose a transport), and an
# operator's own value is kept and extended rather than replaced. TCP because RTSP's default UDP loses
# packets on busy plant networks, which shows up as smeared, half-grey frames rather than as errors.
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_ENV_LOCK = threading.Lock()


def _force_rtsp_tcp() -> None:
    with _ENV_LOCK:
        current = os.environ.get(FFMPEG_OPTIONS_ENV, "")
        if "rtsp_transport" in current:
            return  # already set by us, or chosen explicitly by the operator
        os.environ[FFMPEG_OPTIONS_ENV] = f"{current}|rtsp_transport;tcp" if current else "rtsp_transport;tcp"


# OpenCV and FFmpeg write to stderr themselves, without the line's prefix (FFmpeg with the stream URL,
# credentials and all), two lines on every failed open of a dead camera: the reader's own log line already
# says the camera is offline. Quieted once per process unless the operator set these variables (to see
# FFmpeg's own reasons again: OPENCV_FFMPEG_LOGLEVEL=24 for warnings).
FFMPEG_LOGLEVEL_ENV = "OPENCV_FFMPEG_LOGLEVEL"
OPENCV_LOGLEVEL_ENV = "OPENCV_LOG_LEVEL"


def _quiet_native_logs() -> None:
    with _ENV_LOCK:
        os.environ.setdefault(FFMPEG_LOGLEVEL_ENV, "-8")  # AV_LOG_QUIET; read when FFmpeg opens a stream
        if OPENCV_LOGLEVEL_ENV not in os.environ:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def _is_url(target: int | str) -> bool:
    return isinstance(target, str) and "://" in target


def _is_rtsp(target: int | str) -> bool:
    return isinstance(target, str) and target.lower().startswith(("rtsp://", "rtsps://"))


class OpenCVSource:
    """A camera through OpenCV: a device index (or device path) or an rtsp:// / http(s):// stream URL.

    URLs go through the FFmpeg backend with open and read timeouts (``CAP_PROP_OPEN_TIMEOUT_MSEC`` and
    ``CAP_PROP_READ_TIMEOUT_MSEC``), so a dead camera costs a SourceError after the timeout instead of a
    reader hung forever; RTSP is forced onto TCP (see ``FFMPEG_OPTIONS_ENV``). Devices are opened with no
    parameters: backends such as V4L2 refuse an open that carries properties they do not know, and a local
    device that stops delivering is caught by the reader's stalled window and the driver's own timeout.
    A failed read is a SourceError: the reader closes and reopens with backoff.
    """

    live = True

    def __init__(
        self,
        target: int | str,
        open_timeout_s: float = 10,
        read_timeout_s: float = 5,
        capture_factory: CaptureFactory = default_capture_factory,
    ) -> None:
        if open_timeout_s <= 0 or read_timeout_s <= 0:
            raise ValueError(f"timeouts must be positive, got open {open_timeout_s} s, read {read_timeout_s} s")
        self._target = target
        self._open_timeout_s = float(open_timeout_s)
        self._read_timeout_s = float(read_timeout_s)
        self._factory = capture_factory
        self._capture: CaptureLike | None = None
        self.description = f"device {target}" if isinstance(target, int) else mask_secrets(target)
        _quiet_native_logs()
        if _is_rtsp(target):
            _force_rtsp_tcp()  # here too, so it is normally written before any reader thread opens a stream

    def open(self) -> None:
        self.close()
        if _is_url(self._target):
            if _is_rtsp(self._target):
                _force_rtsp_tcp()
            api = cv2.CAP_FFMPEG
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                round(self._open_timeout_s * 1000),
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                round(self._read_timeout_s * 1000),
            ]
            hint = f"unreachable, refused, wrong path or credentials, or no answer within {self._open_timeout_s:g} s"
        else:
            api, params = cv2.CAP_ANY, []
            hint = "not connected, busy in another program, or no permission"
        try:
            capture = self._factory(self._target, api, params)
        except (cv2.error, OSError) as exc:
            raise SourceError(f"{self.description}: cannot open ({mask_secrets(str(exc)).strip()})") from None
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.description}: cannot open ({hint})")
        self._capture = capture

    def read(self) -> np.ndarray:
        if self._capture is None:
            raise SourceError(f"{self.description}: not open")
        try:
            ok, frame = self._capture.read()
        except cv2.error as exc:
            raise SourceError(f"{self.description}: read failed ({mask_secrets(str(exc)).strip()})") from None
        if not ok or frame is None:
            raise SourceError(
                f"{self.description}: no frame (disconnected, stream ended, or nothing within "
                f"{self._read_timeout_s:g} s)"
            )
        try:
            return to_rgb_uint8(frame, self.description)
        except ImageError as exc:
            raise SourceError(str(exc)) from None

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()


class VideoFileSource:
    """A video file played as a camera. At the end it starts again (loop) or raises EndOfStream.

    Frames come as fast as they decode; give the camera an fps limit to play it at line speed. ``open``
    decodes the first frame, so a file OpenCV can open but not decode fails there, naming the path.
    """

    live = False

    def __init__(self, path: Path | str, loop: bool = True, capture_factory: CaptureFactory = default_capture_factory):
        self.path = Path(path)
        self.loop = loop
        self._factory = capture_factory
        self._capture: CaptureLike | None = None
        self._first: np.ndarray | None = None
        self.description = f"video file {self.path}"

    def open(self) -> None:
        self.close()
        if not self.path.is_file():
            raise SourceError(f"{self.path}: no such video file")
        capture = self._open_capture()
        ok, frame = capture.read()
        if not ok or frame is None:
            capture.release()
            raise SourceError(f"{self.path}: no decodable video frame (not a video, corrupt, or unsupported codec)")
        self._capture, self._first = capture, frame

    def _open_capture(self) -> CaptureLike:
        try:
            capture = self._factory(str(self.path), cv2.CAP_ANY, [])
        except (cv2.error, OSError) as exc:
            raise SourceError(f"{self.path}: cannot open video ({str(exc).strip()})") from None
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.path}: cannot open as a video (not a video, corrupt, or unsupported codec)")
        return capture

    def read(self) -> np.ndarray:
        if self._capture is None:
            raise SourceError(f"{self.path}: video not open")
        frame, self._first = self._first, None
        if frame is None:
            ok, frame = self._capture.read()
            if not ok or frame is None:
                if not self.loop:
                    raise EndOfStream(f"{self.path}: end of video")
                frame = self._rewind()
        try:
            return to_rgb_uint8(frame, str(self.path))
        except ImageError as exc:
            raise SourceError(str(exc)) from None

    def _rewind(self) -> np.ndarray:
        """Seek to frame 0; where a backend cannot seek, reopen the file instead."""
        assert self._capture is not None
        if self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0):
            ok, frame = self._capture.read()
            if ok and frame is not None:
                return frame
        self._capture.release()
        self._capture = None
        capture = self._open_capture()
        ok, frame = capture.read()
        if not ok or frame is None:
            capture.release()
            raise SourceError(f"{self.path}: cannot read the video again from its start")
        self._capture = capture
        return frame

    def close(self) -> None:
        capture, self._capture, self._first = self._capture, None, None
        if capture is not None:
            capture.release()


# Names never read: hidden files (also how ``images.write_image`` names its temp files) and the usual
# partial-download suffixes, which camera software renames to the final name once a file is complete.
_TEMP_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", "~")


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(_TEMP_SUFFIXES)


EMPTY_GRACE_S = 10.0  # a file may be created empty and filled a moment later; still empty after this, it never will


class FolderSource:
    """A hot folder: every image file that appears in it becomes one frame, once, in (mtime, name) order.

    Files present when the folder is opened are read too (the daemon keeps no record across restarts, so
    a folder that should not be re-inspected after a restart must be emptied by whoever fills it). A file
    is read only once it is complete: non-empty, with size and modification time unchanged since the
    previous scan, so every file waits at least one scan after it first appears; one still empty
    ``EMPTY_GRACE_S`` after it appeared is skipped as empty (a writer that died). Files that cannot be read
    as images (other suffixes, corrupt, too small) are reported once through ``on_skipped(path, reason)``
    and never crash the reader. Only names are remembered, and only while they are in the folder, so memory
    stays bounded; a file replaced in place under the same name is not read again. Scans are at most one
    per ``scan_interval_s`` so a fast idle poll does not list a large folder hundreds of times a second.
    """

    live = False
    idle_is_normal = True  # waiting for the next file is what a hot folder does: never "stalled"

    def __init__(
        self,
        path: Path | str,
        on_skipped: Callable[[Path, str], None] | None = None,
        scan_interval_s: float = 0.1,
    ) -> None:
        if scan_interval_s < 0:
            raise ValueError(f"scan_interval_s must not be negative, got {scan_interval_s}")
        self.path = Path(path)
        self.description = f"folder {self.path}"
        self._on_skipped = on_skipped
        self._scan_interval_s = scan_interval_s
        self._open = False
        self._seen: set[str] = set()  # delivered, skipped or queued; forgotten once gone from the folder
        # not yet stable: name -> ((size, mtime_ns) at the last scan, when it was first seen)
        self._pending: dict[str, tuple[tuple[int, int], float]] = {}
        self._ready: deque[Path] = deque()
        self._last_scan: float | None = None
        self.last_name: str | None = None  # the file of the last image read: a part id may come from its name

    def open(self) -> None:
        if not self.path.is_dir():
            what = "not a folder" if self.path.exists() else "no such folder"
            raise SourceError(f"{self.path}: {what}")
        self._open = True
        self._last_scan = None

    def read(self) -> np.ndarray | None:
        if not self._open:
            raise SourceError(f"{self.path}: folder not open")
        while self._ready or self._scan():
            path = self._ready.popleft()
            try:
                image = read_rgb(path)
                self.last_name = path.name
                return image
            except ImageError as exc:
                if not path.exists():
                    continue  # removed before it was read: nothing wrong with it, nothing to report
                self._skip(path, str(exc).removeprefix(f"{path}: "))
        return None

    def close(self) -> None:
        self._open = False

    def _skip(self, path: Path, reason: str) -> None:
        if self._on_skipped is None:
            logger.warning("%s: skipped (%s)", path, reason)
        else:
            self._on_skipped(path, reason)

    def _scan(self) -> bool:
        """List the folder; queue files that became stable. True when any were queued."""
        now = time.monotonic()
        if self._last_scan is not None and now - self._last_scan < self._scan_interval_s:
            return False
        self._last_scan = now
        try:
            entries = list(os.scandir(self.path))
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot list the folder ({exc.strerror or exc})") from None

        present: set[str] = set()
        pending: dict[str, tuple[tuple[int, int], float]] = {}
        stable: list[tuple[int, str]] = []
        for entry in entries:
            name = entry.name
            present.add(name)
            if name in self._seen or _ignored(name):
                continue
            try:
                if not entry.is_file():
                    continue
                info = entry.stat()
            except OSError:
                continue  # vanished between listing and stat
            signature = (info.st_size, info.st_mtime_ns)
            previous, first_seen = self._pending.get(name, (None, now))
            if previous != signature:
                pending[name] = (signature, first_seen)
            elif info.st_size > 0:
                stable.append((info.st_mtime_ns, name))
            elif now - first_seen >= EMPTY_GRACE_S:
                self._seen.add(name)
                self._skip(self.path / name, f"empty file (0 bytes for {EMPTY_GRACE_S:g} s)")
            else:
                pending[name] = (signature, first_seen)
        self._seen &= present
        self._pending = pending
        for _, name in sorted(stable):
            self._seen.add(name)
            self._ready.append(self.path / name)
        return bool(stable)


class SyntheticSource:
    """The synthetic product generator as a camera: each read draws a new part, defective with probability
    ``defect_rate``. Seeded, so a seed always gives the same stream; reopening continues the stream.
    ``last_defect`` is the defect kind of the last image (None for a normal part)."""

    live = False

    def __init__(self, product: SyntheticProduct, defect_rate: float, seed: int) -> None:
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate}")
        self._product = product
        self._defect_rate = float(defect_rate)
        self._rng = np.random.default_rng(seed)
        self._open = False
        self.last_defect: str | None = None
        self.description = (
            f"synthetic {product.width}x{product.height} (seed {seed}, defect rate {self._defect_rate:g})"
        )

    def open(self) -> None:
        self._open = True

    def read(self) -> np.ndarray:
        if not self._open:
            raise SourceError(f"{self.description}: not open")
        sample = self._product.sample(self._rng, self._defect_rate)
        self.last_defect = sample.defect
        return sample.image

    def close(self) -> None:
        self._open = False

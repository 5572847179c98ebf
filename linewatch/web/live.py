"""The latest frame of every camera for the live view, whatever the evidence sampler kept.

The scorer thread hands over each verdict with its frame and anomaly map (:meth:`LiveFrames.update`): a
reference swap under a lock, nothing encoded, so the live view costs scoring nothing. A page that shows a
camera's latest verdict pins it (:meth:`LiveFrames.show`) and then asks for that inspection's images by id,
so the picture under a verdict is always that verdict's frame even when newer frames arrived in between; a
few pinned inspections are kept per camera, enough for several pages refreshing at once. Images are scaled
down to ``max_width`` first, then overlaid and encoded as JPEG once per inspection and kind, one encoding
at a time (pages polling together must not encode the same frame twice, nor take every core).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from linewatch.images import heatmap_overlay
from linewatch.types import Verdict

LiveKind = Literal["frame", "heatmap"]
LIVE_KINDS: tuple[LiveKind, ...] = ("frame", "heatmap")
PINNED_PER_CAMERA = 4


@dataclass
class _Shot:
    verdict: Verdict
    image: np.ndarray  # (H, W, 3) uint8 RGB at camera resolution, never modified
    pixel_map: np.ndarray  # (S, S) map relative to the pixel threshold, a copy (not a view of the batch's maps)
    encoded: dict[str, bytes] = field(default_factory=dict)  # kind -> JPEG


class LiveFrames:
    """Latest and pinned verdicts, frames and maps per camera; JPEGs encoded on demand and kept with them."""

    def __init__(self, jpeg_quality: int = 80, max_width: int = 640) -> None:
        self._quality = jpeg_quality
        self._max_width = max_width
        self._lock = threading.Lock()
        self._encoding = threading.Lock()
        self._latest: dict[str, _Shot] = {}
        self._pinned: dict[str, OrderedDict[str, _Shot]] = {}  # camera -> inspection id -> shot, oldest first

    def update(self, verdict: Verdict, image: np.ndarray, pixel_map: np.ndarray) -> None:
        """Called by the scorer thread for every verdict: keeps references, encodes nothing."""
        shot = _Shot(verdict, image, pixel_map.copy())
        with self._lock:
            self._latest[verdict.camera] = shot

    def show(self, camera: str) -> Verdict | None:
        """The camera's latest verdict, pinned so that its images stay available by its id; None before the
        camera's first verdict."""
        with self._lock:
            shot = self._latest.get(camera)
            if shot is None:
                return None
            pinned = self._pinned.setdefault(camera, OrderedDict())
            pinned[shot.verdict.inspection_id] = shot
            pinned.move_to_end(shot.verdict.inspection_id)
            while len(pinned) > PINNED_PER_CAMERA:
                pinned.popitem(last=False)
        return shot.verdict

    def frame(self, camera: str, inspection_id: str) -> np.ndarray | None:
        """A shown inspection's frame as scored (after ROI and rotation, full size); None when no longer kept.
        The array is shared: read it, do not change it."""
        with self._lock:
            shot = self._pinned.get(camera, {}).get(inspection_id)
        return None if shot is None else shot.image

    def jpeg(self, camera: str, kind: LiveKind, inspection_id: str) -> bytes | None:
        """The JPEG of a shown inspection's frame or heatmap; None when it is no longer kept."""
        with self._lock:
            shot = self._pinned.get(camera, {}).get(inspection_id)
        if shot is None:
            return None
        with self._encoding:
            if kind not in shot.encoded:
                shot.encoded[kind] = self._encode(shot, kind)
            return shot.encoded[kind]

    def _encode(self, shot: _Shot, kind: LiveKind) -> bytes:
        rgb = shot.image
        height, width = rgb.shape[:2]
        if width > self._max_width:  # a tile is small: scale first, so the overlay works on the small image
            size = (self._max_width, round(height * self._max_width / width))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        if kind == "heatmap":
            rgb = heatmap_overlay(rgb, shot.pixel_map, 1.0)  # the map is relative to the pixel threshold
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self._quality])
        if not ok:
            raise ValueError("OpenCV could not encode the live frame as JPEG")
        return data.tobytes()

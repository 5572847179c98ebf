"""The daemon's cameras: the frame source each camera's config asks for, and what runs per camera.

Kept apart from the composition root so the read-only view (state.py) can name a camera's runtime without
importing the App.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from linewatch.config import CameraSection
from linewatch.pipeline.camera.reader import CameraReader
from linewatch.pipeline.camera.sources import (
    FolderSource,
    FrameSource,
    OpenCVSource,
    SyntheticSource,
    VideoFileSource,
)
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.pipeline.events import CameraEpisodes, initial_state
from linewatch.types import CameraStatus

SkipReporter = Callable[[Path, str], None]
SourceFactory = Callable[[CameraSection, SkipReporter], FrameSource]


def make_source(camera: CameraSection, on_skipped: SkipReporter) -> FrameSource:
    """The frame source a camera's config asks for; ``on_skipped`` counts undecodable folder files."""
    if camera.source == "synthetic":
        product = SyntheticProduct(style_seed=camera.seed, width=camera.width, height=camera.height)
        return SyntheticSource(product, camera.defect_rate, camera.seed)
    if camera.source == "device":
        return OpenCVSource(camera.device, camera.open_timeout_s, camera.read_timeout_s)
    if camera.source == "url":
        return OpenCVSource(camera.url, camera.open_timeout_s, camera.read_timeout_s)
    if camera.source == "file":
        return VideoFileSource(camera.path, loop=camera.loop)
    return FolderSource(camera.path, on_skipped=on_skipped)


@dataclass
class CameraRuntime:
    config: CameraSection
    reader: CameraReader
    stop: threading.Event
    thread: threading.Thread | None = None
    status: CameraStatus = CameraStatus.OFFLINE
    reported: bool = False  # the reader has said something since the start (health: "starting" until then)
    episodes: CameraEpisodes = field(default_factory=initial_state)

"""``linewatch collect``: normal images for training, taken from a camera of the config.

The frames go through the camera's own ``roi`` and ``rotate``, so training sees exactly what the daemon
will score. Kept frames are spaced at least ``--every`` seconds apart (a line that stands still would give
N copies of one part), and a frame that looks like one kept already, in this run or in ``--out`` (mean
absolute difference of small grey thumbnails below ``--min-change``), is skipped. Files are PNG,
``<camera>-NNNN.png``; numbering goes on after the files already in ``--out``, so a second run adds to the
first. A synthetic camera delivers only normal parts here (its defect rate is set to 0).

Only parts known to be good belong in the folder: look through it before training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from linewatch.config import CameraSection, load_config
from linewatch.daemon.cameras import make_source
from linewatch.images import read_rgb
from linewatch.pipeline.camera.reader import crop_and_rotate
from linewatch.pipeline.camera.sources import EndOfStream, SourceError
from linewatch.samples import save_sample

THUMBNAIL = (32, 24)  # width, height of the grey thumbnails compared for near-duplicates
IDLE_SLEEP_S = 0.02  # between polls of a source that has no frame right now


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """A small grey version in 0..1, the unit ``--min-change`` is measured in."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, THUMBNAIL, interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def near_duplicate(candidate: np.ndarray, kept: list[np.ndarray], min_change: float) -> bool:
    return any(float(np.mean(np.abs(candidate - other))) < min_change for other in kept)


def find_camera(cameras: list[CameraSection], name: str) -> CameraSection:
    for camera in cameras:
        if camera.name == name:
            return camera.model_copy(update={"defect_rate": 0.0}) if camera.source == "synthetic" else camera
    known = ", ".join(c.name for c in cameras) or "none"
    raise ValueError(f"no camera {name!r} in the config (cameras: {known})")


def cmd_collect(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    camera = find_camera(list(config.cameras), args.camera)
    skipped_files: list[str] = []
    source = make_source(camera, lambda path, why: skipped_files.append(f"{path.name} ({why})"))
    try:
        source.open()
    except SourceError as error:
        busy = camera.device is not None  # a USB camera opens once: the daemon may hold it
        hint = " (is the daemon using it? stop the daemon or disable the camera first)" if busy else ""
        raise ValueError(f"camera {camera.name}: cannot open {source.description}: {error}{hint}") from None
    out: Path = args.out
    earlier = [thumbnail(read_rgb(path)) for path in sorted(out.glob(f"{camera.name}-*.png"))]
    kept: list[np.ndarray] = []
    duplicates = 0
    last_kept = -float("inf")
    deadline = time.monotonic() + args.timeout
    try:
        while len(kept) < args.count:
            now = time.monotonic()
            if now > deadline:
                raise ValueError(
                    f"camera {camera.name}: {len(kept)} of {args.count} images after {args.timeout:g} s "
                    f"({duplicates} near-duplicates skipped); kept what there is in {out}"
                )
            try:
                frame = source.read()
            except EndOfStream:
                break
            except SourceError as error:
                raise ValueError(f"camera {camera.name}: {source.description}: {error}") from None
            if frame is None or now - last_kept < args.every:
                time.sleep(IDLE_SLEEP_S)
                continue
            image = crop_and_rotate(frame, camera.roi, camera.rotate)
            small = thumbnail(image)
            if near_duplicate(small, earlier + kept, args.min_change):
                duplicates += 1
                continue
            path = save_sample(out, camera.name, image)
            kept.append(small)
            last_kept = now
            print(f"{len(kept)}/{args.count} {path} ({image.shape[1]}x{image.shape[0]})", flush=True)
    finally:
        source.close()
    for skipped in skipped_files:
        print(f"skipped unreadable file {skipped}")
    print(f"collected {len(kept)} images from camera {camera.name} into {out} ({duplicates} near-duplicates skipped)")
    if len(kept) < args.count:
        print(f"the source ended after {len(kept)} of {args.count}")
        return 1
    return 0

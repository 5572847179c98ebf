"""Normal samples for training: the ``<camera>-NNNN.png`` files that ``linewatch collect`` writes and the
operator page's "save as normal sample" adds to, one naming scheme so both fill the same folder and
``linewatch train --normals DIR`` takes them all.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from linewatch.images import write_image

_NUMBER_WIDTH = 4


def next_index(out: Path, camera: str) -> int:
    """One past the highest ``<camera>-NNNN.png`` already in ``out`` (1 for an empty or new folder)."""
    pattern = re.compile(rf"^{re.escape(camera)}-(\d+)\.png$")
    numbers = [int(m.group(1)) for p in out.glob(f"{camera}-*.png") if (m := pattern.match(p.name))]
    return max(numbers, default=0) + 1


def sample_path(out: Path, camera: str, index: int) -> Path:
    return out / f"{camera}-{index:0{_NUMBER_WIDTH}d}.png"


def save_sample(out: Path, camera: str, rgb: np.ndarray) -> Path:
    """Write ``rgb`` as the next ``<camera>-NNNN.png`` in ``out`` (created if missing) and return its path.

    The number is claimed with an exclusive create, so two saves at once (two operators, or the page and
    ``linewatch collect``) never write one file over the other; the image then replaces the empty claim
    atomically (:func:`linewatch.images.write_image`)."""
    out.mkdir(parents=True, exist_ok=True)
    index = next_index(out, camera)
    while True:
        path = sample_path(out, camera, index)
        try:
            path.open("xb").close()
        except FileExistsError:
            index += 1
            continue
        try:
            write_image(path, rgb)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

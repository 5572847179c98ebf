"""Normal samples: one naming scheme for `linewatch collect` and the page, numbered on, never overwritten."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from linewatch.images import read_rgb, write_image
from linewatch.samples import save_sample


def _image(value: int) -> np.ndarray:
    return np.full((12, 16, 3), value, dtype=np.uint8)


def test_numbering_goes_on_after_the_highest_file_of_that_camera(tmp_path: Path) -> None:
    write_image(tmp_path / "cam1-0007.png", _image(1))
    write_image(tmp_path / "cam2-0042.png", _image(2))  # another camera's numbers do not count
    (tmp_path / "cam1-notes.txt").write_text("not a sample")
    path = save_sample(tmp_path, "cam1", _image(3))
    assert path == tmp_path / "cam1-0008.png"
    assert np.array_equal(read_rgb(path), _image(3))
    assert save_sample(tmp_path / "new", "cam1", _image(4)) == tmp_path / "new" / "cam1-0001.png"


def test_saves_at_the_same_moment_never_share_a_file(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda value: save_sample(tmp_path, "cam1", _image(value)), range(16)))
    assert len(set(paths)) == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"cam1-{n:04d}.png" for n in range(1, 17)]
    assert sorted(int(read_rgb(p)[0, 0, 0]) for p in paths) == list(range(16))  # each image kept whole


def test_a_failed_write_leaves_no_file_and_no_claimed_number(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_sample(tmp_path, "cam1", np.zeros((4, 4), dtype=np.float32))  # not an RGB uint8 image
    assert list(tmp_path.iterdir()) == []
    assert save_sample(tmp_path, "cam1", _image(5)).name == "cam1-0001.png"

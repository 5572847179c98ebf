"""Pure helpers of the reader: reconnect backoff and ROI crop + rotation."""

from __future__ import annotations

import numpy as np
import pytest

from linewatch.pipeline.camera.reader import crop_and_rotate


def _marked(height: int = 4, width: int = 6) -> np.ndarray:
    """Zeros with a marker at the top-left pixel, distinct values down the first column and along the first row."""
    image = np.zeros((height, width, 3), np.uint8)
    image[0, 0] = (255, 1, 2)
    return image


@pytest.mark.parametrize(
    ("rotate", "shape", "marker"),
    [(0, (4, 6, 3), (0, 0)), (90, (6, 4, 3), (0, 3)), (180, (4, 6, 3), (3, 5)), (270, (6, 4, 3), (5, 0))],
)
def test_rotation_is_clockwise(rotate: int, shape: tuple[int, int, int], marker: tuple[int, int]):
    out = crop_and_rotate(_marked(), None, rotate)
    assert out.shape == shape
    assert out.dtype == np.uint8
    assert tuple(out[marker]) == (255, 1, 2)
    assert int(out.sum()) == 255 + 1 + 2  # the marker moved, nothing else changed
    np.testing.assert_array_equal(out, np.rot90(_marked(), k=-rotate // 90))


@pytest.mark.parametrize(
    ("roi", "shape", "origin"),
    [
        ((1, 2, 3, 2), (2, 3, 3), (2, 1)),  # inside
        ((-2, -1, 4, 3), (2, 2, 3), (0, 0)),  # clipped at the top-left
        ((4, 2, 100, 100), (2, 2, 3), (2, 4)),  # clipped at the bottom-right
        ((0, 0, 6, 4), (4, 6, 3), (0, 0)),  # the whole image
    ],
)
def test_roi_crops_and_clips(roi: tuple[int, int, int, int], shape: tuple[int, int, int], origin: tuple[int, int]):
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    out = crop_and_rotate(image, roi, 0)
    assert out.shape == shape
    np.testing.assert_array_equal(out[0, 0], image[origin])
    assert out.flags.c_contiguous
    if out.shape != image.shape:
        assert not np.shares_memory(out, image)  # a crop is a copy: it does not keep the whole frame alive


def test_roi_then_rotation():
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    out = crop_and_rotate(image, (1, 0, 4, 2), 90)
    np.testing.assert_array_equal(out, np.rot90(image[0:2, 1:5], k=-1))
    assert out.shape == (4, 2, 3)


@pytest.mark.parametrize("roi", [(10, 0, 5, 5), (0, 4, 6, 3), (-10, 0, 5, 4), (0, 0, 0, 4), (1, 1, 3, -2)])
def test_empty_roi_names_roi_and_image_size(roi: tuple[int, int, int, int]):
    with pytest.raises(ValueError, match=r"roi \(.*\).*6x4"):
        crop_and_rotate(_marked(), roi, 0)


@pytest.mark.parametrize("rotate", [45, -90, 360, 1])
def test_bad_rotation(rotate: int):
    with pytest.raises(ValueError, match="rotate"):
        crop_and_rotate(_marked(), None, rotate)

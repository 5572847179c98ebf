"""Tests for linewatch.images: decoding, path expansion, atomic writes and heatmap overlays."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.images import (
    IMAGE_SUFFIXES,
    MAX_PIXELS,
    ImageError,
    collect_images,
    decode_rgb,
    header_size,
    heatmap_overlay,
    read_rgb,
    to_rgb_uint8,
    write_image,
)

MAGENTA = np.array([255, 0, 255], dtype=np.uint8)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def random_rgb(rng: np.random.Generator, height: int = 24, width: int = 32) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def save_raw(path: Path, array: np.ndarray) -> Path:
    """Write an array with OpenCV directly (BGR/BGRA/gray/16-bit as given) to build decoder inputs."""
    ok, data = cv2.imencode(path.suffix.lower(), array)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def touch_image(path: Path) -> Path:
    """A small valid image of any suffix (write_image itself only writes PNG and JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_raw(path, np.full((8, 8, 3), 128, dtype=np.uint8))


# --- reading and writing -------------------------------------------------------------------------


def test_suffixes_are_lower_case() -> None:
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} == IMAGE_SUFFIXES


def test_png_round_trip_is_exact(tmp_path: Path, rng: np.random.Generator) -> None:
    image = random_rgb(rng)
    write_image(tmp_path / "a.png", image)
    back = read_rgb(tmp_path / "a.png")
    assert back.dtype == np.uint8 and back.shape == image.shape
    np.testing.assert_array_equal(back, image)


@pytest.mark.parametrize("name", ["red.png", "red.jpg", "red.JPEG"])
def test_rgb_order_preserved(tmp_path: Path, name: str) -> None:
    red = np.zeros((16, 16, 3), dtype=np.uint8)
    red[..., 0] = 255
    write_image(tmp_path / name, red)
    back = read_rgb(tmp_path / name)
    assert back[..., 0].min() > 240
    assert back[..., 1:].max() < 15


def test_jpeg_round_trip_is_close(tmp_path: Path) -> None:
    ramp = np.linspace(0, 255, 64, dtype=np.float32)
    image = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=2)
    image = image.astype(np.uint8)
    write_image(tmp_path / "a.jpg", image, jpeg_quality=95)
    back = read_rgb(tmp_path / "a.jpg")
    assert back.shape == image.shape
    assert np.abs(back.astype(int) - image.astype(int)).mean() < 3


def test_grayscale_png_is_replicated(tmp_path: Path, rng: np.random.Generator) -> None:
    gray = rng.integers(0, 256, size=(10, 12), dtype=np.uint8)
    back = read_rgb(save_raw(tmp_path / "g.png", gray))
    assert back.shape == (10, 12, 3)
    for channel in range(3):
        np.testing.assert_array_equal(back[..., channel], gray)


def test_rgba_png_drops_alpha_keeping_colours(tmp_path: Path, rng: np.random.Generator) -> None:
    bgra = rng.integers(0, 256, size=(9, 11, 4), dtype=np.uint8)
    bgra[0, 0, 3] = 0  # a fully transparent pixel keeps its own colour
    back = read_rgb(save_raw(tmp_path / "rgba.png", bgra))
    assert back.shape == (9, 11, 3)
    np.testing.assert_array_equal(back, bgra[..., 2::-1])


def test_16bit_png_scales_to_8bit(tmp_path: Path) -> None:
    values = np.array([0, 257, 257 * 100, 257 * 200 + 128, 257 * 200 + 129, 65535], dtype=np.uint16)
    gray16 = np.tile(values, (8, 2))
    back = read_rgb(save_raw(tmp_path / "deep.png", gray16))
    np.testing.assert_array_equal(back[0, :6, 0], [0, 1, 100, 200, 201, 255])
    bgr16 = np.zeros((8, 8, 3), dtype=np.uint16)
    bgr16[..., 2] = 65535  # red in BGR order
    back = read_rgb(save_raw(tmp_path / "red16.png", bgr16))
    assert (back[..., 0] == 255).all() and (back[..., 1:] == 0).all()


def test_exif_orientation_is_applied() -> None:
    image = np.zeros((16, 32, 3), dtype=np.uint8)
    image[:, :16] = 255  # left half white
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    # Minimal big-endian EXIF block with Orientation = 6 (rotate 90 degrees clockwise to display).
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">HHHIHHI", 1, 0x0112, 3, 1, 6, 0, 0)
    payload = b"Exif\x00\x00" + tiff
    rotated = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]
    back = decode_rgb(rotated, "upload")
    assert back.shape == (32, 16, 3)
    assert back[:16].mean() > 200 and back[16:].mean() < 50  # white half is now on top


def test_to_rgb_uint8_float_and_shapes() -> None:
    floats = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    out = to_rgb_uint8(floats, "f")
    assert out.dtype == np.uint8 and out.shape == (8, 8, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert out[0, 1, 0] == round(255 / 63)
    one_channel = np.full((5, 6, 1), 7, dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(one_channel, "c1"), np.full((5, 6, 3), 7))
    bgr_float = np.zeros((4, 4, 3), dtype=np.float64)
    bgr_float[..., 0] = 1.0
    assert (to_rgb_uint8(bgr_float, "f64")[..., 2] == 255).all()


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((0, 5, 3), dtype=np.uint8),
        np.zeros((4, 4, 2), dtype=np.uint8),
        np.zeros((4, 4, 3, 1), dtype=np.uint8),
        np.zeros(16, dtype=np.uint8),
        np.zeros((4, 4), dtype=np.int32),
        np.full((4, 4), 2.0, dtype=np.float32),
        np.full((4, 4), np.nan, dtype=np.float32),
    ],
)
def test_to_rgb_uint8_rejects_unusable_arrays(array: np.ndarray) -> None:
    with pytest.raises(ImageError, match="camera-7"):
        to_rgb_uint8(array, "camera-7")


def test_read_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageError, match="no such file") as info:
        read_rgb(missing)
    assert str(missing) in str(info.value)

    with pytest.raises(ImageError, match="directory") as info:
        read_rgb(tmp_path)
    assert str(tmp_path) in str(info.value)

    text = tmp_path / "notes.png"
    text.write_text("this is not a picture\n")
    with pytest.raises(ImageError, match="cannot decode") as info:
        read_rgb(text)
    assert str(text) in str(info.value)

    wrong_suffix = tmp_path / "notes.txt"
    wrong_suffix.write_text("hello")
    with pytest.raises(ImageError, match="not an image file") as info:
        read_rgb(wrong_suffix)
    assert str(wrong_suffix) in str(info.value)

    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty") as info:
        read_rgb(empty)
    assert str(empty) in str(info.value)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_files_are_rejected(tmp_path: Path, rng: np.random.Generator, suffix: str, keep: float) -> None:
    data = cv2.imencode(suffix, random_rgb(rng, 64, 64))[1].tobytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError, match="cannot decode") as info:
        read_rgb(path)
    assert str(path) in str(info.value)


def test_tiny_image_is_rejected(tmp_path: Path) -> None:
    path = save_raw(tmp_path / "tiny.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="4x4") as info:
        read_rgb(path)
    assert str(path) in str(info.value)
    save_raw(tmp_path / "thin.png", np.zeros((100, 7, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="smaller"):
        read_rgb(tmp_path / "thin.png")


def test_decode_rgb(rng: np.random.Generator) -> None:
    image = random_rgb(rng)
    data = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    np.testing.assert_array_equal(decode_rgb(data, "upload.png"), image)
    with pytest.raises(ImageError, match=r"upload\.png"):
        decode_rgb(b"", "upload.png")
    with pytest.raises(ImageError, match="cannot decode"):
        decode_rgb(b"GIF89a nonsense", "upload.gif")


# --- collect_images ----------------------------------------------------------------------------


def test_collect_files_and_directories(tmp_path: Path) -> None:
    folder = tmp_path / "normals"
    for name in ["b.png", "a.JPG", "c.webp"]:
        touch_image(folder / name)
    (folder / "readme.txt").write_text("ignored")
    (folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    (folder / "sub").mkdir()
    touch_image(folder / "sub" / "deep.png")
    single = touch_image(tmp_path / "single.bmp")

    found = collect_images([single, str(folder)])
    assert found == [single, folder / "a.JPG", folder / "b.png", folder / "c.webp"]


def test_collect_removes_duplicates_keeping_first(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    a = touch_image(folder / "a.png")
    b = touch_image(folder / "b.png")
    found = collect_images([b, folder, str(folder / "*.png"), folder / ".." / "imgs" / "a.png"])
    assert found == [b, a]


def test_collect_globs(tmp_path: Path) -> None:
    touch_image(tmp_path / "x" / "one.png")
    touch_image(tmp_path / "x" / "y" / "two.jpg")
    (tmp_path / "x" / "three.txt").write_text("not an image")
    found = collect_images([str(tmp_path / "x" / "**" / "*")])
    assert found == [tmp_path / "x" / "one.png", tmp_path / "x" / "y" / "two.jpg"]
    assert collect_images([str(tmp_path / "x" / "on?.png")]) == [tmp_path / "x" / "one.png"]
    pattern = str(tmp_path / "x" / "*.tif")
    with pytest.raises(ImageError, match="no images match") as info:
        collect_images([pattern])
    assert pattern in str(info.value)


def test_collect_file_with_glob_characters_in_name(tmp_path: Path) -> None:
    odd = touch_image(tmp_path / "part[1].png")
    assert collect_images([odd]) == [odd]


def test_collect_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(ImageError, match="no images in") as info:
        collect_images([empty])
    assert str(empty) in str(info.value)

    missing = tmp_path / "nope"
    with pytest.raises(ImageError, match="no such file or directory") as info:
        collect_images([missing])
    assert str(missing) in str(info.value)

    text = tmp_path / "list.csv"
    text.write_text("a,b")
    with pytest.raises(ImageError, match="not an image file"):
        collect_images([text])
    assert collect_images([]) == []


def test_non_ascii_names(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = tmp_path / "Prüfteile_检查"
    image = random_rgb(rng)
    path = folder / "Gehäuse_ñ_部品.png"
    write_image(path, image)
    assert collect_images([folder]) == [path]
    np.testing.assert_array_equal(read_rgb(path), image)


# --- write_image ---------------------------------------------------------------------------------


def test_write_creates_parents_atomically(tmp_path: Path, rng: np.random.Generator) -> None:
    target = tmp_path / "deep" / "er" / "heat.jpg"
    write_image(target, random_rgb(rng))
    write_image(target, random_rgb(rng))  # overwrite in place
    assert target.is_file()
    assert [p.name for p in target.parent.iterdir()] == ["heat.jpg"]


def test_write_failure_leaves_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    target = tmp_path / "taken.png"
    target.mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(OSError):
        write_image(target, random_rgb(rng))
    assert [p.name for p in tmp_path.iterdir()] == ["taken.png"]


def test_write_rejects_bad_input(tmp_path: Path, rng: np.random.Generator) -> None:
    with pytest.raises(ValueError, match="cannot write"):
        write_image(tmp_path / "a.bmp", random_rgb(rng))
    with pytest.raises(ValueError, match="RGB uint8"):
        write_image(tmp_path / "a.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="jpeg_quality"):
        write_image(tmp_path / "a.jpg", random_rgb(rng), jpeg_quality=0)
    assert list(tmp_path.iterdir()) == []


# --- heatmap_overlay ---------------------------------------------------------------------------


def blob_map(size: int = 32, centre: tuple[int, int] = (16, 16), radius: int = 6) -> np.ndarray:
    """A low anomaly map (0.1) with a hot disc (1.0); threshold 0.5 separates them."""
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
    return np.where(inside, 1.0, 0.1).astype(np.float32)


def is_magenta(image: np.ndarray) -> np.ndarray:
    return (image == MAGENTA).all(axis=2)


def test_overlay_shape_and_dtype(rng: np.random.Generator) -> None:
    image = random_rgb(rng, 50, 70)
    for threshold in (None, 0.5):
        out = heatmap_overlay(image, blob_map(), threshold)
        assert out.shape == image.shape and out.dtype == np.uint8


def test_overlay_outlines_the_hot_blob() -> None:
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    pixel_map = blob_map(64, (32, 40), 10)
    with_threshold = heatmap_overlay(image, pixel_map, 0.5)
    without = heatmap_overlay(image, pixel_map, None)
    outline = is_magenta(with_threshold)
    assert not is_magenta(without).any()
    assert outline.any()
    ys, xs = np.nonzero(outline)
    distance = np.hypot(ys - 32, xs - 40)
    assert distance.min() >= 8 and distance.max() <= 11  # on the blob's rim, not inside or far away
    assert (with_threshold[outline] != without[outline]).any(axis=1).all()
    # Inside the blob (1.0 = 2t): red; outside (0.1, below t): the grey picture untouched.
    assert with_threshold[32, 40, 0] > with_threshold[32, 40, 2] + 50
    assert (with_threshold[5, 5] == 128).all()
    assert np.abs(without[5, 5].astype(int) - 128).max() > 20  # without a threshold the whole frame is tinted


def test_overlay_resizes_small_map() -> None:
    image = np.full((96, 128, 3), 100, dtype=np.uint8)
    pixel_map = np.zeros((6, 8), dtype=np.float64)
    pixel_map[0, 0] = 1.0  # hot patch at the top-left corner
    out = heatmap_overlay(image, pixel_map, 0.5)
    assert out.shape == image.shape
    ys, xs = np.nonzero(is_magenta(out))
    assert ys.size and ys.max() < 48 and xs.max() < 64


def test_overlay_colours_only_at_and_above_the_threshold_from_yellow_to_red() -> None:
    image = np.full((16, 64, 3), 40, dtype=np.uint8)
    values = np.array([[0.1, 0.2, 0.3, 10.0]], dtype=np.float32)  # below t, t, 1.5 t, far above 2t
    pixel_map = np.repeat(values, 16, axis=1).repeat(16, axis=0)
    out = heatmap_overlay(image, pixel_map, 0.2, alpha=1.0)
    assert (out[8, 8] == 40).all()  # below the threshold: the frame as it was
    assert tuple(out[8, 24]) == (255, 255, 0)  # t: yellow
    assert tuple(out[8, 40]) == (255, 128, 0)  # half way to 2t: orange
    assert tuple(out[8, 56]) == (255, 0, 0)  # 2t and above: red


def test_overlay_leaves_a_normal_frame_untouched(rng: np.random.Generator) -> None:
    image = random_rgb(rng, 40, 40)
    pixel_map = rng.random((10, 10)).astype(np.float32) * 0.49
    np.testing.assert_array_equal(heatmap_overlay(image, pixel_map, 0.5), image)


def test_overlay_constant_map_without_threshold() -> None:
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    out = heatmap_overlay(image, np.full((4, 4), 3.0), None, alpha=1.0)
    bottom = cv2.applyColorMap(np.zeros((1, 1), np.uint8), cv2.COLORMAP_JET)[0, 0, ::-1]
    assert (out == bottom).all()


@pytest.mark.parametrize(
    ("image", "pixel_map", "threshold", "alpha", "message"),
    [
        (np.zeros((8, 8), np.uint8), np.zeros((4, 4)), 0.5, 0.45, "RGB uint8"),
        (np.zeros((8, 8, 3), np.float32), np.zeros((4, 4)), 0.5, 0.45, "RGB uint8"),
        (np.zeros((8, 8, 4), np.uint8), np.zeros((4, 4)), 0.5, 0.45, "RGB uint8"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4, 1)), 0.5, 0.45, "2-D"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((0, 4)), 0.5, 0.45, "2-D"),
        (np.zeros((8, 8, 3), np.uint8), np.array([[0.0, np.nan]]), 0.5, 0.45, "NaN"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4), bool), 0.5, 0.45, "real numbers"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4)), 0.0, 0.45, "threshold"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4)), float("inf"), 0.45, "threshold"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((4, 4)), 0.5, 1.5, "alpha"),
    ],
)
def test_overlay_rejects_bad_inputs(
    image: np.ndarray, pixel_map: np.ndarray, threshold: float, alpha: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        heatmap_overlay(image, pixel_map, threshold, alpha)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp", ".tif"])
@pytest.mark.parametrize("shape", [(37, 53, 3), (64, 9, 3), (37, 53)])
def test_header_size_reads_width_and_height_without_decoding(suffix: str, shape: tuple[int, ...]) -> None:
    encoded = cv2.imencode(suffix, np.zeros(shape, np.uint8))[1].tobytes()
    assert header_size(encoded) == (shape[1], shape[0])
    assert header_size(encoded[:12]) is None  # cut short: the decoder has the last word
    assert header_size(b"GIF89a" + encoded[6:]) is None


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    """Issue 15, item 11: a huge frame took the daemon from 1 to 4.3 GB; now it is refused before decoding.
    The PNG's header is rewritten to claim 10000x5001 pixels: nothing that large is ever built here."""
    data = bytearray(cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", 10000, 5001)
    path = tmp_path / "huge.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"huge.png: image is 10000x5001 \(50 megapixels\), more than the 50"):
        read_rgb(path)
    data[16:24] = struct.pack(">II", 10000, 5000)  # exactly at the limit: up to the decoder (a bad CRC here)
    with pytest.raises(ImageError, match="cannot decode image"):
        decode_rgb(bytes(data), "at-limit")
    assert MAX_PIXELS == 50_000_000

"""Image input/output for linewatch: the one place that touches image files.

Reading goes through ``cv2.imdecode`` on bytes (so non-ASCII paths work on every platform), user path
arguments are expanded here so every command accepts the same files/directories/globs, and heatmap
overlays are drawn here so training reports and scoring use one rendering. Images inside the program
are RGB ``uint8`` arrays of shape (H, W, 3); BGR order never leaves this module.
"""

from __future__ import annotations

import glob
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

# Anything smaller cannot hold a meaningful part view; it is almost always a thumbnail or icon by mistake.
MIN_SIDE = 8
# The model sees a few hundred pixels a side; a frame beyond 50 megapixels (an 8000x8000 PNG took the
# daemon from 1 to 4.3 GB, a 12000x12000 JPEG took training to 7.7 GB) is refused from its header,
# before anything is decoded. Industrial area cameras stay below it.
MAX_PIXELS = 50_000_000

# IMREAD_UNCHANGED is the one flag value for which OpenCV skips EXIF orientation, so it is not used:
# ANYDEPTH keeps 16-bit/float data, ANYCOLOR keeps grayscale as one channel, and orientation is applied.
# Phone photos of parts are stored sideways with an EXIF rotation; honouring it makes the model see the
# picture as every viewer shows it, and heatmaps written without EXIF line up with the original as seen.
# Line cameras write no EXIF, so for them this changes nothing. Alpha is dropped by the decoder.
_DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR

_GLOB_CHARS = frozenset("*?[")
_CONTOUR_RGB = (255, 0, 255)  # magenta is not on the yellow-red ramp, so the outline never blends into it
_WRITE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


class ImageError(ValueError):
    """A user-supplied image or path that cannot be used; the message names the path and what is wrong."""


def to_rgb_uint8(array: np.ndarray, source: str) -> np.ndarray:
    """Normalise a decoded image array (BGR/BGRA channel order, as OpenCV returns it) to RGB uint8 (H, W, 3).

    Grayscale is replicated into three channels. A fourth (alpha) channel is dropped rather than composited:
    any background colour would put pixels into the picture that the camera never saw, while the colour
    under a transparent pixel is still the scene's own. uint16 is scaled by 1/257 (65535 -> 255, rounded);
    floats must lie in [0, 1] and are scaled by 255. Anything else raises ImageError naming ``source``.
    """
    if array.size == 0 or array.ndim not in (2, 3):
        raise ImageError(f"{source}: not an image array (shape {array.shape}, dtype {array.dtype})")
    channels = 1 if array.ndim == 2 else array.shape[2]
    if channels not in (1, 3, 4):
        raise ImageError(f"{source}: unsupported channel count {channels} (shape {array.shape})")

    if array.dtype == np.uint8:
        data = array
    elif array.dtype == np.uint16:
        data = ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(f"{source}: float image contains NaN or infinite values")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ImageError(
                f"{source}: float image values must lie within [0, 1] "
                f"(found {array.min():g}..{array.max():g}, dtype {array.dtype})"
            )
        data = np.rint(array.astype(np.float32) * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"{source}: unsupported pixel type {array.dtype} (shape {array.shape})")

    if channels == 1:
        gray = data.reshape(data.shape[0], data.shape[1])
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    return np.ascontiguousarray(data[:, :, 2::-1])


def _decode(data: bytes, source: str) -> np.ndarray:
    """Decode image bytes and apply the checks shared by files and in-memory uploads."""
    if not data:
        raise ImageError(f"{source}: empty file or data, not an image")
    size = header_size(data)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise ImageError(
            f"{source}: image is {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.0f} megapixels), more than the "
            f"{MAX_PIXELS / 1e6:.0f} megapixels linewatch reads; scale it down or crop it first"
        )
    try:
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _DECODE_FLAGS)
    except cv2.error as exc:  # e.g. dimensions over OpenCV's safety limit
        raise ImageError(f"{source}: cannot decode image ({exc.err or exc})") from exc
    if array is None:
        raise ImageError(f"{source}: cannot decode image (not an image, corrupt or truncated)")
    rgb = to_rgb_uint8(array, source)
    height, width = rgb.shape[:2]
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ImageError(f"{source}: image is {width}x{height}, smaller than the minimum {MIN_SIDE}x{MIN_SIDE} px")
    return rgb


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a PNG, JPEG, BMP, WebP or TIFF, without decoding; None for
    anything else or a header too damaged to say (the decoder then has its own word)."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return _be(data, 16, 4), _be(data, 20, 4)
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            return abs(_le(data, 18, 4, signed=True)), abs(_le(data, 22, 4, signed=True))
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
    except (IndexError, ValueError):
        return None
    return None


def _be(data: bytes, offset: int, length: int) -> int:
    if offset + length > len(data):
        raise IndexError("header cut short")
    return int.from_bytes(data[offset : offset + length], "big")


def _le(data: bytes, offset: int, length: int, signed: bool = False) -> int:
    if offset + length > len(data):
        raise IndexError("header cut short")
    return int.from_bytes(data[offset : offset + length], "little", signed=signed)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The frame header (SOF0..SOF15 but DHT, JPG and DAC) after walking the marker segments."""
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:  # no length follows
            offset += 1 if marker == 0xFF else 2
            continue
        length = _be(data, offset + 2, 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return _be(data, offset + 7, 2), _be(data, offset + 5, 2)
        offset += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return _le(data, 24, 3) + 1, _le(data, 27, 3) + 1
    if chunk == b"VP8L":
        bits = _le(data, 21, 4)
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        return _le(data, 26, 2) & 0x3FFF, _le(data, 28, 2) & 0x3FFF
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of the first image file directory."""
    order = "little" if data[:2] == b"II" else "big"
    read = _le if order == "little" else _be
    directory = read(data, 4, 4)
    found: dict[int, int] = {}
    for index in range(read(data, directory, 2)):
        entry = directory + 2 + 12 * index
        tag, kind = read(data, entry, 2), read(data, entry + 2, 2)
        if tag in (256, 257):
            found[tag] = read(data, entry + 8, 2) if kind == 3 else read(data, entry + 8, 4)  # SHORT or LONG
    return (found[256], found[257]) if len(found) == 2 else None


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3), EXIF orientation applied and alpha dropped.

    Every problem a user can cause (missing, directory, wrong suffix, unreadable, undecodable, tiny)
    becomes an ImageError naming the path, so the CLI can report it without a traceback.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ImageError(f"{path}: not an image file (suffix {path.suffix!r}; expected {_suffix_list()})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    return _decode(data, str(path))


def decode_rgb(data: bytes, source: str) -> np.ndarray:
    """Decode image bytes already in memory (e.g. an upload) exactly as read_rgb decodes a file."""
    return _decode(bytes(data), source)


def collect_images(specs: Sequence[str | Path]) -> list[Path]:
    """Expand user arguments (files, directories, glob patterns) into an ordered, de-duplicated image list.

    An existing path wins over glob interpretation, so a file literally named ``part[1].png`` still works.
    Directories are listed non-recursively and skip dot-files (e.g. macOS ``._x.png`` resource forks, which
    are not images). Order follows the specs, sorted within each, so runs are reproducible; a file named by
    two specs (say a directory and a glob) is kept once, at its first position. Every spec must yield at
    least one image: a silently empty argument usually means a typo, and training on fewer normals than
    intended is worse than stopping.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    for spec in specs:
        for path in _expand(spec):
            key = path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(path)
    return found


def _expand(spec: str | Path) -> list[Path]:
    """The image files one user argument names, sorted; ImageError if it names none."""
    text = os.path.expanduser(str(spec))
    path = Path(text)
    if path.is_file():
        if not _is_image_name(path):
            raise ImageError(f"{path}: not an image file (suffix {path.suffix!r}; expected {_suffix_list()})")
        return [path]
    if path.is_dir():
        images = sorted(
            (p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and _is_image_name(p)),
            key=lambda p: p.name,
        )
        if not images:
            raise ImageError(f"no images in {path} (looked for {_suffix_list()}, not in subdirectories)")
        return images
    if _GLOB_CHARS.intersection(text):
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
        images = [p for p in matches if p.is_file() and _is_image_name(p)]
        if not images:
            raise ImageError(f"no images match pattern {text!r}")
        return images
    raise ImageError(f"no such file or directory: {path}")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _suffix_list() -> str:
    return " ".join(sorted(IMAGE_SUFFIXES))


def write_image(path: Path, rgb: np.ndarray, jpeg_quality: int = 90) -> None:
    """Write an RGB uint8 image as PNG or JPEG (chosen by suffix), creating parent directories.

    The bytes go to a uniquely named temp file in the target directory which is then os.replace()d over
    the target, so a dashboard or operator polling the heatmap directory never sees half a file. The temp
    file is created with normal permissions (not mkstemp's 0600), so the result is readable as usual.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _WRITE_SUFFIXES:
        raise ValueError(f"{path}: cannot write {path.suffix!r} images; use .png, .jpg or .jpeg")
    _check_rgb(rgb, "image to write")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be within 1..100, got {jpeg_quality}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if suffix != ".png" else []
    ok, encoded = cv2.imencode(suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the image as {suffix}")

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(encoded.tobytes())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_rgb(image: object, what: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        found = f"shape {image.shape}, dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image)
        raise ValueError(f"{what} must be an RGB uint8 array of shape (H, W, 3), got {found}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {image.shape})")


def heatmap_overlay(
    image: np.ndarray, pixel_map: np.ndarray, threshold: float | None, alpha: float = 0.55
) -> np.ndarray:
    """Colour where the anomaly map reaches ``threshold``, on a scale relative to it, and outline those regions.

    With a threshold t (the product's pixel threshold) only the regions at or above t are coloured, from
    yellow at t to red at 2t and above, blended with ``alpha`` over the frame; everything below t stays the
    frame as it was, so the part is readable and the defect is what stands out; each region gets a magenta
    outline. Tinting the whole frame, as before, gave a uniform blue on a normal part and a faint glow on a
    defect. The operator page's legend (``.legend .ramp`` in web/static/app.css) draws the same ramp.
    Without a threshold (a map nobody calibrated) the map's own min..max is drawn in JET over the whole
    frame, without outlines.
    The map (any size, e.g. a patch grid) is resized bilinearly to the image.
    """
    _check_rgb(image, "image")
    if not isinstance(pixel_map, np.ndarray) or pixel_map.ndim != 2 or pixel_map.size == 0:
        found = f"shape {pixel_map.shape}" if isinstance(pixel_map, np.ndarray) else type(pixel_map)
        raise ValueError(f"pixel_map must be a non-empty 2-D array, got {found}")
    if not (np.issubdtype(pixel_map.dtype, np.floating) or np.issubdtype(pixel_map.dtype, np.integer)):
        raise ValueError(f"pixel_map must hold real numbers, got dtype {pixel_map.dtype}")
    if not np.isfinite(pixel_map).all():
        raise ValueError("pixel_map contains NaN or infinite values")
    if threshold is not None and not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"threshold must be a positive finite number or None, got {threshold}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")

    height, width = image.shape[:2]
    scores = cv2.resize(pixel_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    if threshold is None:
        low, high = float(scores.min()), float(scores.max())
        scaled = (scores - low) / (high - low) if high > low else np.zeros_like(scores)
        levels = np.rint(scaled * 255.0).astype(np.uint8)
        colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
        blended = image.astype(np.float32) * (1.0 - alpha) + colours.astype(np.float32) * alpha
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)

    anomalous = scores >= threshold
    overlay = image.copy()
    if not anomalous.any():
        return overlay
    above = np.clip(scores[anomalous] / threshold - 1.0, 0.0, 1.0)  # 0 at t, 1 at 2t and beyond
    ramp = np.stack([np.full_like(above, 255.0), 255.0 * (1.0 - above), np.zeros_like(above)], axis=1)
    blended = overlay[anomalous].astype(np.float32) * (1.0 - alpha) + ramp * alpha
    overlay[anomalous] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(anomalous.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    thickness = 2 if max(height, width) >= 256 else 1
    cv2.drawContours(overlay, contours, -1, _CONTOUR_RGB, thickness)
    return overlay

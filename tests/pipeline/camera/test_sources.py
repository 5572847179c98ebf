"""Frame sources on generated files and folders, and OpenCVSource over a fake capture."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import linewatch.pipeline.camera.sources as sources_module
from linewatch.images import write_image
from linewatch.pipeline.camera.sources import (
    FFMPEG_OPTIONS_ENV,
    EndOfStream,
    FolderSource,
    OpenCVSource,
    SourceError,
    SyntheticSource,
    VideoFileSource,
    mask_secrets,
)
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from tests.services.ports import free_port

VIDEO_COLOURS_RGB = [(250, 10, 10), (10, 250, 10), (10, 10, 250), (250, 250, 10), (10, 250, 250)]


@pytest.fixture(scope="module")
def video_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 64x48 frames, each one solid colour, MJPG in an .avi."""
    path = tmp_path_factory.mktemp("video") / "line.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    assert writer.isOpened()
    for rgb in VIDEO_COLOURS_RGB:
        writer.write(np.full((48, 64, 3), rgb[::-1], np.uint8))  # VideoWriter takes BGR
    writer.release()
    return path


def _colour_index(image: np.ndarray) -> int:
    """Which of VIDEO_COLOURS_RGB the (lossy) frame shows."""
    mean = image.reshape(-1, 3).mean(axis=0)
    distances = [np.abs(mean - np.array(colour)).sum() for colour in VIDEO_COLOURS_RGB]
    assert min(distances) < 30, f"frame colour {mean} is none of the written ones"
    return int(np.argmin(distances))


# --- video file ---------------------------------------------------------------------------------------------


def test_video_reads_frames_in_order_as_rgb(video_file: Path):
    source = VideoFileSource(video_file, loop=False)
    source.open()
    frames = [source.read() for _ in range(5)]
    assert all(frame.shape == (48, 64, 3) and frame.dtype == np.uint8 for frame in frames)
    assert [_colour_index(frame) for frame in frames] == [0, 1, 2, 3, 4]
    with pytest.raises(EndOfStream):
        source.read()
    source.close()


def test_video_loop_rewinds_and_reopen_starts_over(video_file: Path):
    source = VideoFileSource(video_file)  # loop by default
    assert not source.live
    source.open()
    assert [_colour_index(source.read()) for _ in range(12)] == [0, 1, 2, 3, 4] * 2 + [0, 1]
    source.close()
    source.close()  # idempotent
    with pytest.raises(SourceError):
        source.read()
    source.open()
    assert _colour_index(source.read()) == 0
    source.close()


def test_video_missing_or_garbage_file_names_the_path(tmp_path: Path):
    missing = tmp_path / "nowhere.avi"
    with pytest.raises(SourceError, match=r"nowhere\.avi"):
        VideoFileSource(missing).open()
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match=r"garbage\.avi"):
        VideoFileSource(garbage).open()


# --- folder -------------------------------------------------------------------------------------------------


def _solid(value: int) -> np.ndarray:
    return np.full((16, 16, 3), value, np.uint8)


def _put(folder: Path, name: str, value: int, mtime_s: float | None = None) -> Path:
    path = folder / name
    write_image(path, _solid(value))
    if mtime_s is not None:
        os.utime(path, ns=(int(mtime_s * 1e9), int(mtime_s * 1e9)))
    return path


def _drain(source: FolderSource, polls: int = 4) -> list[int]:
    """Read for a few polls; the grey value of every image delivered."""
    values = []
    for _ in range(polls):
        while (image := source.read()) is not None:
            values.append(int(image[0, 0, 0]))
    return values


def test_folder_delivers_new_files_in_mtime_then_name_order_each_once(tmp_path: Path):
    source = FolderSource(tmp_path, scan_interval_s=0)
    source.open()
    assert source.read() is None
    base = 1_700_000_000.0
    _put(tmp_path, "b.png", 20, base + 1)
    _put(tmp_path, "a.png", 30, base + 2)
    _put(tmp_path, "c.png", 21, base + 1)
    assert source.read() is None  # a file is read only once it has looked the same on two scans
    assert _drain(source) == [20, 21, 30]  # (mtime, name): b and c share a time, then a
    _put(tmp_path, "0-late.png", 40, base)  # an older mtime, but it appears later: delivered when it appears
    assert _drain(source) == [40]
    assert _drain(source) == []


def test_folder_reads_files_present_at_open_and_reopen_does_not_repeat(tmp_path: Path):
    _put(tmp_path, "x.png", 50)
    source = FolderSource(tmp_path, scan_interval_s=0)
    source.open()
    assert _drain(source) == [50]
    source.close()
    source.open()
    assert _drain(source) == []


def test_folder_skips_bad_files_once_and_carries_on(tmp_path: Path):
    skipped: list[tuple[Path, str]] = []
    source = FolderSource(tmp_path, on_skipped=lambda path, reason: skipped.append((path, reason)), scan_interval_s=0)
    source.open()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "notes.txt").write_text("shift log")
    _put(tmp_path, "good.png", 60)
    assert _drain(source, polls=6) == [60]
    assert sorted(path.name for path, _ in skipped) == ["broken.png", "notes.txt"]
    reasons = dict((path.name, reason) for path, reason in skipped)
    assert "decode" in reasons["broken.png"]
    assert "suffix" in reasons["notes.txt"]
    assert str(tmp_path) not in reasons["broken.png"]  # the path is passed separately
    assert _drain(source) == []
    assert len(skipped) == 2


def test_folder_ignores_hidden_and_partial_files_silently(tmp_path: Path):
    skipped: list[tuple[Path, str]] = []
    source = FolderSource(tmp_path, on_skipped=lambda path, reason: skipped.append((path, reason)), scan_interval_s=0)
    source.open()
    _put(tmp_path, ".hidden.png", 1)
    (tmp_path / "frame.png.tmp").write_bytes(b"half")
    (tmp_path / "frame.part").write_bytes(b"half")
    (tmp_path / "sub").mkdir()
    assert _drain(source) == []
    assert skipped == []


def test_folder_waits_for_a_file_being_written(tmp_path: Path):
    skipped: list[tuple[Path, str]] = []
    source = FolderSource(tmp_path, on_skipped=lambda path, reason: skipped.append((path, reason)), scan_interval_s=0)
    source.open()
    target = tmp_path / "slow.png"
    target.touch()  # the writer has created it but not written yet
    assert _drain(source) == []
    encoded = cv2.imencode(".png", _solid(70))[1].tobytes()
    with open(target, "ab") as handle:  # half written: size changed since the last scan, so not read yet
        handle.write(encoded[: len(encoded) // 2])
        handle.flush()
        assert source.read() is None
        handle.write(encoded[len(encoded) // 2 :])
    assert _drain(source) == [70]
    assert _drain(source) == []
    assert skipped == []


def test_folder_forgets_names_that_disappear(tmp_path: Path):
    source = FolderSource(tmp_path, scan_interval_s=0)
    source.open()
    path = _put(tmp_path, "cycle.png", 80)
    assert _drain(source) == [80]
    path.unlink()
    assert _drain(source) == []
    _put(tmp_path, "cycle.png", 90)  # the same name again, after it was gone: a new part
    assert _drain(source) == [90]


def test_folder_scans_at_most_once_per_interval(tmp_path: Path):
    source = FolderSource(tmp_path, scan_interval_s=3600)
    source.open()
    assert source.read() is None  # the first read scans
    _put(tmp_path, "y.png", 5)
    assert _drain(source) == []  # no second scan within the interval
    source.close()
    source.open()  # reopening scans afresh
    assert source.read() is None  # first sight of y.png
    source._last_scan = None  # the interval has passed
    assert _drain(source, polls=1) == [5]


def test_folder_missing_or_removed(tmp_path: Path):
    with pytest.raises(SourceError, match="no such folder"):
        FolderSource(tmp_path / "absent").open()
    not_a_folder = tmp_path / "file.png"
    not_a_folder.write_bytes(b"x")
    with pytest.raises(SourceError, match="not a folder"):
        FolderSource(not_a_folder).open()
    folder = tmp_path / "drop"
    folder.mkdir()
    source = FolderSource(folder, scan_interval_s=0)
    source.open()
    shutil.rmtree(folder)
    with pytest.raises(SourceError, match="drop"):
        source.read()


# --- synthetic ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_product() -> SyntheticProduct:
    return SyntheticProduct(style_seed=5, width=64, height=48)


def test_synthetic_shapes_and_seeded_repeatability(small_product: SyntheticProduct):
    first, again, other = (SyntheticSource(small_product, 0.5, seed) for seed in (1, 1, 2))
    for source in (first, again, other):
        source.open()
    images = [first.read() for _ in range(3)]
    assert all(image.shape == (48, 64, 3) and image.dtype == np.uint8 for image in images)
    for image in images:
        np.testing.assert_array_equal(image, again.read())
    assert not np.array_equal(images[0], other.read())
    assert not np.array_equal(images[0], images[1])  # a new part every read


def test_synthetic_defect_rate_is_roughly_respected(small_product: SyntheticProduct):
    source = SyntheticSource(small_product, 0.3, seed=7)
    source.open()
    kinds = []
    for _ in range(200):
        source.read()
        kinds.append(source.last_defect)
    defects = sum(kind is not None for kind in kinds)
    assert 40 <= defects <= 80  # expected 60, sd about 6.5
    none = SyntheticSource(small_product, 0.0, seed=7)
    none.open()
    for _ in range(20):
        none.read()
        assert none.last_defect is None


def test_synthetic_rejects_bad_rate_and_needs_open(small_product: SyntheticProduct):
    with pytest.raises(ValueError, match="defect_rate"):
        SyntheticSource(small_product, 1.5, seed=0)
    with pytest.raises(SourceError):
        SyntheticSource(small_product, 0.1, seed=0).read()


# --- OpenCV (fake capture) ----------------------------------------------------------------------------------


class FakeCapture:
    def __init__(self, opened: bool = True, frames: list[np.ndarray | None] | None = None) -> None:
        self.opened = opened
        self.frames = list(frames or [])
        self.released = False

    def isOpened(self) -> bool:  # OpenCV's spelling
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        if not self.frames:
            return False, None
        frame = self.frames.pop(0)
        return frame is not None, frame

    def set(self, prop_id: int, value: float) -> bool:
        return False

    def release(self) -> None:
        self.released = True


class FakeFactory:
    def __init__(self, *captures: FakeCapture) -> None:
        self.captures = list(captures)
        self.calls: list[tuple[int | str, int, list[int]]] = []

    def __call__(self, target: int | str, api: int, params: list[int]) -> FakeCapture:
        self.calls.append((target, api, list(params)))
        return self.captures.pop(0)


URL = "rtsp://operator:s3cret@10.1.2.3:554/stream1"


def test_opencv_open_failure(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(FFMPEG_OPTIONS_ENV, raising=False)
    capture = FakeCapture(opened=False)
    source = OpenCVSource(URL, capture_factory=FakeFactory(capture))
    with pytest.raises(SourceError) as info:
        source.open()
    assert "rtsp://operator:***@10.1.2.3:554/stream1" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert capture.released


def test_opencv_factory_error_becomes_source_error():
    def broken(target: int | str, api: int, params: list[int]) -> FakeCapture:
        raise cv2.error("backend exploded")

    with pytest.raises(SourceError, match=r"device 2.*backend exploded"):
        OpenCVSource(2, capture_factory=broken).open()


def test_opencv_reads_rgb_then_failure_is_source_error():
    bgr = np.zeros((8, 10, 3), np.uint8)
    bgr[..., 0] = 255  # blue in OpenCV's order
    capture = FakeCapture(frames=[bgr, None])
    source = OpenCVSource(0, capture_factory=FakeFactory(capture))
    assert source.live
    assert source.description == "device 0"
    source.open()
    rgb = source.read()
    assert rgb.shape == (8, 10, 3)
    assert tuple(rgb[0, 0]) == (0, 0, 255)
    with pytest.raises(SourceError, match="device 0"):
        source.read()
    source.close()
    assert capture.released
    with pytest.raises(SourceError, match="not open"):
        source.read()


def test_opencv_rtsp_uses_tcp_and_timeouts(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(FFMPEG_OPTIONS_ENV, raising=False)
    factory = FakeFactory(FakeCapture(frames=[np.zeros((8, 8, 3), np.uint8)]))
    source = OpenCVSource(URL, open_timeout_s=2, read_timeout_s=3.5, capture_factory=factory)
    assert source.description == "rtsp://operator:***@10.1.2.3:554/stream1"
    source.open()
    assert os.environ[FFMPEG_OPTIONS_ENV] == "rtsp_transport;tcp"
    assert factory.calls == [
        (URL, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 2000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 3500])
    ]
    assert source.read().shape == (8, 8, 3)


def test_opencv_keeps_the_operators_ffmpeg_options(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(FFMPEG_OPTIONS_ENV, "max_delay;500000")
    OpenCVSource(URL, capture_factory=FakeFactory(FakeCapture())).open()
    assert os.environ[FFMPEG_OPTIONS_ENV] == "max_delay;500000|rtsp_transport;tcp"
    monkeypatch.setenv(FFMPEG_OPTIONS_ENV, "rtsp_transport;udp")
    OpenCVSource(URL, capture_factory=FakeFactory(FakeCapture())).open()
    assert os.environ[FFMPEG_OPTIONS_ENV] == "rtsp_transport;udp"


def test_opencv_http_and_device_parameters(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(FFMPEG_OPTIONS_ENV, raising=False)
    timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 1000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 1000]
    factory = FakeFactory(FakeCapture(), FakeCapture())
    OpenCVSource("http://cam.local/mjpg", open_timeout_s=1, read_timeout_s=1, capture_factory=factory).open()
    OpenCVSource(1, capture_factory=factory).open()
    assert factory.calls == [
        ("http://cam.local/mjpg", cv2.CAP_FFMPEG, timeouts),
        (1, cv2.CAP_ANY, []),
    ]
    assert FFMPEG_OPTIONS_ENV not in os.environ  # only RTSP needs the transport option


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("rtsp://admin:secret@10.0.0.5/s", "rtsp://admin:***@10.0.0.5/s"),
        ("rtsp://admin:p@ss/w@host/s", "rtsp://admin:***@host/s"),  # unencoded @ and / in the password
        ("rtsp://token@host/s", "rtsp://***@host/s"),
        ("rtsp://host:554/s", "rtsp://host:554/s"),
        ("http://host/cgi?user=a&password=xyz&ch=1", "http://host/cgi?user=a&password=***&ch=1"),
        ("/dev/video0", "/dev/video0"),
    ],
)
def test_mask_secrets(text: str, masked: str):
    assert mask_secrets(text) == masked


def test_a_dead_stream_leaves_no_unprefixed_native_lines_on_stderr(tmp_path: Path):
    """Issue 15, item 13: OpenCV and FFmpeg printed two lines of their own (FFmpeg's with the URL) on every
    failed open; the reader's log line is the one that says the camera is offline."""
    port = free_port()  # nothing listens there: the open is refused at once
    script = (
        "from linewatch.pipeline.camera.sources import OpenCVSource, SourceError\n"
        f"source = OpenCVSource('rtsp://user:pw@127.0.0.1:{port}/stream', open_timeout_s=2)\n"
        "try:\n    source.open()\nexcept SourceError as error:\n    print('refused:', error)\n"
    )
    environ = {k: v for k, v in os.environ.items() if k not in ("OPENCV_FFMPEG_LOGLEVEL", "OPENCV_LOG_LEVEL")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=environ)
    assert done.returncode == 0 and done.stdout.startswith("refused:"), done
    assert done.stderr == ""
    assert "pw" not in done.stdout  # the reader's own message masks the credentials


def test_folder_skips_a_file_that_stays_empty_once_and_reads_one_filled_late(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Issue 15, item 11: a 0-byte file was neither read nor reported, ever."""
    monkeypatch.setattr(sources_module, "EMPTY_GRACE_S", 0.3)
    skipped: list[tuple[Path, str]] = []
    source = FolderSource(tmp_path, on_skipped=lambda path, reason: skipped.append((path, reason)), scan_interval_s=0)
    source.open()
    (tmp_path / "dead.png").touch()
    (tmp_path / "late.png").touch()
    assert source.read() is None and source.read() is None
    write_image(tmp_path / "late.png", np.full((16, 16, 3), 7, np.uint8))  # its writer got there in time
    frames = []
    deadline = time.monotonic() + 10
    while (not skipped or not frames) and time.monotonic() < deadline:
        image = source.read()
        if image is not None:
            frames.append(image)
        time.sleep(0.05)
    assert skipped == [(tmp_path / "dead.png", "empty file (0 bytes for 0.3 s)")]
    assert len(frames) == 1 and int(frames[0][0, 0, 0]) == 7
    for _ in range(10):  # reported once, never read
        assert source.read() is None
    assert len(skipped) == 1

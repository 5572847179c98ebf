"""CameraReader run synchronously on a FakeClock with scripted sources, plus real sources and a real thread."""

from __future__ import annotations

import threading
from collections import deque
from datetime import timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.clock import FakeClock, SystemClock
from linewatch.images import write_image
from linewatch.pipeline.camera.reader import CameraReader
from linewatch.pipeline.camera.sources import EndOfStream, FolderSource, SourceError, VideoFileSource
from linewatch.types import CameraStatus, Frame

ONLINE, OFFLINE, STALLED, DISABLED = (
    CameraStatus.ONLINE,
    CameraStatus.OFFLINE,
    CameraStatus.STALLED,
    CameraStatus.DISABLED,
)
START = 1000.0  # FakeClock's default monotonic origin


class RecordingClock(FakeClock):
    """A FakeClock that remembers every wait it was asked for."""

    def __init__(self) -> None:
        super().__init__(monotonic=START)
        self.waits: list[float] = []

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        self.waits.append(seconds)
        return super().wait(seconds, stop)


def _image(value: int = 0) -> np.ndarray:
    return np.full((48, 64, 3), value, np.uint8)


class ScriptedSource:
    """Opens fail while ``open_fails`` says so; reads follow ``reads`` (image, None, or an exception to raise).
    When the script runs out it sets ``stop`` and returns None, so run() ends deterministically. With a
    ``frame_interval_s`` every read advances the clock, like a camera delivering at its own rate."""

    description = "scripted camera"

    def __init__(
        self,
        stop: threading.Event,
        reads: list[np.ndarray | BaseException | None],
        open_fails: list[bool] | None = None,
        live: bool = False,
        clock: FakeClock | None = None,
        frame_interval_s: float = 0.0,
    ) -> None:
        self.stop = stop
        self.reads = deque(reads)
        self.open_fails = deque(open_fails or [])
        self.live = live
        self.clock = clock
        self.frame_interval_s = frame_interval_s
        self.opens = 0
        self.is_open = False

    def open(self) -> None:
        self.opens += 1
        if self.open_fails and self.open_fails.popleft():
            raise SourceError("scripted camera: connection refused")
        self.is_open = True

    def read(self) -> np.ndarray | None:
        assert self.is_open, "read on a closed source"
        if self.clock is not None and self.frame_interval_s:
            self.clock.advance(self.frame_interval_s)
        if not self.reads:
            self.stop.set()
            return None
        item = self.reads.popleft()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.is_open = False


class Harness:
    def __init__(self, clock: FakeClock | None = None) -> None:
        self.stop = threading.Event()
        self.clock = clock or RecordingClock()
        self.frames: list[Frame] = []
        self.statuses: list[CameraStatus] = []

    def reader(self, source, **kwargs) -> CameraReader:
        def on_status(name: str, status: CameraStatus) -> None:
            assert name == "cam1"
            self.statuses.append(status)

        return CameraReader(
            "cam1",
            "bracket",
            lambda: source,
            self.frames.append,
            on_status,
            self.stop,
            self.clock,
            **kwargs,
        )


def test_fails_to_open_twice_then_streams_breaks_once_and_recovers():
    harness = Harness()
    reads = [_image(1), _image(2), _image(3), SourceError("scripted camera: dropped"), _image(4), _image(5)]
    source = ScriptedSource(harness.stop, reads, open_fails=[True, True])
    reader = harness.reader(source, reconnect_min_s=0.5, reconnect_max_s=30.0)
    reader.run()

    assert harness.statuses == [OFFLINE, ONLINE, OFFLINE, ONLINE]
    assert source.opens == 4
    assert reader.stats.reconnects == 3  # every open attempt after the first
    assert reader.stats.read_errors == 1
    assert reader.stats.frames == 5
    assert [frame.seq for frame in harness.frames] == [1, 2, 3, 4, 5]  # not restarted by the reconnect
    assert [int(frame.image[0, 0, 0]) for frame in harness.frames] == [1, 2, 3, 4, 5]
    # backoff: 0.5 then 1.0 for the failed opens; frames came after the reopen, so the next starts at 0.5 again
    assert harness.clock.waits[:3] == [0.5, 1.0, 0.5]
    assert [frame.captured_mono for frame in harness.frames] == [START + 1.5] * 3 + [START + 2.0] * 2
    first = harness.frames[0]
    assert first.camera == "cam1" and first.product == "bracket" and first.part_id is None
    assert first.captured_at == FakeClock().now() + timedelta(seconds=1.5)
    assert not source.is_open
    assert reader.status == ONLINE  # nothing is reported on stop


def test_backoff_grows_and_caps_while_offline_and_is_not_reset_by_an_open_without_frames():
    harness = Harness()
    # five refused opens, then one that connects but breaks before any frame, then a frame
    source = ScriptedSource(
        harness.stop, [SourceError("scripted camera: no data"), _image()], open_fails=[True] * 5 + [False]
    )
    reader = harness.reader(source, reconnect_min_s=0.5, reconnect_max_s=3.0)
    reader.run()
    assert harness.clock.waits[:6] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    assert harness.statuses == [OFFLINE, ONLINE, OFFLINE, ONLINE]
    assert harness.clock.monotonic() == pytest.approx(START + 12.5)
    assert reader.stats.reconnects == 6
    assert [frame.seq for frame in harness.frames] == [1]


def test_fps_limit_spaces_frames_on_a_source_read_on_demand():
    harness = Harness()
    source = ScriptedSource(harness.stop, [_image(v) for v in range(6)])
    reader = harness.reader(source, fps=4.0)
    reader.run()
    times = [frame.captured_mono for frame in harness.frames]
    assert len(times) == 6
    gaps = np.diff(times)
    assert (gaps >= 0.25 - 1e-9).all()
    assert gaps == pytest.approx([0.25] * 5)
    assert reader.stats.frames_limited == 0  # nothing is dropped: the source is just asked less often


def test_fps_limit_on_a_live_source_reads_everything_and_drops_the_surplus():
    harness = Harness()
    # a 25 fps camera (the clock moves 40 ms per read) limited to 10 fps
    source = ScriptedSource(
        harness.stop, [_image() for _ in range(50)], live=True, clock=harness.clock, frame_interval_s=0.04
    )
    reader = harness.reader(source, fps=10.0)
    reader.run()
    gaps = np.diff([frame.captured_mono for frame in harness.frames])
    assert (gaps >= 0.1 - 1e-9).all()
    assert gaps.max() <= 0.12 + 1e-9  # one camera frame late at most
    assert reader.stats.frames + reader.stats.frames_limited == 50
    assert reader.stats.frames_limited > 0
    assert not source.reads  # every frame was read from the stream, none left buffered
    assert [wait for wait in harness.clock.waits if wait > 0.01 + 1e-9] == []  # never waited instead of reading


def test_stalled_after_the_window_then_online_with_the_next_frame():
    harness = Harness()
    source = ScriptedSource(harness.stop, [_image(), *[None] * 8, _image(), None])
    reader = harness.reader(source, stalled_after_s=2.0, idle_poll_s=0.5)
    reader.run()
    assert harness.statuses == [ONLINE, STALLED, ONLINE]  # stalled once, although more empty polls followed
    assert [frame.captured_mono for frame in harness.frames] == [START, START + 4.0]
    assert reader.stats.frames == 2


def test_stalled_counts_from_open_when_nothing_ever_arrives():
    # empty polls 0.5 s apart from the open; the script's last poll (which sets stop) still counts
    harness = Harness()
    harness.reader(ScriptedSource(harness.stop, [None]), stalled_after_s=1.0, idle_poll_s=0.5).run()
    assert harness.statuses == [ONLINE]  # polls at 0.0 and 0.5 s: inside the window
    harness = Harness()
    harness.reader(ScriptedSource(harness.stop, [None, None]), stalled_after_s=1.0, idle_poll_s=0.5).run()
    assert harness.statuses == [ONLINE, STALLED]  # the poll at 1.0 s reaches it


def test_end_of_stream_disables_the_camera_and_returns():
    harness = Harness()
    source = ScriptedSource(harness.stop, [_image(), _image(), EndOfStream("scripted camera: end"), _image()])
    reader = harness.reader(source)
    reader.run()
    assert harness.statuses == [ONLINE, DISABLED]
    assert not harness.stop.is_set()  # it ended by itself
    assert len(harness.frames) == 2
    assert not source.is_open
    assert source.reads  # nothing read after the end


def test_stop_during_backoff_ends_run():
    harness = Harness()
    source = ScriptedSource(harness.stop, [], open_fails=[True] * 100)

    def stop_after_three(seconds: float, stop: threading.Event) -> bool:
        if len(harness.clock.waits) == 3:
            stop.set()
        return RecordingClock.wait(harness.clock, seconds, stop)

    harness.clock.wait = stop_after_three  # type: ignore[method-assign]
    reader = harness.reader(source)
    reader.run()
    assert source.opens == 4
    assert harness.statuses == [OFFLINE]


def test_stop_from_on_frame_ends_run_and_closes_the_source():
    harness = Harness()
    source = ScriptedSource(harness.stop, [_image() for _ in range(10)])

    def on_frame(frame: Frame) -> None:
        harness.frames.append(frame)
        if frame.seq == 3:
            harness.stop.set()

    reader = CameraReader("cam1", "p", lambda: source, on_frame, lambda *_: None, harness.stop, harness.clock)
    reader.run()
    assert len(harness.frames) == 3
    assert not source.is_open


def test_on_frame_errors_propagate_and_close_the_source():
    harness = Harness()
    source = ScriptedSource(harness.stop, [_image()])

    def on_frame(frame: Frame) -> None:
        raise RuntimeError("slot gone")

    reader = CameraReader("cam1", "p", lambda: source, on_frame, lambda *_: None, harness.stop, harness.clock)
    with pytest.raises(RuntimeError, match="slot gone"):
        reader.run()
    assert not source.is_open


def test_roi_and_rotation_are_applied_and_a_roi_outside_the_frame_drops_it():
    harness = Harness()
    source = ScriptedSource(harness.stop, [_image(), np.zeros((10, 12, 3), np.uint8), _image()])
    reader = harness.reader(source, roi=(40, 8, 20, 30), rotate=90)
    reader.run()
    assert [frame.image.shape for frame in harness.frames] == [(20, 30, 3), (20, 30, 3)]
    assert reader.stats.bad_frames == 1  # the small frame holds nothing of the roi
    assert [frame.seq for frame in harness.frames] == [1, 2]


@pytest.mark.parametrize(
    "kwargs",
    [{"rotate": 45}, {"fps": 0.0}, {"roi": (0, 0, 0, 5)}, {"reconnect_min_s": 5.0, "reconnect_max_s": 1.0}],
)
def test_bad_settings_fail_at_construction(kwargs: dict):
    with pytest.raises(ValueError, match=r"cam1|minimum_s"):
        Harness().reader(ScriptedSource(threading.Event(), []), **kwargs)


def test_factory_error_is_retried_like_a_failed_open():
    harness = Harness()
    source = ScriptedSource(harness.stop, [_image()])
    calls = []

    def factory() -> ScriptedSource:
        calls.append(1)
        if len(calls) == 1:
            raise SourceError("scripted camera: not there yet")
        return source

    reader = CameraReader(
        "cam1",
        "p",
        factory,
        harness.frames.append,
        lambda _, s: harness.statuses.append(s),
        harness.stop,
        harness.clock,
    )
    reader.run()
    assert len(calls) == 2
    assert harness.statuses == [OFFLINE, ONLINE]
    assert len(harness.frames) == 1


def test_video_file_without_loop_plays_once_then_disabled(tmp_path: Path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for value in range(5):
        writer.write(np.full((48, 64, 3), value * 40, np.uint8))
    writer.release()
    harness = Harness()
    reader = harness.reader(VideoFileSource(path, loop=False), fps=10.0)
    reader.run()
    assert harness.statuses == [ONLINE, DISABLED]
    assert [frame.seq for frame in harness.frames] == [1, 2, 3, 4, 5]
    assert np.diff([frame.captured_mono for frame in harness.frames]) == pytest.approx([0.1] * 4)


def test_folder_source_skips_are_counted_by_the_reader(tmp_path: Path):
    for name, value in [("a.png", 10), ("b.png", 20)]:
        write_image(tmp_path / name, np.full((16, 16, 3), value, np.uint8))
    (tmp_path / "c.png").write_bytes(b"garbage")
    harness = Harness()
    reader: CameraReader | None = None

    def factory() -> FolderSource:
        assert reader is not None
        return FolderSource(tmp_path, on_skipped=reader.report_skipped, scan_interval_s=0)

    def on_frame(frame: Frame) -> None:
        harness.frames.append(frame)

    reader = CameraReader(
        "cam1", "p", factory, on_frame, lambda *_: None, harness.stop, harness.clock, stalled_after_s=0.5
    )

    def stop_when_quiet(seconds: float, stop: threading.Event) -> bool:
        if harness.clock.monotonic() > START + 1.0:
            stop.set()
        return RecordingClock.wait(harness.clock, seconds, stop)

    harness.clock.wait = stop_when_quiet  # type: ignore[method-assign]
    reader.run()
    assert [int(frame.image[0, 0, 0]) for frame in harness.frames] == [10, 20]
    assert reader.stats.skipped_files == 1
    assert reader.status == ONLINE  # a quiet hot folder waits for its next file, it is not stalled (issue 15)


def test_start_runs_in_a_named_non_daemon_thread():
    stop = threading.Event()
    source = ScriptedSource(threading.Event(), [None] * 100_000)  # does not end by itself within the test
    statuses: list[CameraStatus] = []
    reader = CameraReader(
        "cam1", "p", lambda: source, lambda frame: None, lambda _, s: statuses.append(s), stop, SystemClock()
    )
    thread = reader.start()
    assert thread.name == "camera-cam1"
    assert not thread.daemon
    for _ in range(1000):
        if statuses:
            break
        threading.Event().wait(0.01)
    stop.set()
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert statuses[0] == ONLINE
    assert not source.is_open


def test_a_reader_that_fails_unforeseen_is_reported_offline_and_restarted_with_numbering_on(
    caplog: pytest.LogCaptureFixture,
):
    """Issue 15, item 6: an exception that escaped the loop ended the thread and left the camera looking
    fine forever. The thread now logs it, reports offline, backs off and runs again on the same source."""
    harness = Harness()
    reads = [_image(1), RuntimeError("decoder bug"), _image(2), MemoryError(), _image(3)]
    source = ScriptedSource(harness.stop, reads)
    delivered = []

    def on_frame(frame: Frame) -> None:
        if frame.seq == 2 and not delivered:  # the downstream fails once, on the second frame
            delivered.append("failed once")
            raise ValueError("resize failed")
        harness.frames.append(frame)

    reader = CameraReader(
        "cam1", "p", lambda: source, on_frame, lambda _, s: harness.statuses.append(s), harness.stop, harness.clock
    )
    with caplog.at_level("ERROR", logger="linewatch.pipeline.camera.reader"):
        thread = reader.start()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert [frame.seq for frame in harness.frames] == [1, 3]  # frame 2 was lost to the failing downstream
    assert [int(frame.image[0, 0, 0]) for frame in harness.frames] == [1, 3]
    assert harness.statuses == [ONLINE, OFFLINE, ONLINE, OFFLINE, ONLINE, OFFLINE, ONLINE]
    assert reader.stats.reconnects == 3 and not source.is_open
    failures = [r for r in caplog.records if "reader failed" in r.getMessage()]
    assert [r.exc_info[0] for r in failures] == [RuntimeError, ValueError, MemoryError]
    assert harness.clock.waits[:3] == [0.5, 0.5, 1.0]  # the backoff grows while restarts deliver nothing new


def test_a_hot_folder_waiting_for_files_is_never_stalled():
    """Issue 15, item 11: a folder camera went "stalled" 5 s after every file, though waiting is its normal
    state (the source says so with idle_is_normal)."""

    class HotFolder(ScriptedSource):
        idle_is_normal = True

    harness = Harness()
    source = HotFolder(harness.stop, [_image(), *[None] * 8, _image(), None])
    harness.reader(source, stalled_after_s=2.0, idle_poll_s=0.5).run()
    assert harness.statuses == [ONLINE] and len(harness.frames) == 2

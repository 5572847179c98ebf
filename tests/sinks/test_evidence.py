"""Tests for linewatch.sinks.evidence: layout, sampling, and the writer thread (atomic, non-blocking, drained)."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

import linewatch.sinks.evidence as evidence_module
from linewatch.images import read_rgb
from linewatch.sinks.evidence import (
    EvidenceJob,
    EvidenceName,
    EvidencePaths,
    EvidenceSampler,
    EvidenceWriter,
    evidence_paths,
    parse_evidence_name,
)
from linewatch.types import VerdictLabel

NORMAL, DEFECT = VerdictLabel.NORMAL, VerdictLabel.DEFECT
TS = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
HEIGHT, WIDTH = 480, 640
THRESHOLD = 0.5
AT = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PLENTY = 10**12


# ---------------------------------------------------------------- sampler


@pytest.mark.parametrize(
    ("every", "calls", "expected"),
    [
        (0, [("a", NORMAL)] * 3 + [("a", DEFECT)], [False, False, False, True]),
        (1, [("a", NORMAL)] * 3, [True, True, True]),
        (3, [("a", NORMAL)] * 7, [True, False, False, True, False, False, True]),
        # defects are always kept and do not advance the normal count
        (2, [("a", NORMAL), ("a", DEFECT), ("a", NORMAL), ("a", NORMAL)], [True, True, False, True]),
        # per camera: b's first normal is kept although a has just used its turn
        (
            2,
            [("a", NORMAL), ("b", NORMAL), ("a", NORMAL), ("b", NORMAL), ("a", NORMAL)],
            [True, True, False, False, True],
        ),
        (5, [("a", "defect"), ("a", "normal")], [True, True]),  # plain strings as in journal payloads
    ],
)
def test_sampler_keeps_every_defect_and_every_nth_normal_per_camera(
    every: int, calls: list[tuple[str, str]], expected: list[bool]
) -> None:
    sampler = EvidenceSampler(every, close_call_band=0.1)
    assert [sampler.wants(camera, verdict, 0.1, THRESHOLD, AT) for camera, verdict in calls] == expected


def test_sampler_keeps_close_calls_without_using_up_the_nth_normal_turn() -> None:
    sampler = EvidenceSampler(3, close_call_band=0.1)
    scores = [0.1, 0.46, 0.44, 0.2, 0.2, 0.54, 0.2]  # 0.46 and 0.54 are within 10 % of 0.5; 0.44 is not
    kept = [sampler.wants("a", NORMAL, score, THRESHOLD, AT) for score in scores]
    assert kept == [True, True, False, False, True, True, False]  # the 1st, 4th... plain normals; every close call
    assert not EvidenceSampler(0).wants("a", NORMAL, 0.5, THRESHOLD, AT)  # band 0: close calls are not special


def test_close_calls_are_kept_at_most_once_per_interval_per_camera() -> None:
    sampler = EvidenceSampler(0, close_call_band=0.1, close_call_interval_s=1.0)
    times = [0.0, 0.4, 0.99, 1.0, 1.5, 2.2]
    kept = [sampler.wants("a", NORMAL, 0.48, THRESHOLD, AT + timedelta(seconds=t)) for t in times]
    assert kept == [True, False, False, True, False, True]
    assert sampler.wants("b", NORMAL, 0.48, THRESHOLD, AT + timedelta(seconds=0.4))  # another camera: its own
    assert sampler.wants("a", DEFECT, 0.52, THRESHOLD, AT + timedelta(seconds=2.3))  # defects: always
    assert sampler.wants("a", NORMAL, 0.48, THRESHOLD, AT - timedelta(hours=1))  # clock stepped back: anew


@pytest.mark.parametrize("bad", [-1, True, 2.0, "3"])
def test_sampler_refuses_bad_n(bad: object) -> None:
    with pytest.raises(ValueError, match="every_nth_normal"):
        EvidenceSampler(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_sampler_refuses_a_bad_band(bad: float) -> None:
    with pytest.raises(ValueError, match="close_call_band"):
        EvidenceSampler(1, bad)
    with pytest.raises(ValueError, match="close_call_interval_s"):
        EvidenceSampler(1, 0.1, -bad - 0.5)


def test_sampler_refuses_unknown_verdict() -> None:
    with pytest.raises(ValueError, match="'maybe'"):
        EvidenceSampler(1).wants("a", "maybe", 0.1, THRESHOLD, AT)


# ---------------------------------------------------------------- paths


def test_paths_follow_the_dated_per_camera_layout() -> None:
    paths = evidence_paths("cam1", TS, "cam1-b00t-42", DEFECT)
    assert paths == EvidencePaths(
        "cam1/2026-03-01/cam1-b00t-42-defect.jpg", "cam1/2026-03-01/cam1-b00t-42-defect-heatmap.jpg"
    )


@pytest.mark.parametrize(
    ("frame_ts", "day"),
    [
        (datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=2))), "2026-02-28"),  # 22:30 UTC the day before
        (datetime(2026, 2, 28, 23, 30, tzinfo=timezone(timedelta(hours=-5))), "2026-03-01"),  # 04:30 UTC next day
        (datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), "2026-12-31"),
    ],
)
def test_paths_take_the_date_in_utc(frame_ts: datetime, day: str) -> None:
    assert evidence_paths("cam1", frame_ts, "x-1", NORMAL).snapshot == f"cam1/{day}/x-1-normal.jpg"


def test_paths_refuse_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evidence_paths("cam1", datetime(2026, 3, 1), "x-1", NORMAL)


@pytest.mark.parametrize("bad", ["", ".", "..", "../etc", "a/b", "a\\b", "a\0b", ".hidden", "x" * 201])
@pytest.mark.parametrize("field", ["camera", "inspection id"])
def test_paths_refuse_unsafe_segments(bad: str, field: str) -> None:
    camera, inspection_id = (bad, "x-1") if field == "camera" else ("cam1", bad)
    with pytest.raises(ValueError, match=f"{field} .*not a safe path segment") as info:
        evidence_paths(camera, TS, inspection_id, NORMAL)
    assert repr(bad[:40]) in str(info.value)


def test_paths_refuse_unknown_verdict() -> None:
    with pytest.raises(ValueError, match="verdict 'bad'"):
        evidence_paths("cam1", TS, "x-1", "bad")


def test_file_names_parse_back() -> None:
    paths = evidence_paths("cam1", TS, "cam1-b00t-7", NORMAL)
    assert parse_evidence_name(Path(paths.snapshot).name) == EvidenceName("cam1-b00t-7", NORMAL, heatmap=False)
    assert parse_evidence_name(Path(paths.heatmap).name) == EvidenceName("cam1-b00t-7", NORMAL, heatmap=True)
    for other in ["notes.txt", "x-maybe.jpg", "-defect.jpg", ".x-defect.jpg.ab12.tmp", "x-defect.png"]:
        assert parse_evidence_name(other) is None, other


@pytest.mark.parametrize("bad", ["/abs/x.jpg", "../x.jpg", "cam/../../x.jpg", ""])
def test_job_refuses_paths_outside_the_folder(bad: str) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="relative to the evidence folder"):
        EvidenceJob(bad, "cam/d/x-heatmap.jpg", image, np.zeros((4, 4), np.float32), NORMAL)


# ---------------------------------------------------------------- writer


def frame(seed: int = 0) -> np.ndarray:
    """A smooth gradient with mild noise: realistic for JPEG, so decoded pixels stay close to the original."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack([xs * 200 // WIDTH, ys * 200 // HEIGHT, np.full_like(xs, 120)], axis=2) + 20
    return np.clip(base + rng.integers(-3, 4, size=base.shape), 0, 255).astype(np.uint8)


def hot_map() -> np.ndarray:
    """224x224 map relative to the pixel threshold: low everywhere, a hot square (twice the threshold) in the
    top-left quarter."""
    pixel_map = np.full((224, 224), 0.05, np.float32)
    pixel_map[20:90, 20:90] = 2.0
    return pixel_map


def job(n: int, verdict: VerdictLabel = DEFECT, **overrides: object) -> EvidenceJob:
    paths = evidence_paths("cam1", TS, f"cam1-b00t-{n}", verdict)
    fields: dict[str, object] = {
        "snapshot": paths.snapshot,
        "heatmap": paths.heatmap,
        "image": frame(n),
        "pixel_map": hot_map(),
        "verdict": verdict,
    }
    fields.update(overrides)
    return EvidenceJob(**fields)  # type: ignore[arg-type]


def make_writer(root: Path, queue_size: int = 8, free: list[int] | None = None, **kwargs: object) -> EvidenceWriter:
    free_box = free if free is not None else [PLENTY]
    return EvidenceWriter(
        root, jpeg_quality=90, queue_size=queue_size, free_bytes=lambda: free_box[0], min_free_bytes=1000, **kwargs
    )  # type: ignore[arg-type]


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def gated_writes(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """Slow the writer down at will: each write waits for ``gate``; ``entered`` says a write has begun."""
    gate, entered = threading.Event(), threading.Event()
    real_write = evidence_module.write_image

    def slow_write(path: Path, rgb: np.ndarray, jpeg_quality: int = 90) -> None:
        entered.set()
        assert gate.wait(10), "test never opened the gate"
        real_write(path, rgb, jpeg_quality)

    monkeypatch.setattr(evidence_module, "write_image", slow_write)
    return gate, entered


def test_writer_writes_frame_and_overlay_atomically(tmp_path: Path) -> None:
    writer = make_writer(tmp_path)
    writer.start()
    the_job = job(1)
    assert writer.submit(the_job)
    assert writer.stop(timeout=10)

    snapshot, heatmap = read_rgb(tmp_path / the_job.snapshot), read_rgb(tmp_path / the_job.heatmap)
    assert snapshot.shape == heatmap.shape == (HEIGHT, WIDTH, 3)
    assert np.abs(snapshot.astype(int) - the_job.image).mean() < 4  # JPEG at quality 90 of the same frame
    diff = np.abs(heatmap.astype(int) - snapshot.astype(int)).sum(axis=2)
    # the hot square maps to rows/cols ~ 20/224..90/224 of the frame; compare its core with a far, cold area
    hot = diff[HEIGHT * 30 // 224 : HEIGHT * 80 // 224, WIDTH * 30 // 224 : WIDTH * 80 // 224].mean()
    cold = diff[HEIGHT * 150 // 224 :, WIDTH * 150 // 224 :].mean()
    assert hot > 60 and hot > 1.5 * cold, (hot, cold)  # the cold area is tinted too, faded
    magenta = (heatmap[:, :, 0] > 200) & (heatmap[:, :, 1] < 90) & (heatmap[:, :, 2] > 200)
    assert magenta[: HEIGHT // 2, : WIDTH // 2].sum() > 200  # the contour around the hot square
    assert magenta[HEIGHT // 2 :, WIDTH // 2 :].sum() == 0
    assert all_files(tmp_path) == sorted([tmp_path / the_job.snapshot, tmp_path / the_job.heatmap])  # no temp files
    assert writer.stats.written == 1 and writer.stats.failed == 0 and writer.stats.dropped == {}


def test_submit_never_blocks_and_counts_queue_full(
    tmp_path: Path, gated_writes: tuple[threading.Event, threading.Event]
) -> None:
    gate, entered = gated_writes
    writer = make_writer(tmp_path, queue_size=2)
    writer.start()
    assert writer.submit(job(0))
    assert entered.wait(5)  # the writer is now stuck inside job 0's write; the queue is empty
    outcomes, durations = [], []
    for the_job in [job(n) for n in range(1, 6)]:
        started = time.perf_counter()
        outcomes.append(writer.submit(the_job))
        durations.append(time.perf_counter() - started)
    assert outcomes == [True, True, False, False, False]
    assert max(durations) < 0.2, durations  # a blocked put would wait for the 10 s gate
    assert writer.stats.dropped == {"queue_full": 3}
    assert writer.stats.queued == 2

    gate.set()
    assert writer.stop(timeout=10)
    assert writer.stats.written == 3 and writer.stats.queued == 0
    assert len(all_files(tmp_path)) == 6


def test_stop_drains_the_queue_then_refuses(
    tmp_path: Path, gated_writes: tuple[threading.Event, threading.Event]
) -> None:
    gate, _ = gated_writes
    writer = make_writer(tmp_path, queue_size=16)
    writer.start()
    jobs = [job(n) for n in range(10)]
    assert all(writer.submit(j) for j in jobs)
    threading.Timer(0.05, gate.set).start()
    assert writer.stop(timeout=10)
    assert writer.stats.written == 10
    for j in jobs:
        assert (tmp_path / j.snapshot).is_file() and (tmp_path / j.heatmap).is_file()
    assert not writer.submit(job(99))
    assert writer.stats.dropped == {"stopped": 1}


def test_submit_before_start_is_refused(tmp_path: Path) -> None:
    writer = make_writer(tmp_path)
    assert not writer.submit(job(1))
    assert writer.stats.dropped == {"stopped": 1}
    assert writer.stop(timeout=1)


def test_disk_low_drops_and_resumes_when_space_returns(tmp_path: Path) -> None:
    free = [10]  # below the 1000-byte watermark
    writer = make_writer(tmp_path, free=free, free_check_interval_s=0.01)
    writer.start()
    assert not writer.submit(job(1))
    assert not writer.submit(job(2))
    assert writer.stats.dropped == {"disk_low": 2}

    free[0] = PLENTY  # retention freed space: the idle writer notices within its check interval
    deadline = time.monotonic() + 5
    while not writer.submit(job(3)):
        assert time.monotonic() < deadline, "writer never noticed the freed space"
        time.sleep(0.01)
    assert writer.stop(timeout=10)
    assert writer.stats.written == 1
    assert writer.stats.dropped["disk_low"] >= 2 and set(writer.stats.dropped) == {"disk_low"}


def test_free_space_is_checked_off_the_scorer_thread(tmp_path: Path) -> None:
    """A hung free-space query stalls the writer, never submit."""
    release, calls = threading.Event(), []

    def hanging_free_bytes() -> int:
        calls.append(threading.current_thread().name)
        if len(calls) > 1:
            release.wait(10)
        return PLENTY

    writer = EvidenceWriter(tmp_path, 90, 1, hanging_free_bytes, 1000, free_check_interval_s=0.01)
    writer.start()
    deadline = time.monotonic() + 5
    while len(calls) < 2:  # the idle writer's refresh is now hanging
        assert time.monotonic() < deadline
        time.sleep(0.005)
    jobs = [job(n) for n in range(3)]
    started = time.perf_counter()
    assert [writer.submit(j) for j in jobs] == [True, False, False]  # queue of 1, nobody taking from it
    assert time.perf_counter() - started < 0.2
    assert calls[1:] and set(calls[1:]) == {"evidence-writer"}
    release.set()
    assert writer.stop(timeout=10)
    assert writer.stats.written == 1


def test_free_space_errors_keep_writing(tmp_path: Path) -> None:
    def broken() -> int:
        raise OSError("statvfs failed")

    writer = EvidenceWriter(tmp_path, 90, 4, broken, 1000)
    writer.start()
    assert writer.submit(job(1))
    assert writer.stop(timeout=10)
    assert writer.stats.written == 1


def test_failed_writes_are_counted_logged_once_per_burst_and_do_not_kill_the_thread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad_map = np.full((224, 224), np.nan, np.float32)
    writer = make_writer(tmp_path)
    writer.start()
    with caplog.at_level(logging.DEBUG, logger="linewatch.sinks.evidence"):
        assert writer.submit(job(1, pixel_map=bad_map))
        assert writer.submit(job(2, image=np.zeros((4, 4), np.uint8)))  # not RGB
        good = job(3)
        assert writer.submit(good)
        assert writer.stop(timeout=10)
    assert writer.stats.failed == 2 and writer.stats.written == 1
    assert (tmp_path / good.heatmap).is_file()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cam1-b00t-1-defect-heatmap.jpg" in warnings[0] and "NaN" in warnings[0]
    assert not [p for p in all_files(tmp_path) if p.name.endswith(".tmp")]


def test_a_vanished_date_folder_is_recreated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention may remove an empty date folder between the writer's mkdir and its open: one retry covers it."""
    real_write, calls = evidence_module.write_image, []

    def racing_write(path: Path, rgb: np.ndarray, jpeg_quality: int = 90) -> None:
        calls.append(path)
        if len(calls) == 1:
            raise FileNotFoundError(path)
        real_write(path, rgb, jpeg_quality)

    monkeypatch.setattr(evidence_module, "write_image", racing_write)
    writer = make_writer(tmp_path)
    writer.start()
    assert writer.submit(job(1))
    assert writer.stop(timeout=10)
    assert writer.stats.written == 1 and writer.stats.failed == 0

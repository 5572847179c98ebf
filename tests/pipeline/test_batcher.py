"""Batcher: pure cut-off table, fake-clock cut-offs, slot policies and drop counts, fairness, stop/close."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from linewatch.clock import FakeClock
from linewatch.pipeline.batcher import Batcher, DropCounts, SlotPolicy, cut_decision
from linewatch.types import Frame

IMAGE = np.zeros((2, 2, 3), dtype=np.uint8)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def frame(camera: str, seq: int, mono: float) -> Frame:
    """A frame captured at ``mono``; tests keep it <= the fake clock's time, as a real reader would."""
    return Frame(
        camera=camera,
        seq=seq,
        captured_at=T0 + timedelta(seconds=mono),
        captured_mono=mono,
        image=IMAGE,
        product="plate",
    )


def ids(frames) -> list[tuple[str, int]]:
    return [(f.camera, f.seq) for f in frames]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(monotonic=1000.0)


@pytest.fixture
def stop() -> threading.Event:
    return threading.Event()


@pytest.mark.parametrize(
    ("pending", "max_size", "oldest", "now", "max_wait", "expected"),
    [
        (0, 4, None, 1000.0, 0.5, None),  # nothing pending
        (0, 4, None, 9999.0, 0.0, None),  # nothing pending, even with no wait
        (1, 4, 1000.0, 1000.0, 0.5, None),  # young frame
        (1, 4, 1000.0, 1000.25, 0.5, None),
        (1, 4, 1000.0, 1000.5, 0.5, "timeout"),  # exactly at the deadline
        (1, 4, 1000.0, 1002.0, 0.5, "timeout"),
        (3, 4, 1000.0, 1000.1, 0.5, None),
        (4, 4, 1000.0, 1000.0, 0.5, "full"),
        (9, 4, 1000.0, 1000.0, 0.5, "full"),
        (4, 4, 1000.0, 1005.0, 0.5, "full"),  # full wins over timeout
        (1, 1, 1000.0, 1000.0, 0.5, "full"),
        (1, 4, 1000.0, 1000.0, 0.0, "timeout"),  # max_wait 0: cut at once
        (1, 4, 1000.0, 1000.05, 0.05, "timeout"),  # a clock advanced by exactly max_wait cuts (floats)
    ],
)
def test_cut_decision_table(pending, max_size, oldest, now, max_wait, expected) -> None:
    assert cut_decision(pending, max_size, oldest, now, max_wait) == expected


@pytest.mark.parametrize(
    ("pending", "waiting", "cameras", "expected"),
    [
        (2, 2, 2, "all_cameras"),  # every camera has contributed: waiting only adds latency
        (3, 1, 2, None),  # one camera still silent: wait for it (up to max_wait)
        (1, 1, 1, "all_cameras"),  # a single camera's frame goes at once
        (1, 0, 0, None),  # no registered camera: the rule does not apply
        (4, 2, 2, "full"),  # full still wins
    ],
)
def test_cut_when_every_camera_has_a_frame(pending, waiting, cameras, expected) -> None:
    assert cut_decision(pending, 4, 1000.0, 1000.0, 0.5, waiting, cameras) == expected


@pytest.mark.parametrize(("max_size", "max_wait"), [(0, 0.1), (-1, 0.1), (1, -0.01)])
def test_invalid_batcher_settings(clock, max_size, max_wait) -> None:
    with pytest.raises(ValueError, match="max_size" if max_size < 1 else "max_wait_s"):
        Batcher(max_size, max_wait, clock)


def test_invalid_camera_settings(clock) -> None:
    b = Batcher(4, 0.5, clock)
    with pytest.raises(ValueError, match="queue_size"):
        b.add_camera("a", SlotPolicy.QUEUE, queue_size=0)
    b.add_camera("a", SlotPolicy.LATEST)
    with pytest.raises(ValueError, match="already registered"):
        b.add_camera("a", SlotPolicy.QUEUE)


def test_full_cut_at_max_size(clock, stop) -> None:
    b = Batcher(3, 10.0, clock)
    b.add_camera("a", SlotPolicy.QUEUE, queue_size=10)
    for i in range(1, 5):
        b.put(frame("a", i, 1000.0))
    batch = b.next_batch(stop)
    assert batch is not None
    assert batch.reason == "full"
    assert ids(batch.frames) == [("a", 1), ("a", 2), ("a", 3)]
    assert b.pending() == 1


def test_timeout_cut_with_fake_clock(clock, stop) -> None:
    b = Batcher(8, 0.5, clock)
    b.add_camera("a", SlotPolicy.QUEUE, queue_size=8)
    b.put(frame("a", 1, clock.monotonic()))
    clock.advance(0.25)
    b.put(frame("a", 2, clock.monotonic()))
    clock.advance(0.25)  # the first frame has now waited exactly max_wait
    batch = b.next_batch(stop)
    assert batch is not None
    assert batch.reason == "timeout"
    assert ids(batch.frames) == [("a", 1), ("a", 2)]
    assert b.pending() == 0


def test_timeout_cut_when_clock_advanced_by_another_thread(clock, stop) -> None:
    b = Batcher(8, 0.5, clock)
    b.add_camera("a", SlotPolicy.QUEUE, queue_size=8)
    b.add_camera("idle", SlotPolicy.LATEST)  # a silent camera keeps the all-cameras cut from firing
    b.put(frame("a", 1, clock.monotonic()))
    result: list = []
    consumer = threading.Thread(target=lambda: result.append(b.next_batch(stop, poll_s=0.001)))
    consumer.start()
    clock.advance(0.5)
    consumer.join(timeout=5)
    assert not consumer.is_alive()
    assert result[0].reason == "timeout"


def test_put_wakes_a_waiting_consumer_for_a_full_batch(clock, stop) -> None:
    b = Batcher(2, 60.0, clock)
    b.add_camera("a", SlotPolicy.QUEUE, queue_size=4)
    b.add_camera("idle", SlotPolicy.LATEST)  # a silent camera keeps the all-cameras cut from firing
    b.put(frame("a", 1, 1000.0))
    result: list = []
    consumer = threading.Thread(target=lambda: result.append(b.next_batch(stop)))
    consumer.start()
    b.put(frame("a", 2, 1000.0))
    consumer.join(timeout=5)
    assert not consumer.is_alive()
    assert result[0].reason == "full"
    assert ids(result[0].frames) == [("a", 1), ("a", 2)]


@pytest.mark.parametrize("queue_size", [1, 8])  # latest is always one frame; queue_size is ignored
def test_latest_policy_replaces_and_counts(clock, stop, queue_size) -> None:
    b = Batcher(4, 0.0, clock)
    b.add_camera("a", SlotPolicy.LATEST, queue_size=queue_size)
    for i in range(1, 4):
        b.put(frame("a", i, 990.0 + i))
    assert b.pending() == 1
    assert b.drops() == {("a", "replaced"): 2}
    batch = b.next_batch(stop)
    assert batch is not None
    assert ids(batch.frames) == [("a", 3)]


def test_queue_policy_drops_oldest_and_counts(clock, stop) -> None:
    b = Batcher(8, 0.0, clock)
    b.add_camera("a", SlotPolicy.QUEUE, queue_size=3)
    for i in range(1, 6):
        b.put(frame("a", i, 990.0 + i))
    assert b.drops() == {("a", "queue_full"): 2}
    batch = b.next_batch(stop)
    assert batch is not None
    assert ids(batch.frames) == [("a", 3), ("a", 4), ("a", 5)]


def test_fairness_slow_camera_not_starved(clock, stop) -> None:
    b = Batcher(4, 0.0, clock)
    b.add_camera("a", SlotPolicy.QUEUE, queue_size=16)
    b.add_camera("b", SlotPolicy.QUEUE, queue_size=16)
    for i in range(1, 11):
        b.put(frame("a", i, 990.0 + i * 0.01))
    for i in range(1, 3):
        b.put(frame("b", i, 990.5 + i * 0.01))
    first = b.next_batch(stop)
    assert first is not None
    assert first.reason == "full"
    assert ids(first.frames) == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    second = b.next_batch(stop)
    assert second is not None
    assert ids(second.frames) == [("a", 3), ("a", 4), ("a", 5), ("a", 6)]


def test_round_robin_starts_after_previous_leader(clock, stop) -> None:
    b = Batcher(2, 0.0, clock)
    for cam in ("a", "b", "c"):
        b.add_camera(cam, SlotPolicy.QUEUE, queue_size=8)
        for i in range(1, 3):
            b.put(frame(cam, i, 990.0 + i))
    leaders = []
    for _ in range(3):
        batch = b.next_batch(stop)
        assert batch is not None
        leaders.append(ids(batch.frames))
    assert leaders == [[("a", 1), ("b", 1)], [("b", 2), ("c", 1)], [("c", 2), ("a", 2)]]


def test_capture_order_kept_per_camera(clock, stop) -> None:
    b = Batcher(3, 0.0, clock)
    b.add_camera("a", SlotPolicy.QUEUE, queue_size=32)
    b.add_camera("b", SlotPolicy.QUEUE, queue_size=32)
    for i in range(1, 11):
        b.put(frame("a", i, 990.0 + i))
        if i % 3 == 0:
            b.put(frame("b", i, 990.0 + i))
    seen: dict[str, list[int]] = {"a": [], "b": []}
    stop.set()
    while (batch := b.next_batch(stop)) is not None:
        for f in batch.frames:
            seen[f.camera].append(f.seq)
    assert seen == {"a": list(range(1, 11)), "b": [3, 6, 9]}


def test_unknown_camera_counted(clock) -> None:
    b = Batcher(4, 0.5, clock)
    b.add_camera("a", SlotPolicy.LATEST)
    b.put(frame("ghost", 1, 1000.0))
    b.put(frame("ghost", 2, 1000.0))
    assert b.pending() == 0
    assert b.drops() == {("ghost", "unknown_camera"): 2}


def test_stop_drains_pending_in_max_size_batches(clock, stop) -> None:
    b = Batcher(2, 60.0, clock)
    b.add_camera("a", SlotPolicy.QUEUE, queue_size=8)
    b.add_camera("b", SlotPolicy.LATEST)
    b.put(frame("a", 1, 1000.0))
    b.put(frame("a", 2, 1000.1))
    b.put(frame("b", 1, 1000.2))
    b.put(frame("a", 3, 1000.3))
    stop.set()
    batches = []
    while (batch := b.next_batch(stop)) is not None:
        batches.append(batch)
    assert [x.reason for x in batches] == ["drain", "drain"]
    assert sorted(ids(f for x in batches for f in x.frames)) == [("a", 1), ("a", 2), ("a", 3), ("b", 1)]


def test_stop_with_nothing_pending_returns_none(clock, stop) -> None:
    b = Batcher(2, 0.5, clock)
    b.add_camera("a", SlotPolicy.LATEST)
    stop.set()
    assert b.next_batch(stop) is None


def test_stop_set_by_another_thread_ends_the_wait(clock, stop) -> None:
    b = Batcher(4, 60.0, clock)
    b.add_camera("a", SlotPolicy.QUEUE, queue_size=4)
    b.add_camera("idle", SlotPolicy.LATEST)  # a silent camera keeps the all-cameras cut from firing
    b.put(frame("a", 1, 1000.0))
    result: list = []
    consumer = threading.Thread(target=lambda: result.append(b.next_batch(stop, poll_s=0.001)))
    consumer.start()
    stop.set()
    consumer.join(timeout=5)
    assert not consumer.is_alive()
    assert result[0].reason == "drain"
    assert ids(result[0].frames) == [("a", 1)]


def test_close_returns_pending_and_refuses_more(clock, stop) -> None:
    b = Batcher(8, 60.0, clock)
    b.add_camera("a", SlotPolicy.QUEUE, queue_size=8)
    b.add_camera("b", SlotPolicy.LATEST)
    b.put(frame("a", 1, 1000.0))
    b.put(frame("b", 1, 1000.1))
    b.put(frame("a", 2, 1000.2))
    left = b.close()
    assert ids(left) == [("a", 1), ("b", 1), ("a", 2)]  # oldest capture first
    assert b.pending() == 0
    assert b.drops() == {}
    b.put(frame("a", 3, 1000.3))
    assert b.drops() == {("a", "stopped"): 1}
    assert b.pending() == 0
    assert b.next_batch(stop) is None  # closed: returns at once, stop not set


def test_close_can_count_stopped(clock) -> None:
    b = Batcher(8, 60.0, clock)
    b.add_camera("a", SlotPolicy.QUEUE, queue_size=8)
    b.put(frame("a", 1, 1000.0))
    b.put(frame("a", 2, 1000.1))
    assert len(b.close(count_stopped=True)) == 2
    assert b.drops() == {("a", "stopped"): 2}


def test_close_wakes_a_waiting_consumer(clock, stop) -> None:
    b = Batcher(4, 60.0, clock)
    b.add_camera("a", SlotPolicy.QUEUE, queue_size=4)
    result: list = []
    consumer = threading.Thread(target=lambda: result.append(b.next_batch(stop, poll_s=0.001)))
    consumer.start()
    b.close()
    consumer.join(timeout=5)
    assert not consumer.is_alive()
    assert result == [None]


def test_drop_counts_totals() -> None:
    d = DropCounts()
    d.add("a", "replaced")
    d.add("a", "replaced", 2)
    d.add("b", "queue_full")
    d.add("b", "stopped", 0)
    assert d.snapshot() == {("a", "replaced"): 3, ("b", "queue_full"): 1}
    assert d.total() == 4
    assert d.total("replaced") == 3


def test_producers_and_consumer_deliver_every_frame_once() -> None:
    """Real threads: two producers, one consumer; queues big enough, so nothing is dropped."""
    clock = FakeClock(monotonic=1000.0)
    b = Batcher(4, 0.0, clock)
    per_camera = 50
    cameras = ("a", "b")
    for cam in cameras:
        b.add_camera(cam, SlotPolicy.QUEUE, queue_size=per_camera)

    def produce(cam: str) -> None:
        for i in range(1, per_camera + 1):
            b.put(frame(cam, i, 1000.0))

    received: list[tuple[str, int]] = []
    producers_done = threading.Event()

    def consume() -> None:
        while True:
            batch = b.next_batch(producers_done, poll_s=0.001)
            if batch is None:
                return
            assert 1 <= len(batch) <= 4
            received.extend(ids(batch.frames))

    consumer = threading.Thread(target=consume)
    producers = [threading.Thread(target=produce, args=(cam,)) for cam in cameras]
    consumer.start()
    for p in producers:
        p.start()
    for p in producers:
        p.join(timeout=5)
    producers_done.set()  # the consumer drains what is left, then gets None
    consumer.join(timeout=5)
    assert not consumer.is_alive()
    assert sorted(received) == sorted((cam, i) for cam in cameras for i in range(1, per_camera + 1))
    for cam in cameras:
        assert [s for c, s in received if c == cam] == list(range(1, per_camera + 1))
    assert b.drops() == {}

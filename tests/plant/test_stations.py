"""A station's part verdict from its cameras' frame verdicts: the worst of them, or incomplete at the deadline."""

from __future__ import annotations

from datetime import timedelta

import pytest

from linewatch.clock import FakeClock
from linewatch.config import StationSection
from linewatch.plant.stations import StationTracker
from linewatch.types import Verdict, VerdictLabel

STATION = StationSection(name="st1", cameras=["top", "side"], deadline_ms=500)


def verdict(camera: str, part_id: str | None, label: VerdictLabel = VerdictLabel.NORMAL, score: float = 0.3) -> Verdict:
    clock = FakeClock()
    return Verdict(f"{camera}-{part_id}", camera, "bracket", 1, clock.now(), 0.0, score, 0.5, label, "v1", part_id)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_a_part_is_judged_once_every_camera_reported_as_the_worst_of_them(clock: FakeClock) -> None:
    tracker = StationTracker([STATION], clock)
    tracker.open("st1", "P-1")
    tracker.open("st1", "P-2")
    assert tracker.observe([verdict("top", "P-1"), verdict("top", "P-2", VerdictLabel.DEFECT, 0.9)]) == []
    first, second = tracker.observe([verdict("side", "P-1"), verdict("side", "P-2")])
    assert (first.part_id, first.verdict, first.inspections) == ("P-1", "OK", ("top-P-1", "side-P-1"))
    assert first.reason == "normal on all 2 cameras" and first.score == pytest.approx(0.6)
    assert (second.verdict, second.score) == ("NOK", pytest.approx(1.8))
    assert second.reason == "defect on top (score 0.9000 > 0.5000)"
    assert tracker.next_deadline() is None


def test_a_missing_camera_makes_the_part_incomplete_at_the_deadline_and_late_frames_change_nothing(
    clock: FakeClock,
) -> None:
    tracker = StationTracker([STATION], clock)
    tracker.open("st1", "P-1")
    tracker.observe([verdict("top", "P-1", VerdictLabel.DEFECT, 0.7)])
    clock.advance(0.4)
    assert tracker.expire() == []
    clock.advance(0.2)
    (part,) = tracker.expire()
    assert part.verdict == "incomplete" and part.reason == "no frame from side within 500 ms; defect on top"
    assert tracker.observe([verdict("side", "P-1")]) == [] and tracker.late_frames == 1
    assert tracker.next_deadline() is None


def test_a_trigger_twice_or_for_an_unknown_station_is_refused_and_a_frame_can_open_its_part(clock: FakeClock) -> None:
    tracker = StationTracker([STATION], clock)
    tracker.open("st1", "P-1")
    with pytest.raises(ValueError, match="still being inspected"):
        tracker.open("st1", "P-1")
    with pytest.raises(ValueError, match="no station 'st9'"):
        tracker.open("st9", "P-2")
    assert tracker.observe([verdict("top", "SN-7")]) == []  # a folder camera's new part id opens its part
    assert tracker.open_parts("st1") == 2
    assert tracker.observe([verdict("side", "SN-7"), verdict("other", "SN-7"), verdict("top", None)])[0].verdict == "OK"
    clock.advance(timedelta(seconds=1).total_seconds())
    assert [p.part_id for p in tracker.expire()] == ["P-1"]

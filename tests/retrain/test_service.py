"""The schedule and the on-demand requests: one run at a time, coalesced, refused when disabled or stopping."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from linewatch.clock import FakeClock
from linewatch.config import RetrainSection
from linewatch.retrain.runner import RetrainOutcome
from linewatch.retrain.service import JOB_ID, RetrainService


class SlowRetrainer:
    """Stands in for Retrainer.run: blocks until released, counts the runs and who asked."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.triggers: list[str] = []

    def run(self, trigger: str) -> RetrainOutcome:
        self.triggers.append(trigger)
        self.release.wait(timeout=30)
        return RetrainOutcome("skipped", "nothing to do")

    def record_active(self, _path: Path, _metrics: object, _refresh: bool) -> bool:
        """The service puts the active version on record at start; nothing to record here (a store that
        answers)."""
        return True


def test_requests_run_one_at_a_time_and_report_their_outcome() -> None:
    retrainer = SlowRetrainer()
    service = RetrainService(RetrainSection(schedule=""), retrainer)  # type: ignore[arg-type]
    service.start(Path("unused"))
    try:
        assert service.next_run_time() is None  # on demand only
        assert service.request("mqtt") == {"status": "started", "trigger": "mqtt"}
        assert service.request("http")["status"] == "busy"  # queued or running: a second is refused
        retrainer.release.set()
        outcome = service.wait(timeout=10)
        assert outcome is not None and outcome.status == "skipped"
        assert service.request("cli")["status"] == "started"  # free again once the first ended
        service.wait(timeout=10)
        assert retrainer.triggers == ["mqtt", "cli"]
    finally:
        service.stop()
    assert service.request("mqtt")["status"] == "refused"


def test_disabled_retraining_refuses_requests_and_schedules_nothing() -> None:
    retrainer = SlowRetrainer()
    service = RetrainService(RetrainSection(enabled=False), retrainer)  # type: ignore[arg-type]
    service.start(Path("unused"))
    assert service.request("mqtt") == {"status": "disabled", "reason": "[retrain] enabled = false"}
    assert service.next_run_time() is None and retrainer.triggers == []
    service.stop()


def test_the_cron_job_is_single_coalesced_and_has_a_misfire_grace() -> None:
    settings = RetrainSection(schedule="30 2 * * 1-5", timezone="Europe/Berlin", misfire_grace_s=900)
    service = RetrainService(settings, SlowRetrainer())  # type: ignore[arg-type]
    service.start(Path("unused"))
    try:
        assert service._scheduler is not None
        job: Any = service._scheduler.get_job(JOB_ID)
        assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 900)
        friday_noon = datetime(2026, 11, 27, 12, tzinfo=ZoneInfo("Europe/Berlin"))
        when = job.trigger.get_next_fire_time(None, friday_noon)
        assert (when.strftime("%a %H:%M"), str(when.tzinfo)) == ("Mon 02:30", "Europe/Berlin")  # crontab's 1-5
        assert service.next_run_time() == job.next_run_time.isoformat()
    finally:
        service.stop()


class Recorder(SlowRetrainer):
    """Runs at once; records which versions were put on record and which runs were asked for."""

    def __init__(self, now: datetime) -> None:
        super().__init__()
        self.release.set()
        self.clock = FakeClock(now)
        self.recorded: list[Path] = []

    def record_active(self, path: Path, _metrics: object, _refresh: bool) -> bool:
        self.recorded.append(path)
        return True


@pytest.mark.parametrize(
    ("last_scheduled", "caught_up"),
    [
        (datetime(2026, 11, 26, 3, 30, 5, tzinfo=UTC), True),  # ran Thursday; Friday 03:30 missed, 1.5 h ago
        (datetime(2026, 11, 27, 3, 30, 5, tzinfo=UTC), False),  # Friday's ran; the next is tomorrow
        (datetime(2026, 11, 25, 3, 30, 5, tzinfo=UTC), True),  # two missed: one run, not two
        (None, False),  # never ran on schedule (a new line, or the store is down): wait for the schedule
    ],
)
def test_a_run_missed_while_down_is_caught_up_once_within_the_grace(
    last_scheduled: datetime | None, caught_up: bool
) -> None:
    retrainer = Recorder(datetime(2026, 11, 27, 5, 0, tzinfo=UTC))
    settings = RetrainSection(schedule="30 3 * * *", timezone="UTC", misfire_grace_s=3 * 3600)
    service = RetrainService(settings, retrainer, lambda: last_scheduled)  # type: ignore[arg-type]
    service.start(Path("models/line1/v7"))
    service.settle(timeout=10)
    service.stop()
    assert retrainer.recorded == [Path("models/line1/v7")]  # the active version goes on record at start
    assert retrainer.triggers == (["schedule"] if caught_up else [])


def test_a_missed_run_beyond_the_grace_is_left_to_the_schedule() -> None:
    retrainer = Recorder(datetime(2026, 11, 27, 9, 0, tzinfo=UTC))  # 5.5 h after Friday's 03:30
    settings = RetrainSection(schedule="30 3 * * *", timezone="UTC", misfire_grace_s=3600)
    last = datetime(2026, 11, 26, 3, 30, 5, tzinfo=UTC)
    service = RetrainService(settings, retrainer, lambda: last)  # type: ignore[arg-type]
    service.start(Path("v1"))
    service.settle(timeout=10)
    service.stop()
    assert retrainer.triggers == []

"""The P/stats counters: frames per camera and verdicts per product, since the start, published on a timer."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from linewatch.sinks.mqtt_stats import STATS_FIELDS, LineStats, report_every
from linewatch.types import VerdictLabel
from tests.sinks.test_mqtt_forwarder import verdict

T0 = datetime(2026, 12, 4, 6, 0, tzinfo=UTC)


def test_counts_grow_per_camera_and_per_product_and_verdict() -> None:
    stats = LineStats("plant", "line1", T0)
    stats.observe([verdict("cam1", 1), verdict("cam1", 2, VerdictLabel.DEFECT), verdict("cam_2", 1)])
    stats.observe([verdict("cam1", 3)])
    message = stats.message(T0 + timedelta(minutes=1))
    assert tuple(message) == STATS_FIELDS
    assert message["since"] == "2026-12-04T06:00:00.000000Z" and message["at"] == "2026-12-04T06:01:00.000000Z"
    assert message["frames"] == {"cam1": 3, "cam_2": 1}
    assert message["verdicts"] == {"metal plate": {"normal": 3, "defect": 1}}
    assert LineStats("plant", "line1", T0).message(T0)["verdicts"] == {}  # nothing scored yet: nothing listed


def test_the_reporter_publishes_on_its_interval_until_stopped() -> None:
    stats = LineStats("plant", "line1", T0)
    published: list[dict] = []
    stop = threading.Event()
    thread = threading.Thread(target=report_every, args=(0.05, stop, stats, lambda: T0, published.append))
    thread.start()
    stats.observe([verdict("cam1", 1)])
    deadline = time.monotonic() + 10
    while len(published) < 3 and time.monotonic() < deadline:
        stop.wait(0.01)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and published[-1]["frames"] == {"cam1": 1}

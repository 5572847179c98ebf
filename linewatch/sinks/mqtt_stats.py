"""The periodic counters message on ``P/stats`` (``[mqtt] stats_interval_s``), for SCADA and MES systems that
read MQTT but not Prometheus: frames scored per camera and verdicts per product and verdict, counted since the
daemon started, retained, so a system that connects later reads the latest at once.

Counters only grow (like Prometheus counters); ``since`` says from when, so a consumer takes differences
between two messages for rates and notices a restart when ``since`` changes. The counts are of verdicts the
scorer produced (what the line inspected), published whatever the store's state.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from linewatch.pipeline.journal.records import format_ts
from linewatch.types import Verdict

STATS_FIELDS = ("site", "line", "since", "at", "frames", "verdicts")


class LineStats:
    """Counters of scored verdicts; thread-safe (the scorer thread counts, the reporter thread reads)."""

    def __init__(self, site: str, line: str, since: datetime) -> None:
        self._site, self._line, self._since = site, line, since
        self._lock = threading.Lock()
        self._frames: Counter[str] = Counter()  # camera -> verdicts
        self._verdicts: Counter[tuple[str, str]] = Counter()  # (product, verdict) -> count

    def observe(self, verdicts: Sequence[Verdict]) -> None:
        with self._lock:
            for verdict in verdicts:
                self._frames[verdict.camera] += 1
                self._verdicts[(verdict.product, verdict.label.value)] += 1

    def message(self, now: datetime) -> dict[str, Any]:
        """The document for ``P/stats``: keys STATS_FIELDS; every product lists both verdicts."""
        with self._lock:
            products = sorted({product for product, _ in self._verdicts})
            verdicts = {p: {v: self._verdicts[(p, v)] for v in ("normal", "defect")} for p in products}
            frames = dict(sorted(self._frames.items()))
        return {
            "site": self._site,
            "line": self._line,
            "since": format_ts(self._since),
            "at": format_ts(now),
            "frames": frames,
            "verdicts": verdicts,
        }


def report_every(
    interval_s: float,
    stop: threading.Event,
    stats: LineStats,
    now: Callable[[], datetime],
    publish: Callable[[dict[str, Any]], None],
) -> None:
    """Publish ``stats`` every ``interval_s`` until ``stop`` is set (the reporter thread's loop)."""
    while not stop.wait(interval_s):
        publish(stats.message(now()))

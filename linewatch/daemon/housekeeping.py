"""Keeps the journal file bounded on a line that runs for months.

Every record is forwarded within seconds normally, so records every running forwarder has passed are
deleted once older than ``[journal] keep_days`` (kept that long so feedback can still name them). SQLite
reuses the freed pages, so a regularly pruned journal stops growing without a VACUUM (which would need
as much free disk again as the file holds).

When a sink stays down for days the undelivered records pile up. Below the free-disk watermark the
oldest records go even undelivered, as many as were appended since the last check, so the file stops
growing and inspection goes on; what was dropped is counted and logged. A full disk would stop the
journal itself, and with it every verdict.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import timedelta

from linewatch.clock import Clock
from linewatch.pipeline.journal.outbox import Journal

log = logging.getLogger(__name__)


@dataclass
class KeeperStats:
    pruned: int = 0  # delivered everywhere and older than keep_days
    dropped_undelivered: int = 0  # deleted under disk pressure before every forwarder had them
    failures: int = 0
    last_error: str | None = field(default=None)


def undelivered_to_drop(free_bytes: int, min_free_bytes: int, appended_since_last: int) -> int:
    """How many of the oldest records to drop regardless of delivery: none while the disk has room;
    below the watermark as many as were appended since the last check (at least one), so the file
    stops growing."""
    if free_bytes >= min_free_bytes:
        return 0
    return max(1, appended_since_last)


class JournalKeeper:
    """Prunes ``journal`` every ``interval_s``; ``forwarders`` names the cursors that count (the ones
    running now) and ``free_bytes`` reports free space on the journal's disk."""

    def __init__(
        self,
        journal: Journal,
        clock: Clock,
        forwarders: Collection[str],
        keep_days: float,
        min_free_bytes: int,
        free_bytes: Callable[[], int],
    ) -> None:
        self._journal = journal
        self._clock = clock
        self._forwarders = tuple(forwarders)
        self._keep = timedelta(days=keep_days)
        self._min_free_bytes = min_free_bytes
        self._free_bytes = free_bytes
        self._last_head = journal.head()
        self.stats = KeeperStats()

    def run_once(self) -> None:
        """One pass; never raises (the error is counted and logged once per burst)."""
        try:
            self.stats.pruned += self._journal.prune_delivered(self._clock.now() - self._keep, self._forwarders)
            head = self._journal.head()
            drop = undelivered_to_drop(self._free_bytes(), self._min_free_bytes, head - self._last_head)
            self._last_head = head
            if drop:
                dropped = self._journal.prune_oldest(drop)
                self.stats.dropped_undelivered += dropped
                backlogs = {name: self._journal.backlog(name) for name in self._forwarders}
                log.warning(
                    "disk below the journal watermark: dropped the %d oldest journal records (%d in all); backlogs %s",
                    dropped,
                    self.stats.dropped_undelivered,
                    backlogs,
                )
        except Exception as exc:  # housekeeping must never take the daemon down
            if self.stats.last_error is None:
                log.warning("journal housekeeping failed: %s", exc)
            self.stats.failures += 1
            self.stats.last_error = str(exc)
            return
        self.stats.last_error = None

    def run(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.is_set():
            self.run_once()
            if self._clock.wait(interval_s, stop):
                return

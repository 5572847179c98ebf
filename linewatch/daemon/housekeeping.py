"""Keeps the journal file bounded on a line that runs for months.

Every record is forwarded within seconds normally, so records every running forwarder has passed are
deleted once older than ``[journal] keep_days`` (kept that long so feedback can still name them). SQLite
reuses the freed pages, so a regularly pruned journal stops growing without a VACUUM (which would need
as much free disk again as the file holds).

When a sink stays down for days the undelivered records pile up. Below the free-disk watermark as many
records go as were appended since the last check, so the file stops growing and inspection goes on, and
they go in the order that keeps what matters longest (Journal.prune_for_space): records already delivered
everywhere first, then undelivered normal verdicts, defect verdicts, episode messages, and operator labels
last. Evidence images go before any of them: the evidence watermark is at least the journal's (the config
checks it), so retention deletes images long before the keeper touches a record. Every undelivered record
dropped is counted by class (``linewatch_journal_dropped_total``, ``/healthz``, ``linewatch status``) and
logged. A full disk would stop the journal itself, and with it every verdict.
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
    pruned: int = 0  # delivered everywhere and older than keep_days, or early under disk pressure
    dropped_undelivered: int = 0  # deleted under disk pressure before every forwarder had them
    dropped: dict[str, int] = field(default_factory=dict)  # the same, by DROP_CLASSES name
    dropping: bool = False  # the last pass was below the watermark and had to drop undelivered records
    failures: int = 0
    last_error: str | None = field(default=None)


DEFAULT_WATERMARK_BYTES = 1024 * 2**20
DEFAULT_WATERMARK_SHARE = 0.02


def journal_watermark_bytes(configured_mb: float | None, volume_bytes: int) -> int:
    """The free-disk floor below which records go undelivered: the configured one, else the smaller of
    1 GiB and 2 % of the volume. A fixed 1 GiB on a small volume (an 8 GB card with 30 MB free) would keep
    the keeper dropping all the time, so only about a minute of backlog survived an outage there."""
    if configured_mb is not None:
        return int(configured_mb * 2**20)
    return min(DEFAULT_WATERMARK_BYTES, int(volume_bytes * DEFAULT_WATERMARK_SHARE))


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
            lost: dict[str, int] = {}
            if drop:
                freed = self._journal.prune_for_space(drop, self._forwarders)
                self.stats.pruned += freed.pop("delivered", 0)
                lost = freed
                for name, count in lost.items():
                    self.stats.dropped[name] = self.stats.dropped.get(name, 0) + count
                self.stats.dropped_undelivered += sum(lost.values())
            self.stats.dropping = bool(lost)
            if lost:
                backlogs = {name: self._journal.backlog(name) for name in self._forwarders}
                log.warning(
                    "disk below the journal watermark: dropped %d undelivered journal records %s (%d in all); "
                    "backlogs %s",
                    sum(lost.values()),
                    lost,
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

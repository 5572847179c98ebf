"""A scored batch's way into the journal, and the defined state while the journal cannot take it.

A write that fails (a full disk: SQLITE_FULL, an I/O error) must neither stop scoring nor take the daemon
down. The batch's frames are dropped and counted per camera (``linewatch_frames_dropped_total`` with the
reason ``journal_unwritable``), ``/healthz`` says ``journal not writable`` until a write succeeds again,
and the failure is logged once when it starts and once, with what it cost, when it ends. The next batch
simply tries again, so inspection resumes by itself when space returns.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime

from linewatch.clock import Clock
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import JournalError
from linewatch.types import Event, Verdict

log = logging.getLogger("linewatch.daemon.app")  # the App's record keeping: logged as the App's
DROP_REASON = "journal_unwritable"


class JournalRecorder:
    """Appends batches; remembers whether the last one failed and what failing cost. Thread-safe reads."""

    def __init__(self, journal: Journal, clock: Clock) -> None:
        self.journal = journal
        self._clock = clock
        self._lock = threading.Lock()
        self._dropped: dict[str, int] = {}  # camera -> frames dropped since the start
        self._failing_since: datetime | None = None
        self._error: str | None = None
        self._dropped_in_burst = 0

    def append(self, verdicts: Sequence[Verdict], events: Sequence[Event]) -> bool:
        """One journal transaction; False (and nothing journaled) when the journal refused it."""
        try:
            self.journal.append_batch(verdicts, events)
        except JournalError as problem:
            with self._lock:
                first = self._failing_since is None
                if first:
                    self._failing_since = self._clock.now()
                self._error = str(problem)
                self._dropped_in_burst += len(verdicts)
                for verdict in verdicts:
                    self._dropped[verdict.camera] = self._dropped.get(verdict.camera, 0) + 1
            if first:
                log.error("journal not writable (%s): scoring goes on, its frames are dropped and counted", problem)
            return False
        if self._failing_since is not None:
            with self._lock:
                since, lost = self._failing_since, self._dropped_in_burst
                self._failing_since, self._error, self._dropped_in_burst = None, None, 0
            log.warning("journal writable again (failing since %s): %d frame(s) were dropped", since.isoformat(), lost)
        return True

    @property
    def error(self) -> str | None:
        """Why the last write failed, while the journal is not writable; None when it is."""
        with self._lock:
            return self._error

    def dropped(self) -> dict[tuple[str, str], int]:
        """(camera, reason) -> frames dropped because the journal could not take them."""
        with self._lock:
            return {(camera, DROP_REASON): count for camera, count in self._dropped.items()}

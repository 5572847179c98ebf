"""Forwarders: the journal's consumers, each driven in commit order from its own cursor.

A :class:`ForwarderRunner` reads what its forwarder has not delivered yet, hands it over, and moves the
cursor past the delivered prefix; on a failure it backs off and offers the same records again. So after a
crash or an outage every sink replays from where it stopped: nothing is lost, nothing is reordered, and
delivery is at least once (sinks dedupe on the record key).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from linewatch.backoff import backoff_delay
from linewatch.clock import Clock
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import JournalError, JournalRecord


class Forwarder(Protocol):
    """A sink fed from the journal. ``send`` returns how many leading records were delivered (0..len); it may
    raise. Records after the delivered prefix are offered again, in the same order, after a backoff, so a
    forwarder must be idempotent on ``(kind, key)``."""

    name: str
    kinds: Collection[str] | None

    def send(self, records: Sequence[JournalRecord]) -> int: ...


@dataclass
class RunnerStats:
    delivered: int = 0
    failures: int = 0  # exceptions, partial sends and journal errors, all counted
    last_error: str | None = None


class ForwarderRunner:
    """Drives one forwarder from the journal in order: read_after -> send -> mark_done(last delivered); on an
    exception or a partial send, back off (exponential, min/max seconds) and retry the same records — never
    skip, never reorder.

    A forwarder with a ``kinds`` filter still moves its cursor over records it does not want: when a read came
    back short (so it saw everything up to the head taken before the read), the cursor goes to that head, and
    the backlog of a caught-up filtered forwarder is 0."""

    def __init__(
        self,
        journal: Journal,
        forwarder: Forwarder,
        stop: threading.Event,
        clock: Clock,
        batch_size: int = 64,
        idle_s: float = 0.2,
        backoff_min_s: float = 0.5,
        backoff_max_s: float = 30.0,
        start_at_head: bool = False,
        wake: threading.Event | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 < backoff_min_s <= backoff_max_s:
            raise ValueError(f"need 0 < backoff_min_s <= backoff_max_s, got {backoff_min_s}, {backoff_max_s}")
        self.journal = journal
        self.forwarder = forwarder
        self.name = forwarder.name
        self.stats = RunnerStats()
        self._stop = stop
        self._clock = clock
        self._batch_size = batch_size
        self._idle_s = idle_s
        self._backoff = (backoff_min_s, backoff_max_s)
        self._failing = 0  # consecutive failed cycles
        self._more = False  # the last cycle filled a whole batch: read again without idling
        self._log = logging.getLogger(f"linewatch.forwarder.{self.name}")
        # Set by the journal after each commit (Journal.appended): an idle runner sends a new record at once
        # instead of at its next poll (an alert, a part verdict the PLC waits for). Without it: polls only.
        self._wake = wake
        if wake is not None:
            journal.appended.append(wake)
        journal.register_forwarder(self.name, start_at_head)

    @property
    def failing(self) -> bool:
        """The last attempt failed and the runner is backing off (health checks read it)."""
        return self._failing > 0

    @property
    def next_delay_s(self) -> float:
        """How long ``run`` waits before the next cycle: a backoff while failing, 0 with more to read, else idle."""
        if self._failing:
            return backoff_delay(self._failing - 1, *self._backoff)
        return 0.0 if self._more else self._idle_s

    def run_once(self) -> int:
        """One read/send/mark cycle; returns how many records were delivered. Never raises."""
        self._more = False
        try:
            head = self.journal.head()  # before the read: the read sees at least up to here
            records = self.journal.read_after(self.name, self._batch_size, self.forwarder.kinds)
        except Exception as exc:
            self._failed(f"journal read: {type(exc).__name__}: {exc}")
            return 0
        sent = 0
        try:
            if records:
                sent = self.forwarder.send(records)
                if isinstance(sent, bool) or not isinstance(sent, int) or not 0 <= sent <= len(records):
                    raise ValueError(f"send returned {sent!r} for {len(records)} records")
        except Exception as exc:
            self._failed(f"send: {type(exc).__name__}: {exc}")
            return 0
        try:
            if sent:
                self.journal.mark_done(self.name, records[sent - 1].position)
                self.stats.delivered += sent
            if sent < len(records):
                self._failed(f"partial send: {sent} of {len(records)} records delivered")
                return sent
            if len(records) < self._batch_size:
                # Everything of our kinds up to `head` was in this read: skip the rest (other kinds).
                if head > self.journal.cursor(self.name):
                    self.journal.mark_done(self.name, head)
            else:
                self._more = True
        except Exception as exc:  # delivered but not marked: they will be sent again (at least once)
            self._failed(f"journal mark: {type(exc).__name__}: {exc}")
            return sent
        if self._failing:
            self._log.info("forwarder %s recovered after %d failed attempts", self.name, self._failing)
            self._failing = 0
        return sent

    def run(self) -> None:
        """Loop until stop; then flush what is there (best effort: up to the head at stop, until a failure)."""
        while not self._stop.is_set():
            self.run_once()
            delay = self.next_delay_s
            if delay > 0 and self._idle(delay):
                break
        self.flush()

    def _idle(self, delay: float) -> bool:
        """Wait ``delay`` (a backoff, or the idle poll that a new record cuts short); True once stopped. The
        wake is cleared after the wait, before the next read: a commit after that read sets it again, so
        none is missed."""
        if self._wake is None or self._failing:
            return self._clock.wait(delay, self._stop)
        self._wake.wait(delay)
        self._wake.clear()
        return self._stop.is_set()

    def flush(self) -> None:
        """Cycle without waiting until the cursor reaches the current head or a cycle fails or comes back short."""
        try:
            target = self.journal.head()
            while True:
                self.run_once()
                if self._failing or not self._more or self.journal.cursor(self.name) >= target:
                    return
        except JournalError as exc:
            self._failed(f"journal read: {exc}")

    def start(self) -> threading.Thread:
        """Run in a daemon thread; the owner sets the stop event and joins it."""
        thread = threading.Thread(target=self.run, name=f"forwarder-{self.name}", daemon=True)
        thread.start()
        return thread

    def _failed(self, message: str) -> None:
        self._failing += 1
        self.stats.failures += 1
        self.stats.last_error = message
        delay = backoff_delay(self._failing - 1, *self._backoff)
        # Logged once per burst; the count and the last error are in the stats.
        level = logging.WARNING if self._failing == 1 else logging.DEBUG
        self._log.log(level, "forwarder %s failed (%s); retrying in %.1f s", self.name, message, delay)


class LoggingForwarder:
    """Logs one concise INFO line per record to ``linewatch.forwarder.log``. Useful on the bench and as the
    simplest example of the Forwarder protocol."""

    kinds: Collection[str] | None = None

    def __init__(self, name: str = "log") -> None:
        self.name = name
        self._log = logging.getLogger("linewatch.forwarder.log")

    def send(self, records: Sequence[JournalRecord]) -> int:
        for record in records:
            self._log.info("%s", describe_record(record))
        return len(records)


def describe_record(record: JournalRecord) -> str:
    payload = record.payload
    what = f"type={payload.get('type')} " if record.kind == "event" else ""
    return (
        f"#{record.position} {record.camera} {record.kind} {record.key} {what}"
        f"score={_number(payload.get('score'))} threshold={_number(payload.get('threshold'))} "
        f"verdict={payload.get('label')}"
    )


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)

"""When retraining runs: the cron schedule (APScheduler 3) and on-demand requests (MQTT, HTTP, CLI).

All of them end in :meth:`Retrainer.run`, which holds the registry's training lock (across processes),
so two triggers at once never train twice. Here, the scheduled job runs in the scheduler's thread with
``max_instances=1`` and ``coalesce`` (fire times that pile up while a run is late collapse into one,
started if no later than ``misfire_grace_s``), requests queue on one worker thread, and either answers
``busy`` while the other is going.

APScheduler's memory job store forgets fire times across restarts, so a run missed while the daemon was
down is caught up here: at start, if the first fire time after the last scheduled run (from the store)
has passed within ``misfire_grace_s``, one run is requested.

At start the active version is recorded in the store; while the store is down, a background thread keeps
trying (with backoff) until it answers, recording whatever version is active by then.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from linewatch.backoff import backoff_delay
from linewatch.config import RetrainSection
from linewatch.cron import cron_trigger
from linewatch.retrain.runner import Retrainer, RetrainOutcome

log = logging.getLogger(__name__)
JOB_ID = "linewatch-retrain"
MAX_MISSED_FIRES = 100_000  # a minutely schedule down for two months; beyond, the catch-up is given up
RECORD_RETRY_S = (1.0, 60.0)  # backoff while the store cannot record the active version


class RetrainService:
    """``last_scheduled()`` gives the start of the last scheduled run on record (None if none or unknown)."""

    def __init__(
        self,
        settings: RetrainSection,
        retrainer: Retrainer,
        last_scheduled: Callable[[], datetime | None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.retrainer = retrainer
        self._last_scheduled = last_scheduled
        self._scheduler: BackgroundScheduler | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrain")
        self._lock = threading.Lock()
        self._running = False  # a scheduled or requested run is going
        self._pending: Future[RetrainOutcome] | None = None
        self._startup: list[Future[Any]] = []
        self._stopped = threading.Event()
        self._recorder: threading.Thread | None = None

    def start(self, active: Path, bookkeeping: Callable[[], None] | None = None) -> None:
        """Record the active version in the store and run ``bookkeeping`` (on the worker: a store that is down
        must not delay the start), then schedule, and catch up a run the daemon missed while it was down."""
        self._startup = [self._worker.submit(self._record_active, active)]
        if bookkeeping is not None:
            self._startup.append(self._worker.submit(bookkeeping))
        settings = self.settings
        if not settings.enabled or not settings.schedule:
            log.info("retraining: %s", "disabled" if not settings.enabled else "on demand only (no schedule)")
            return
        timezone = settings.timezone
        trigger = cron_trigger(settings.schedule, timezone)
        scheduler = BackgroundScheduler(timezone=timezone) if timezone else BackgroundScheduler()
        scheduler.add_job(
            self._scheduled,
            trigger,
            id=JOB_ID,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=settings.misfire_grace_s,
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info("retraining scheduled %r, next run %s", settings.schedule, self.next_run_time())
        self._startup.append(self._worker.submit(self._catch_up, trigger))

    def _record_active(self, active: Path) -> None:
        if not self.retrainer.record_active(active, None, False):
            self._recorder = threading.Thread(target=self._record_when_back, name="retrain-record", daemon=True)
            self._recorder.start()

    def _record_when_back(self) -> None:
        """Until the store answers: the version active by then (a rollback may have come meanwhile)."""
        attempt = 0
        while not self.retrainer.clock.wait(backoff_delay(attempt, *RECORD_RETRY_S), self._stopped):
            attempt += 1
            active = self.retrainer.registry.active()
            if self.retrainer.record_active(active, None, False, report=False):
                log.info("retraining: the store answers again; model %s recorded as active", active.name)
                return

    def _catch_up(self, trigger: CronTrigger) -> None:
        previous = self._last_scheduled()
        if previous is None:
            return  # never ran on schedule (a new line) or the store is down: wait for the next fire time
        now = self.retrainer.clock.now()
        due = trigger.get_next_fire_time(None, previous + timedelta(seconds=1))
        for _ in range(MAX_MISSED_FIRES):  # the latest fire time that passed: several missed make one run
            later = None if due is None else trigger.get_next_fire_time(due, due + timedelta(seconds=1))
            if later is None or later > now:
                break
            due = later
        if due is not None and due <= now and (now - due).total_seconds() <= self.settings.misfire_grace_s:
            if not self._claim():
                return  # a request got in first: that run is the catch-up
            log.info("retraining: the run due at %s was missed while the daemon was down; running it now", due)
            self._requested("schedule")  # here, on the worker: a queued job would be cancelled by a stop

    def settle(self, timeout: float | None = None) -> None:
        """Wait for the start-up work (store bookkeeping, a catch-up run) to end (tests, benchmarks)."""
        for future in self._startup:
            future.result(timeout=timeout)

    def next_run_time(self) -> str | None:
        job = self._scheduler.get_job(JOB_ID) if self._scheduler is not None else None
        return None if job is None or job.next_run_time is None else job.next_run_time.isoformat()

    def _claim(self) -> bool:
        with self._lock:
            if self._running:
                return False
            self._running = True
            return True

    def _release(self) -> None:
        with self._lock:
            self._running = False

    def _scheduled(self) -> None:
        if not self._claim():
            log.info("retraining: scheduled run skipped, a requested one is going")
            return
        try:
            self.retrainer.run("schedule")
        finally:
            self._release()

    def request(self, trigger: str) -> dict[str, Any]:
        """Start a run in the background; the answer says whether it was started. Never blocks."""
        if not self.settings.enabled:
            return {"status": "disabled", "reason": "[retrain] enabled = false"}
        if not self._claim():
            return {"status": "busy", "reason": "a retraining is already running"}
        try:
            future = self._worker.submit(self._requested, trigger)
        except RuntimeError:  # the worker is shut down: the daemon is stopping
            self._release()
            return {"status": "refused", "reason": "the daemon is stopping"}
        with self._lock:
            self._pending = future
        return {"status": "started", "trigger": trigger}

    def _requested(self, trigger: str) -> RetrainOutcome:
        try:
            return self.retrainer.run(trigger)
        finally:
            self._release()

    def wait(self, timeout: float | None = None) -> RetrainOutcome | None:
        """The outcome of the latest request once it ends (tests, benchmarks)."""
        with self._lock:
            pending = self._pending
        return None if pending is None else pending.result(timeout=timeout)

    def stop(self) -> None:
        """No new runs; a running one is abandoned by the stop event its runner watches."""
        self._stopped.set()
        if self._recorder is not None:
            self._recorder.join(timeout=30)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None
        self._worker.shutdown(wait=True, cancel_futures=True)

"""Defect episodes across the daemon's stops and starts: none stays open in the store or on MQTT.

A clean stop ends every open episode (``end`` with the reason ``stopped``) before the outputs flush; an
episode that a crash or SIGKILL left open is found in the journal at the next start and ended there
(``restarted``). Both are journaled like any message, so they reach the store and the broker in order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from linewatch.daemon.cameras import CameraRuntime
from linewatch.pipeline.events import close, end_left_open
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import JournalError
from linewatch.types import EndReason

log = logging.getLogger("linewatch.daemon.app")  # part of starting and stopping: logged as the App's


def end_episodes_left_open(journal: Journal) -> None:
    """At start, before any camera runs: end what the previous run left open. A journal that cannot take
    the ends now (a full disk) does not stop the start: they stay open until a later start ends them."""
    ends = [end_left_open(last) for last in journal.open_episodes()]
    if not ends:
        return
    cameras = ", ".join(sorted({end.camera for end in ends}))
    try:
        journal.append_batch((), ends)
    except JournalError as problem:
        log.error("could not end %d episode(s) the previous run left open (%s): %s", len(ends), cameras, problem)
        return
    log.warning("ended %d defect episode(s) the previous run left open (cameras %s)", len(ends), cameras)


def end_open_episodes(runtimes: Iterable[CameraRuntime], journal: Journal) -> None:
    """At a clean stop, once the scorer has drained: end every camera's open episode."""
    ends = []
    for runtime in runtimes:
        runtime.episodes, closed = close(runtime.episodes, EndReason.STOPPED)
        ends.extend(closed)
    if not ends:
        return
    try:
        journal.append_batch((), ends)
    except JournalError as problem:  # e.g. a full disk: the next start finds them open and ends them
        log.error("could not journal the end of %d open episode(s): %s", len(ends), problem)

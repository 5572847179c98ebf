"""systemd integration for ``linewatch run`` (``Type=notify``): the sd_notify protocol with the standard
library only, so the daemon needs neither libsystemd nor python-systemd.

The protocol (sd_notify(3)): one datagram of newline-separated ``KEY=VALUE`` lines on the AF_UNIX socket
that ``$NOTIFY_SOCKET`` names, a path or, with a leading ``@``, an abstract-namespace name. Outside systemd
the variable is unset and every call here is a cheap no-op returning False.

Sending never raises: a daemon that inspects parts must not die because the service manager went away
(re-exec, a test harness that closed its socket). The first failure per socket is logged as a warning,
later ones at debug level, so a broken socket cannot flood the journal with one line per watchdog ping.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

from linewatch.clock import Clock, SystemClock

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 2.0  # a service manager that stops reading must not block a stop or the watchdog thread
STATUS_MAX_CHARS = 1000  # systemd drops notification datagrams longer than its 4 KiB buffer; stay well below

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _socket_address(name: str) -> str | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value; None for a form systemd does not use."""
    if name.startswith("@"):
        return "\0" + name[1:]  # Linux abstract namespace: a leading NUL byte instead of a file
    if name.startswith("/"):
        return name
    return None


def _warn_once(name: str, problem: str) -> None:
    with _warned_lock:
        first = name not in _warned
        _warned.add(name)
    if first:
        log.warning(
            "cannot notify systemd at NOTIFY_SOCKET=%s (%s); inspection carries on, further failures at debug level",
            name,
            problem,
        )
    else:
        log.debug("cannot notify systemd at NOTIFY_SOCKET=%s (%s)", name, problem)


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``message`` (``KEY=VALUE`` lines) as one datagram to ``$NOTIFY_SOCKET``.

    True when the datagram was handed to the socket; False when ``NOTIFY_SOCKET`` is unset or empty (not
    running under systemd, no log line) or the socket cannot be reached (logged once per socket). An empty
    message is a programming error and raises ValueError.
    """
    if not message:
        raise ValueError("an sd_notify message needs at least one KEY=VALUE line, got an empty string")
    name = environ.get("NOTIFY_SOCKET", "")
    if not name:
        return False
    address = _socket_address(name)
    if address is None:
        _warn_once(name, "neither an absolute path nor an @abstract name")
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendto(message.encode("utf-8"), address)
    except OSError as problem:  # ENOENT, ECONNREFUSED, EAGAIN/timeout, EPERM: all mean "systemd is not there"
        _warn_once(name, str(problem))
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """The watchdog timeout systemd expects pings within (``WatchdogSec=``), in seconds; None when there is
    none for this process.

    ``WATCHDOG_USEC`` holds it in microseconds. ``WATCHDOG_PID``, when present, names the process the
    watchdog is meant for: a child that inherited the environment (the retrain process) gets None, as
    sd_watchdog_enabled(3) specifies. Malformed values give None and a warning naming the variable.
    """
    usec = environ.get("WATCHDOG_USEC")
    if usec is None:
        return None
    pid = environ.get("WATCHDOG_PID")
    if pid is not None:
        if not (pid.isascii() and pid.isdigit()):
            log.warning("ignoring the systemd watchdog: WATCHDOG_PID=%r is not a process id", pid)
            return None
        if int(pid) != os.getpid():
            return None
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        log.warning("ignoring the systemd watchdog: WATCHDOG_USEC=%r is not a positive integer", usec)
        return None
    return int(usec) / 1_000_000


def _always_waiting() -> bool:
    return True


def _status_line(text: str) -> str:
    """``STATUS=`` with ``text`` on one line (a newline would start a new assignment) and bounded in size."""
    flat = " ".join(text.split())
    if len(flat) > STATUS_MAX_CHARS:
        flat = flat[: STATUS_MAX_CHARS - 3] + "..."
    return f"STATUS={flat}"


class Notifier:
    """What ``linewatch run`` tells systemd: READY once warmed up, STATUS lines, RELOADING/READY around a
    SIGHUP reload, STOPPING at shutdown, and WATCHDOG pings driven by pipeline progress, not by a timer.

    Watchdog rule. ``progress()`` is called after every batch the journal made durable (an increment under
    a lock). The watchdog thread wakes every ``WatchdogSec/2`` and pings unless the pipeline is *stuck*:
    work was already waiting at the previous wake-up and no batch has been journaled since. Withheld pings
    make systemd abort and restart the service (``Restart=on-failure``) one ``WatchdogSec`` after the last
    ping, and the log says why first.

    Idle is healthy. With all cameras disabled, stalled or offline nothing is scored, and a restart would
    not bring a frame: pinging only on progress would restart the service over and over. So
    ``start_watchdog`` takes ``work_pending``, a cheap predicate "frames wait to be scored" (for linewatch:
    ``batcher.pending() > 0``), and an idle pipeline keeps pinging. A stuck scorer cannot fake that: its
    cameras keep filling the batcher, work stays pending, progress does not move. With cameras stalled *and*
    the scorer stuck nothing is lost, and the first frame that arrives trips the watchdog. The predicate is
    sampled one period before the verdict, so work that arrives just before a wake-up never counts as
    stuck; a batch needs less than ``WatchdogSec/2`` (30 s with the shipped unit) from being pending to
    being journaled, which also bounds a useful ``[scoring] batch_max_wait_ms``. Without a predicate the
    rule is the strict one: a ping only after progress. Should the predicate block (a deadlock on the
    batcher's lock) or raise, the watchdog thread stops pinging, which is the safe direction.

    ``clock`` (``linewatch.clock``) paces the watchdog thread and times the log message, so tests step it.
    """

    def __init__(self, environ: Mapping[str, str] = os.environ, clock: Clock | None = None) -> None:
        self._environ = environ
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._progress = 0
        self._thread: threading.Thread | None = None
        # Watchdog-thread state, touched by that thread only once it runs.
        self._seen = 0
        self._waiting = False
        self._last_moved = 0.0
        self._withholding = False

    @property
    def enabled(self) -> bool:
        """Whether systemd listens (``NOTIFY_SOCKET`` is set)."""
        return bool(self._environ.get("NOTIFY_SOCKET"))

    def _send(self, *lines: str) -> bool:
        return notify("\n".join(lines), self._environ)

    def ready(self, status: str = "inspecting") -> bool:
        """Start-up (or a reload) is complete: systemd moves the unit to active and arms the watchdog."""
        return self._send("READY=1", _status_line(status))

    def reloading(self, status: str = "reloading the configuration") -> bool:
        """A SIGHUP reload begins; follow it with :meth:`ready` once applied or refused.

        ``MONOTONIC_USEC`` is CLOCK_MONOTONIC in microseconds, read from the kernel even under a fake
        clock, because systemd (253 and later) compares it with its own reload timestamp; older versions
        ignore the field.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self._send("RELOADING=1", f"MONOTONIC_USEC={now_usec}", _status_line(status))

    def stopping(self, status: str = "stopping: draining the batch, flushing the journal") -> bool:
        """Shutdown began: systemd shows ``deactivating`` and ``TimeoutStopSec=`` bounds the drain."""
        return self._send("STOPPING=1", _status_line(status))

    def status(self, text: str) -> bool:
        """A free-form line for ``systemctl status`` (start-up steps, reload outcomes)."""
        return self._send(_status_line(text))

    def extend_start(self, seconds: float, status: str) -> bool:
        """Start-up will take longer than ``TimeoutStartSec=`` may allow: systemd waits at least ``seconds``
        more from now (``EXTEND_TIMEOUT_USEC``, systemd 236 and later) instead of killing a slow start."""
        return self._send(f"EXTEND_TIMEOUT_USEC={round(seconds * 1_000_000)}", _status_line(status))

    def progress(self) -> None:
        """A batch was journaled. Thread-safe and cheap: call it after every batch."""
        with self._lock:
            self._progress += 1

    def start_watchdog(
        self, stop: threading.Event, work_pending: Callable[[], bool] | None = None
    ) -> threading.Thread | None:
        """Start the watchdog thread if systemd asked for pings (``WatchdogSec=``); None when it did not.

        Call it after :meth:`ready`: systemd arms the watchdog when start-up completes, so model loading
        and warm-up are bounded by ``TimeoutStartSec=`` instead. The thread ends at the next wake-up
        after ``stop`` is set; it is a daemon thread, so it can never keep a finished process alive.
        """
        if self._thread is not None:
            raise RuntimeError("the watchdog thread is already running")
        interval = watchdog_interval(self._environ)
        if interval is None or not self.enabled:
            return None
        pending = work_pending or _always_waiting
        with self._lock:
            self._seen = self._progress
        self._waiting = pending()
        self._last_moved = self._clock.monotonic()
        self._withholding = False
        self._thread = threading.Thread(
            target=self._watch, args=(interval / 2, stop, pending), name="watchdog", daemon=True
        )
        self._thread.start()
        rule = "while batches are journaled or nothing waits" if work_pending else "only after batches are journaled"
        log.info("systemd watchdog of %.0f s: pinged %s", interval, rule)
        return self._thread

    def _watch(self, period: float, stop: threading.Event, pending: Callable[[], bool]) -> None:
        while not self._clock.wait(period, stop):
            self._check(pending)

    def _check(self, pending: Callable[[], bool]) -> None:
        now = self._clock.monotonic()
        with self._lock:
            count = self._progress
        moved = count != self._seen
        self._seen = count
        if moved:
            self._last_moved = now
        stuck = self._waiting and not moved
        self._waiting = pending()  # sampled after reading the count: a batch journaled from here on is news
        if stuck:
            if not self._withholding:
                log.error(
                    "no batch journaled for %.0f s while frames wait to be scored: withholding watchdog pings, "
                    "systemd will restart linewatch",
                    now - self._last_moved,
                )
                self._withholding = True
            return
        if self._withholding:
            log.warning("scoring progresses again: watchdog pings resume")
            self._withholding = False
        notify("WATCHDOG=1", self._environ)

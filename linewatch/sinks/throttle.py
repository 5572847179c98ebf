"""Brute-force limiting for the HTTP port's secrets: the bearer token of the JSON routes and the page's login
token, per client address.

A client gets ``FREE_FAILURES`` wrong tries; each one after that locks it out for twice as long as the one
before (1 s, 2 s, 4 s ... up to ``MAX_LOCK_S``). While locked out, every attempt of that client is refused
with 429 and ``Retry-After``, a right token too, so guessing cannot go on at full speed between the
lockouts. A right token outside a lockout clears the client's record. Refusing at once rather than sleeping
keeps a flood from holding the server's connections. Records of quiet clients are forgotten after
``FORGET_S``, and at most ``MAX_CLIENTS`` are kept (the quietest go first), so a spray of addresses cannot
grow memory without end. Addresses are the TCP peer's: no proxy header is trusted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)
FREE_FAILURES = 5
FIRST_LOCK_S = 1.0
MAX_LOCK_S = 300.0
FORGET_S = 900.0
MAX_CLIENTS = 10_000


@dataclass
class _Record:
    failures: int = 0
    locked_until: float = 0.0
    last_seen: float = 0.0


class AuthThrottle:
    """Per-client failed-attempt records; thread-safe (the JSON routes and the page ask from several threads)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, _Record] = {}
        self.failures: Counter[str] = Counter()  # kind ("bearer", "login") -> wrong tokens, for the metrics
        self.refused: Counter[str] = Counter()  # kind -> attempts refused while locked out

    def retry_after(self, client: str, kind: str) -> float:
        """Seconds until ``client`` may try again (0: now). A positive answer counts as a refusal."""
        with self._lock:
            record = self._clients.get(client)
            wait = 0.0 if record is None else record.locked_until - self._clock()
            if wait > 0:
                self.refused[kind] += 1
                return wait
            return 0.0

    def failed(self, client: str, kind: str) -> None:
        """A wrong token from ``client``: counted, and past the free tries a lockout twice the last one."""
        now = self._clock()
        with self._lock:
            self.failures[kind] += 1
            record = self._clients.get(client)
            if record is None or now - record.last_seen > FORGET_S:
                record = self._clients[client] = _Record(last_seen=now)
                self._bound()
            record.failures += 1
            record.last_seen = now
            over = record.failures - FREE_FAILURES
            if over > 0:
                lock = min(MAX_LOCK_S, FIRST_LOCK_S * 2 ** (over - 1))
                record.locked_until = now + lock
                log.warning(
                    "HTTP: %d wrong %s tokens from %s; it must wait %.0f s before the next try",
                    record.failures, kind, client, lock,
                )  # fmt: skip

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)

    def _bound(self) -> None:
        """Forget the quietest clients beyond MAX_CLIENTS (called with the lock held)."""
        excess = len(self._clients) - MAX_CLIENTS
        if excess > 0:
            for client in sorted(self._clients, key=lambda name: self._clients[name].last_seen)[:excess]:
                del self._clients[client]

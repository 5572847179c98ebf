"""The connection protocol of the daemon's HTTP port: uvicorn's h11 protocol with a deadline for reading each
request.

uvicorn closes a keep-alive connection that stays silent for ``timeout_keep_alive`` after a response, but
any byte received cancels that timer, and a connection that never sends a request has none at all: ten
clients trickling a byte every few seconds, or just connecting, held their connections for as long as they
liked, and at ``limit_concurrency`` every other request got 503. Here every request must arrive whole,
headers and body, within ``REQUEST_READ_TIMEOUT_S`` of the connection opening or of the previous response;
otherwise the connection is closed. Once a request is in, the deadline no longer applies: a slow store
delays the answer, not the connection. Headers are limited to ``MAX_HEADER_BYTES``: h11 buffers no more
of an unfinished header block (400), and the server answers a complete but larger one with 431; bodies
are limited by the routes (JSON and form limits).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

REQUEST_READ_TIMEOUT_S = 10.0
MAX_HEADER_BYTES = 16 * 1024


class DeadlineH11Protocol(H11Protocol):
    """H11Protocol that closes a connection whose request is not fully received in time (module docstring)."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets its own deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(REQUEST_READ_TIMEOUT_S, self._read_too_slow)

    def _read_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.more_body and not cycle.response_complete:
            return  # the request is in and being answered
        self.transport.close()

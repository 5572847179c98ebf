"""The daemon's HTTP port (``[http]``): feedback, metrics, health, model control, and the operator's page.

Starlette served by uvicorn on a thread of the daemon: the operator's page (linewatch/web) needs templates,
forms, cookies and static files, which a framework does better than hand-written handlers, and the JSON
routes ride on the same port so a line exposes one address. Two kinds of routes:

- JSON routes, a table ``{(method, path): handler}`` of plain functions ``HttpRequest -> HttpResponse``
  (run on a worker thread, so they may block on the journal or the store). A bearer token, when configured,
  is checked in constant time before anything else; POST bodies must be ``application/json`` (a page
  elsewhere cannot make a browser send that without a CORS preflight, which is never granted: the CSRF
  defence of a token-less loopback port) and are size-limited before they are read. Every answer is JSON
  with a status code a script can act on.
- The page site (:meth:`HttpServer.set_site`), an ASGI app that gets every path the table does not name and
  does its own authentication (a login cookie or the bearer token) and CSRF checks.

Without a token (loopback only, the config insists), a request must name a loopback host in its ``Host``
header: otherwise a web page could rebind its own DNS name to 127.0.0.1 and use the port as if it were the
same site (DNS rebinding). With a token, the token is the guard.

Every response carries ``Cache-Control: no-store`` unless it set its own, ``nosniff``, a same-origin referrer policy
and no framing. The socket is bound in the constructor, so a taken port is an error at start, not on a thread.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from linewatch.sinks.http_protocol import MAX_HEADER_BYTES, DeadlineH11Protocol
from linewatch.sinks.throttle import AuthThrottle

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024
START_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 100  # beyond it new requests get 503: a flood cannot take the daemon's file descriptors
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
SCRAPE_ROUTES = frozenset({("GET", "/metrics"), ("GET", "/healthz")})  # all the scrape token may do
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no URL (ids, filters) leaks to another site
    (b"x-frame-options", b"DENY"),
)


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    body: bytes
    client: str


@dataclass(frozen=True)
class HttpResponse:
    status: int
    document: Any
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if self.content_type == "application/json":
            return json.dumps(self.document, separators=(",", ":")).encode()
        return self.document if isinstance(self.document, bytes) else str(self.document).encode()


Route = Callable[[HttpRequest], HttpResponse]


def error(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, {"error": message})


def bearer_ok(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token``, compared in constant time."""
    return hmac.compare_digest((authorization or "").encode(), b"Bearer " + token.encode())


def too_many_tries(wait_s: float) -> HttpResponse:
    seconds = max(1, math.ceil(wait_s))
    return HttpResponse(
        429, {"error": f"too many wrong tokens from this address; try again in {seconds} s"},
        headers={"Retry-After": str(seconds)},
    )  # fmt: skip


def unauthorized() -> HttpResponse:
    return HttpResponse(401, {"error": "missing or wrong bearer token"}, headers={"WWW-Authenticate": "Bearer"})


class HttpServer:
    """Serves JSON ``routes`` and, once set, a page site on host:port from a thread; ``port`` 0 picks a free
    one (read it back from :attr:`port`). JSON handlers run on worker threads and must be safe to call
    concurrently."""

    def __init__(
        self,
        host: str,
        port: int,
        token: str | None,
        routes: dict[tuple[str, str], Route],
        scrape_token: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self._token = token
        self._scrape_token = scrape_token
        self._tls = tls
        if tls is not None:
            _check_tls(*tls)
        self.throttle = AuthThrottle()
        self._routes = dict(routes)
        self._site: ASGIApp | None = None
        self._socket = _listen(host, port)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def add_routes(self, routes: dict[tuple[str, str], Route]) -> None:
        """Serve more JSON paths (the App adds its control routes once the parts behind them exist). The table
        is replaced whole, so a request being served sees the old or the new one, never half of it."""
        self._routes = {**self._routes, **routes}

    def set_site(self, site: ASGIApp) -> None:
        """Hand every path the JSON table does not name to ``site`` (the operator's page)."""
        self._site = site

    @property
    def port(self) -> int:
        return int(self._socket.getsockname()[1])

    def start(self) -> None:
        config = uvicorn.Config(
            self._asgi,
            interface="asgi3",
            lifespan="off",
            proxy_headers=False,  # no proxy is trusted to say who the client is or which scheme it used
            limit_concurrency=MAX_CONNECTIONS,
            log_config=None,  # the daemon's logging setup stays as it is
            access_log=False,
            server_header=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            http=DeadlineH11Protocol,  # every request must arrive whole in time (see http_protocol)
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            ssl_certfile=None if self._tls is None else str(self._tls[0]),
            ssl_keyfile=None if self._tls is None else str(self._tls[1]),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S  # real time: bounds a wait for a thread, not a decision
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            why = (
                "its thread ended (see the log)"
                if not self._thread.is_alive()
                else f"not within {START_TIMEOUT_S:.0f} s"
            )
            raise RuntimeError(f"[http] the server did not start: {why}")

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
        self._socket.close()

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # no websockets here; lifespan is off
            return
        send = _with_security_headers(send)
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            refusal = error(431, f"request headers larger than {MAX_HEADER_BYTES} bytes")
            await Response(refusal.encoded(), refusal.status, media_type=refusal.content_type)(scope, receive, send)
            return
        if self._token is None and not _loopback_host(scope):
            refusal = error(421, "this port answers only to a loopback Host (127.0.0.1, localhost, [::1])")
            await Response(refusal.encoded(), refusal.status, media_type=refusal.content_type)(scope, receive, send)
            return
        routes = self._routes
        path = scope["path"]
        if self._site is not None and not any(route_path == path for _method, route_path in routes):
            await self._site(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            answer = await self._json(request, routes)
        except Exception:  # a bug in a route must answer 500, not kill the connection silently
            log.exception("http %s %s failed", request.method, path)
            answer = error(500, "internal error; see the daemon's log")
        response = Response(answer.encoded(), answer.status, answer.headers, answer.content_type)
        await response(scope, receive, send)

    async def _json(self, request: Request, routes: dict[tuple[str, str], Route]) -> HttpResponse:
        method, path = request.method, request.url.path
        client = request.client.host if request.client is not None else ""
        if self._token is not None:
            refusal = self._check_bearer(request.headers.get("authorization"), client, method, path)
            if refusal is not None:
                return refusal
        route = routes.get((method, path))
        if route is None:
            allowed = sorted(m for m, p in routes if p == path)
            if allowed:
                return HttpResponse(405, {"error": f"use {', '.join(allowed)}"}, headers={"Allow": ", ".join(allowed)})
            return error(404, f"no such path {path!r}")
        body = b""
        if method == "POST":
            problem, body = await read_json_body(request, MAX_BODY_BYTES)
            if problem is not None:
                return problem
        return await run_in_threadpool(route, HttpRequest(method, path, body, client))

    def _check_bearer(self, authorization: str | None, client: str, method: str, path: str) -> HttpResponse | None:
        """None when the request may go on; else the answer: 429 while the client is locked out for wrong
        tokens (see linewatch/sinks/throttle.py), 401 for a wrong one, 403 for the scrape token off its routes."""
        wait = self.throttle.retry_after(client, "bearer")
        if wait > 0:
            return too_many_tries(wait)
        assert self._token is not None
        if bearer_ok(authorization, self._token):
            self.throttle.succeeded(client)
            return None
        if self._scrape_token is not None and bearer_ok(authorization, self._scrape_token):
            self.throttle.succeeded(client)
            if (method, path) in SCRAPE_ROUTES:
                return None
            return error(403, "the scrape token may only GET /metrics and /healthz")
        self.throttle.failed(client, "bearer")
        return unauthorized()


async def read_json_body(request: Request, limit: int) -> tuple[HttpResponse | None, bytes]:
    """The body of a JSON POST, or the error to answer: not JSON (415), no length (411), too big (413,
    refused before reading)."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        return error(415, "Content-Type must be application/json"), b""
    length_header = request.headers.get("content-length")
    if length_header is None:
        return error(411, "Content-Length is required"), b""
    if int(length_header) > limit:  # the HTTP parser already refused a length that is not a number
        return error(413, f"body larger than {limit} bytes"), b""
    try:
        return None, await request.body()
    except ClientDisconnect:
        return error(400, "the client went away before sending the body"), b""


def _loopback_host(scope: Scope) -> bool:
    """Whether the request's Host header names this machine's loopback (any port)."""
    host = next((value for name, value in scope["headers"] if name == b"host"), b"").decode("latin-1").lower()
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name in LOOPBACK_NAMES


def _with_security_headers(send: Send) -> Send:
    """Add the headers every answer carries; ``Cache-Control: no-store`` unless the response chose its own
    caching (the page's static files)."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            names = {name.lower() for name, _value in headers}
            headers.extend(header for header in SECURITY_HEADERS if header[0] not in names)
            if b"cache-control" not in names:
                headers.append((b"cache-control", b"no-store"))
            message = {**message, "headers": headers}
        await send(message)

    return sending


def _check_tls(cert_file: Path, key_file: Path) -> None:
    """Load the pair once at start, so a missing file, a wrong key or a passphrase-protected one is an error
    naming the files now, not a server thread that dies."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file, password=b"")
    except (OSError, ssl.SSLError) as exc:
        raise OSError(f"[http] cannot serve TLS with cert_file {cert_file} and key_file {key_file}: {exc}") from exc


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket for host:port (IPv4 or IPv6, whichever the host names)."""
    try:
        family, kind, proto, _name, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"[http] cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart must not wait for TIME_WAIT
        sock.bind(address)
        sock.listen(128)
        sock.set_inheritable(False)
    except OSError as exc:
        sock.close()
        raise OSError(f"[http] cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock

"""The daemon's small HTTP port (``[http]``): operator feedback now, metrics and health later.

Stdlib ``ThreadingHTTPServer``: a handful of tiny JSON routes do not justify a web framework in the
daemon. Safe by default: loopback unless configured otherwise, and a bearer token (required by the
config beyond loopback) checked in constant time on every route. Bodies are size-limited before they
are read; every answer is JSON with a status code a script can act on.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 64 * 1024


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


class HttpServer:
    """Serves ``routes`` ({(method, path): handler}) on host:port in a daemon thread; ``port`` 0 picks a
    free one (read it back from :attr:`port`). Handlers run on the server's threads and must be safe
    to call concurrently."""

    def __init__(self, host: str, port: int, token: str | None, routes: dict[tuple[str, str], Route]) -> None:
        self._token = token.encode() if token is not None else None
        self._routes = dict(routes)
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "linewatch"
            sys_version = ""
            timeout = 10  # a client that sends nothing (or too little body) must not hold a thread forever

            def do_GET(self) -> None:
                server._serve(self, "GET")

            def do_POST(self) -> None:
                server._serve(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http %s: " + format, self.client_address[0], *args)

        try:
            self._httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise OSError(f"[http] cannot listen on {host}:{port}: {exc.strerror}") from exc
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    def add_routes(self, routes: dict[tuple[str, str], Route]) -> None:
        """Serve more paths (the App adds its control routes once the parts behind them exist). The table is
        replaced whole, so a request being served sees the old or the new one, never half of it."""
        self._routes = {**self._routes, **routes}

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,), name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        try:
            response = self._respond(handler, method)
        except Exception:  # a bug in a route must answer 500, not kill the connection silently
            log.exception("http %s %s failed", method, handler.path)
            response = error(500, "internal error; see the daemon's log")
        body = response.encoded()
        handler.send_response(response.status)
        handler.send_header("Content-Type", response.content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Cache-Control", "no-store")
        for name, value in response.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _respond(self, handler: BaseHTTPRequestHandler, method: str) -> HttpResponse:
        path = handler.path.split("?", 1)[0]
        if self._token is not None:
            offered = handler.headers.get("Authorization", "")
            if not hmac.compare_digest(offered.encode(), b"Bearer " + self._token):
                return HttpResponse(
                    401, {"error": "missing or wrong bearer token"}, headers={"WWW-Authenticate": "Bearer"}
                )
        route = self._routes.get((method, path))
        if route is None:
            allowed = sorted(m for m, p in self._routes if p == path)
            if allowed:
                return HttpResponse(405, {"error": f"use {', '.join(allowed)}"}, headers={"Allow": ", ".join(allowed)})
            return error(404, f"no such path {path!r}")
        body = b""
        if method == "POST":
            # A web page elsewhere can make a browser POST text/plain or a form here without asking (CSRF on a
            # token-less loopback port); application/json it can only send after a CORS preflight we never allow.
            media_type = handler.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if media_type != "application/json":
                return error(415, "Content-Type must be application/json")
            length_header = handler.headers.get("Content-Length")
            if length_header is None:
                return error(411, "Content-Length is required")
            try:
                length = int(length_header)
            except ValueError:
                return error(400, "Content-Length is not a number")
            if length < 0 or length > MAX_BODY_BYTES:
                return error(413, f"body larger than {MAX_BODY_BYTES} bytes")
            body = handler.rfile.read(length)
        return route(HttpRequest(method, path, body, handler.client_address[0]))

"""The HTTP port while the daemon cannot inspect yet: the demo model is being trained on a first start.

That took minutes on a 2-core line PC with nothing on the port, so the page, ``/healthz`` and ``linewatch
status`` looked like a daemon that had not started at all. This answers on the configured port from the
first seconds: ``/healthz`` is 503 with ``"status": "starting"`` and the current stage among the
``problems`` (the shape ``linewatch status`` reads), and every other path is a small page that says what the
daemon is doing and reloads itself until the real operator page takes over the port. It shows nothing but the
stage, so it needs no login; ``/healthz`` keeps the bearer token like every JSON route.
"""

from __future__ import annotations

import html
import threading
import time

from starlette.responses import HTMLResponse
from starlette.types import Receive, Scope, Send

from linewatch.config import Config
from linewatch.sinks.http import HttpRequest, HttpResponse, HttpServer

PAGE_REFRESH_S = 2

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{refresh}">
<title>linewatch {line}: starting</title>
<style>body {{ font-family: system-ui, sans-serif; margin: 3rem; }} progress {{ width: 24rem; }}</style>
</head><body>
<h1>linewatch {line} is starting</h1>
<p>{stage}</p>
{bar}
<p>This page reloads by itself; the operator page appears once the daemon inspects.</p>
</body></html>
"""


class StartingPort:
    """Serves the start-up stage on ``[http]`` host and port until :meth:`stop`; ``report`` moves it on."""

    def __init__(self, config: Config) -> None:
        self._line = f"{config.site.site}/{config.site.line}"
        self._lock = threading.Lock()
        self._stage = "starting"
        self._fraction: float | None = None
        self._since = time.monotonic()
        http = config.http
        self._server = HttpServer(
            http.host, http.port, http.token, {("GET", "/healthz"): self._health}, http.scrape_token, http.tls_files
        )
        self._server.set_site(self._page)

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        """Free the port for the daemon's own server."""
        self._server.stop()

    def report(self, stage: str, fraction: float | None = None) -> None:
        """What the daemon does now (``fraction`` done, 0..1, when it is measurable)."""
        with self._lock:
            self._stage, self._fraction = stage, fraction

    def _now(self) -> tuple[str, float | None]:
        with self._lock:
            return self._stage, self._fraction

    def _health(self, _request: HttpRequest) -> HttpResponse:
        stage, fraction = self._now()
        document = {
            "status": "starting",
            "line": self._line,
            "problems": [stage],
            "progress": fraction,
            "uptime_s": round(time.monotonic() - self._since, 1),
            "cameras": {},
        }
        return HttpResponse(503, document)

    async def _page(self, scope: Scope, receive: Receive, send: Send) -> None:
        stage, fraction = self._now()
        bar = "" if fraction is None else f'<progress max="100" value="{round(100 * fraction)}"></progress>'
        text = PAGE.format(refresh=PAGE_REFRESH_S, line=html.escape(self._line), stage=html.escape(stage), bar=bar)
        await HTMLResponse(text, status_code=503, headers={"Retry-After": str(PAGE_REFRESH_S)})(scope, receive, send)

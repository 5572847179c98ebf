"""A real linewatch daemon serving the operator page, and an HTTP client that behaves like a browser's.

The page tests go through the whole path an operator's click takes (uvicorn, the guard, the journal, the
forwarder, the store), so the fixtures start a real :class:`linewatch.daemon.app.App` the way tests/daemon/test_app.py
does: one synthetic camera at 10 fps (30% defects, so defect episodes with evidence appear within seconds),
MQTT off, the HTTP port on a free port, every normal kept as evidence (the review queue and history show
images).

Module scope: starting a daemon costs ~2 s, and the tests of one module label different items, so they can
share it. Use them from a test module (the project's pattern for shared fixtures)::

    from tests.web.daemon import daemon_model, web_daemon  # noqa: F401  (fixtures)

The client is ``http.client`` by hand rather than urllib: the tests must see every redirect (not follow
it), send requests a browser would not (no Content-Length, foreign Origin) and read each Set-Cookie, and
the project adds no HTTP client dependency for tests.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import Select, select

from linewatch.config import Config, load_config
from linewatch.daemon.app import App
from linewatch.pipeline.journal.records import JournalRecord
from linewatch.sinks.db_schema import DefectEvent
from linewatch.web.auth import SESSION_COOKIE
from tests.daemon.test_app import PRODUCT, _wait_for, daemon_model, journal_records, write_config

__all__ = ["PRODUCT", "Reply", "WebClient", "WebDaemon", "daemon_model", "token_daemon", "web_daemon"]

CAMERA = "cam0"
TOKEN = "line-token-0123456789abcdef"
TIMEZONE = "Asia/Kolkata"  # +05:30 all year, no DST: the page reads and shows times in it, not in UTC
HTTP_TIMEOUT_S = 30.0
_CSRF_HEADER = re.compile(r"hx-headers='\{\"X-CSRF-Token\": \"([^\"]+)\"\}'")


def daemon_sections(token: str | None) -> str:
    """The config sections beside the cameras: offline, the page on a free port, and retraining that can
    neither train nor recalibrate (so a "Retrain now" click ends as "skipped" and the model never changes
    under a test)."""
    token_line = f'token = "{token}"' if token is not None else ""
    return f"""
[mqtt]
enabled = false

[http]
port = 0
{token_line}

[evidence]
every_nth_normal = 1

[web]
refresh_s = 1.0
timezone = "{TIMEZONE}"

[retrain]
min_new_normals = 10000
recalibrate = false
"""


@dataclass(frozen=True)
class Reply:
    """One HTTP answer as the client got it (redirects are not followed)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive), None when absent."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass
class WebClient:
    """A cookie-keeping HTTP/1.1 client for the daemon's port, one connection per request.

    It keeps cookies as a browser does (set, replaced, deleted by ``Max-Age=0``) but sends no
    ``Sec-Fetch-Site``/``Origin`` unless a test adds them, like a script or an old browser."""

    host: str
    port: int
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        chunked: bool = False,
    ) -> Reply:
        """Send one request; ``chunked`` sends the body without a Content-Length (Transfer-Encoding: chunked)."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT_S)
        try:
            all_headers = dict(headers or {})
            if self.cookies and not any(key.lower() == "cookie" for key in all_headers):
                all_headers["Cookie"] = "; ".join(f"{key}={value}" for key, value in self.cookies.items())
            connection.request(method, path, body=body, headers=all_headers, encode_chunked=chunked)
            response = connection.getresponse()
            reply = Reply(response.status, response.getheaders(), response.read())
        finally:
            connection.close()
        self._keep_cookies(reply)
        return reply

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def post(
        self, path: str, fields: Mapping[str, str], headers: Mapping[str, str] | None = None, chunked: bool = False
    ) -> Reply:
        """POST ``fields`` as an HTML form does (application/x-www-form-urlencoded)."""
        form_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        if chunked:
            form_headers["Transfer-Encoding"] = "chunked"
        return self.request("POST", path, urlencode(fields).encode(), form_headers, chunked=chunked)

    def csrf(self, path: str = "/review") -> str:
        """The CSRF token a page hands its htmx requests (``hx-headers`` on ``<body>``), for this session."""
        page = self.get(path)
        assert page.status == 200, (page.status, page.text[:300])
        found = _CSRF_HEADER.search(page.text)
        assert found is not None, "no hx-headers with the CSRF token in the page"
        return found.group(1)

    def login(self, name: str, token: str | None = None, next_path: str = "/review") -> Reply:
        """Log in as the page's form does: GET /login (a session and its CSRF token), then POST it."""
        fields = {"csrf": self.csrf("/login"), "name": name, "next": next_path}
        if token is not None:
            fields["token"] = token
        reply = self.post("/login", fields)
        assert reply.status == 303, (reply.status, reply.text[:300])
        return reply

    @property
    def session(self) -> str | None:
        return self.cookies.get(SESSION_COOKIE)

    def _keep_cookies(self, reply: Reply) -> None:
        for value in reply.header_values("set-cookie"):
            jar: SimpleCookie = SimpleCookie()
            jar.load(value)
            for name, morsel in jar.items():
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value


@dataclass
class WebDaemon:
    """A running daemon and what the tests need of it."""

    app: App
    config: Config
    token: str | None

    @property
    def port(self) -> int:
        assert self.app.outputs is not None and self.app.outputs.http is not None
        return self.app.outputs.http.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def engine(self) -> Any:
        assert self.app.outputs is not None
        return self.app.outputs.engine

    @property
    def evidence_dir(self) -> Path:
        return self.config.evidence_dir

    def client(self) -> WebClient:
        """A new client: no cookies, like a fresh browser."""
        return WebClient("127.0.0.1", self.port)

    def rows(self, query: Select[Any]) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(query))

    def labels(self, target_id: str | None = None) -> list[JournalRecord]:
        """The journal's label records (of one target when given), oldest first."""
        records = journal_records(self.config.journal_path, "label")
        return [r for r in records if target_id is None or r.payload["target_id"] == target_id]

    def wait_for_events(self, count: int = 1, timeout_s: float = 60.0) -> list[str]:
        """Ids of at least ``count`` unlabelled defect episodes of the camera whose snapshot and heatmap the
        store holds, newest first, once the forwarder has written that many."""
        query = (
            select(DefectEvent.event_id)
            .where(
                DefectEvent.camera == CAMERA,
                DefectEvent.label.is_(None),
                DefectEvent.snapshot.is_not(None),
                DefectEvent.heatmap.is_not(None),
            )
            .order_by(DefectEvent.started_at.desc())
        )
        found: list[str] = []

        def enough() -> bool:
            found[:] = [row.event_id for row in self.rows(query)]
            return len(found) >= count

        _wait_for(enough, timeout_s)
        return found

    def wait_until(self, condition: Any, timeout_s: float = 30.0) -> None:
        _wait_for(condition, timeout_s)


@contextmanager
def running_daemon(root: Path, model: Path, token: str | None = None) -> Iterator[WebDaemon]:
    """A daemon on a free loopback port with the page on, stopped (drained) on exit."""
    config = load_config(write_config(root, model, cameras=1, fps=10.0, outputs=daemon_sections(token)))
    app = App(config)
    app.start()
    try:
        yield WebDaemon(app, config, token)
    finally:
        app.stop()


@pytest.fixture(scope="module")
def web_daemon(daemon_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDaemon]:
    """A daemon without a token (loopback): the page asks for a name only."""
    with running_daemon(tmp_path_factory.mktemp("web-daemon"), daemon_model) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def token_daemon(daemon_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDaemon]:
    """A daemon with ``[http] token``: the page needs a login, the JSON routes the bearer header."""
    with running_daemon(tmp_path_factory.mktemp("token-daemon"), daemon_model, TOKEN) as daemon:
        yield daemon

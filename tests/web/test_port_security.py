"""A daemon whose port serves HTTPS with a token and a read-only scrape token (issue 22): Prometheus scrapes
over TLS with the scrape token and cannot retrain with it; the login cookie is Secure; wrong login tokens
lock the address out; refusals are counted in /metrics."""

from __future__ import annotations

import http.client
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest

from linewatch.config import load_config
from linewatch.daemon.app import App
from linewatch.sinks.throttle import FREE_FAILURES
from tests.daemon.test_app import daemon_model, write_config  # noqa: F401  (a fixture)
from tests.services.certs import make_pki

TOKEN = "line-token-0123456789abcdef"
SCRAPE_TOKEN = "prometheus-scrape-0123456789"


@dataclass(frozen=True)
class TlsDaemon:
    port: int
    context: ssl.SSLContext

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, str]:
        connection = http.client.HTTPSConnection("localhost", self.port, timeout=30, context=self.context)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.headers, response.read().decode()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def tls_daemon(daemon_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsDaemon]:  # noqa: F811
    root = tmp_path_factory.mktemp("tls-daemon")
    pki_dir = root / "pki"
    pki_dir.mkdir()
    pki = make_pki(pki_dir)
    outputs = f"""
[mqtt]
enabled = false

[http]
port = 0
token = "{TOKEN}"
scrape_token = "{SCRAPE_TOKEN}"
cert_file = "{pki.server.cert}"
key_file = "{pki.server.key}"
"""
    app = App(load_config(write_config(root, daemon_model, cameras=1, fps=5.0, outputs=outputs)))
    app.start()
    try:
        assert app.outputs is not None and app.outputs.http is not None
        yield TlsDaemon(app.outputs.http.port, ssl.create_default_context(cafile=str(pki.ca.cert)))
    finally:
        app.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_prometheus_scrapes_over_tls_with_the_read_only_token(tls_daemon: TlsDaemon) -> None:
    status, _, text = tls_daemon.request("GET", "/metrics", headers=_bearer(SCRAPE_TOKEN))
    assert status == 200 and "linewatch_inspections_total" in text
    status, _, text = tls_daemon.request("POST", "/retrain", b"{}", {"Content-Type": "application/json",
                                                                      **_bearer(SCRAPE_TOKEN)})  # fmt: skip
    assert status == 403 and "may only GET /metrics and /healthz" in text
    assert tls_daemon.request("GET", "/healthz", headers=_bearer("wrong-token-0123456789"))[0] == 401
    _, _, text = tls_daemon.request("GET", "/metrics", headers=_bearer(TOKEN))
    assert re.search(r'linewatch_http_auth_refused_total\{kind="bearer",line="[^"]+",outcome="wrong"\} 1\.0', text)


def test_the_login_cookie_is_secure_and_wrong_login_tokens_lock_the_address_out(tls_daemon: TlsDaemon) -> None:
    """Last in the module: it leaves 127.0.0.1 locked out for a second."""
    _, headers, page = tls_daemon.request("GET", "/login")
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None and "Secure" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]

    def login(token: str) -> tuple[int, http.client.HTTPMessage, str]:
        body = urlencode({"csrf": csrf.group(1), "name": "ana", "next": "/", "token": token}).encode()
        form = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie}
        return tls_daemon.request("POST", "/login", body, form)

    for _ in range(FREE_FAILURES + 1):
        assert login("guess-0123456789abcdef")[0] == 401
    status, headers, page = login(TOKEN)
    assert status == 429 and headers["Retry-After"] == "1" and "too many wrong tokens" in page
    _, _, text = tls_daemon.request("GET", "/metrics", headers=_bearer(SCRAPE_TOKEN))  # still locked: 429
    assert "too many wrong tokens" in text

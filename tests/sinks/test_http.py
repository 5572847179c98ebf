"""The HTTP port: routing, the bearer token, body limits, and errors answered as JSON."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from linewatch.sinks import http_protocol
from linewatch.sinks.http import MAX_BODY_BYTES, HttpRequest, HttpResponse, HttpServer
from linewatch.sinks.http_protocol import MAX_HEADER_BYTES
from linewatch.sinks.throttle import FREE_FAILURES
from tests.services.certs import make_pki

TOKEN = "s3cret-token-0123456789"


def echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(200, {"method": request.method, "body": request.body.decode(), "client": request.client})


JSON = {"Content-Type": "application/json; charset=utf-8"}


def broken(_request: HttpRequest) -> HttpResponse:
    raise RuntimeError("bug in a route")


def call(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Message, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, json.loads(response.read())  # header names: any case
    finally:
        connection.close()


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[HttpServer]:
    routes = {("POST", "/echo"): echo, ("GET", "/echo"): echo, ("GET", "/broken"): broken}
    instance = HttpServer("127.0.0.1", 0, getattr(request, "param", None), routes)
    instance.start()
    yield instance
    instance.stop()


def test_routes_receive_method_body_and_client(server: HttpServer) -> None:
    status, headers, document = call(server.port, "POST", "/echo?x=1", b'{"a": 1}', JSON)
    assert status == 200 and document == {"method": "POST", "body": '{"a": 1}', "client": "127.0.0.1"}
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "fragment"),
    [
        ("GET", "/nowhere", None, {}, 404, "no such path"),
        ("POST", "/broken", b"{}", JSON, 405, "use GET"),
        ("GET", "/broken", None, {}, 500, "internal error"),
        ("POST", "/echo", b"x" * (MAX_BODY_BYTES + 1), JSON, 413, "larger than"),
        ("POST", "/echo", b"{}", {}, 415, "must be application/json"),
        ("POST", "/echo", b"{}", {"Content-Type": "text/plain"}, 415, "must be application/json"),
        ("POST", "/echo", b"a=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ],
)
def test_bad_requests_get_a_json_error(
    server: HttpServer, method: str, path: str, body: bytes | None, headers: dict[str, str], status: int, fragment: str
) -> None:
    got, _, document = call(server.port, method, path, body, headers)
    assert got == status and fragment in document["error"]


def test_a_malformed_content_length_is_a_bad_request(server: HttpServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.putrequest("POST", "/echo")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", "abc")
    connection.endheaders()
    assert connection.getresponse().status == 400  # refused by the HTTP parser, before any route runs
    connection.close()


def test_a_post_without_content_length_is_refused(server: HttpServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.putrequest("POST", "/echo")
    connection.putheader("Content-Type", "application/json")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    connection.close()


@pytest.mark.parametrize("server", [TOKEN], indirect=True)
def test_a_token_is_required_on_every_route_when_configured(server: HttpServer) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        status, response_headers, document = call(server.port, "GET", "/echo", headers=headers)
        assert status == 401 and response_headers["WWW-Authenticate"] == "Bearer" and "token" in document["error"]
    status, _, _ = call(server.port, "GET", "/nowhere")  # no route probing without the token either
    assert status == 401
    status, _, document = call(server.port, "GET", "/echo", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and document["method"] == "GET"


def test_a_taken_port_is_a_clear_error(server: HttpServer) -> None:
    with pytest.raises(OSError, match=rf"\[http\] cannot listen on 127.0.0.1:{server.port}"):
        HttpServer("127.0.0.1", server.port, None, {})


def test_without_a_token_only_loopback_host_names_are_answered(server: HttpServer) -> None:
    """A page on another site may rebind its DNS name to 127.0.0.1 (DNS rebinding); its requests then carry
    that name in Host and are refused."""
    for host in ("evil.example", "evil.example:80", f"10.0.0.5:{server.port}", ""):
        status, _, document = call(server.port, "GET", "/echo", headers={"Host": host})
        assert status == 421 and "loopback" in document["error"], host
    for host in (f"127.0.0.1:{server.port}", f"localhost:{server.port}", "LOCALHOST", f"[::1]:{server.port}"):
        status, _, _ = call(server.port, "GET", "/echo", headers={"Host": host})
        assert status == 200, host


@pytest.mark.parametrize("server", [TOKEN], indirect=True)
def test_with_a_token_any_host_name_may_be_used(server: HttpServer) -> None:
    status, _, _ = call(
        server.port, "GET", "/echo", headers={"Host": "linepc.plant.example", "Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 200


# ---- wrong-token throttling, the scrape token, TLS (issue 22) -----------------------------------------------
SCRAPE_TOKEN = "scrape-only-token-0123456789"


def _metrics(_request: HttpRequest) -> HttpResponse:
    return HttpResponse(200, {"metrics": "here"})


@pytest.fixture
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    routes = {("GET", "/metrics"): _metrics, ("GET", "/healthz"): _metrics, ("POST", "/retrain"): echo}
    instance = HttpServer("127.0.0.1", 0, TOKEN, routes, scrape_token=SCRAPE_TOKEN)
    instance.start()
    yield instance
    instance.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_wrong_tokens_lock_the_address_out_even_for_the_right_token(guarded: HttpServer) -> None:
    for _ in range(FREE_FAILURES):
        assert call(guarded.port, "GET", "/metrics", headers=_bearer("guess-0123456789abcdef"))[0] == 401
    assert call(guarded.port, "GET", "/metrics", headers=_bearer("guess-0123456789abcdef"))[0] == 401  # locks
    status, headers, document = call(guarded.port, "GET", "/metrics", headers=_bearer(TOKEN))
    assert status == 429 and headers["Retry-After"] == "1" and "try again in 1 s" in document["error"]
    assert guarded.throttle.failures["bearer"] == FREE_FAILURES + 1 and guarded.throttle.refused["bearer"] == 1


def test_the_scrape_token_reads_metrics_and_health_only(guarded: HttpServer) -> None:
    assert call(guarded.port, "GET", "/metrics", headers=_bearer(SCRAPE_TOKEN))[0] == 200
    assert call(guarded.port, "GET", "/healthz", headers=_bearer(SCRAPE_TOKEN))[0] == 200
    status, _, document = call(guarded.port, "POST", "/retrain", b"{}", {**JSON, **_bearer(SCRAPE_TOKEN)})
    assert status == 403 and "may only GET /metrics and /healthz" in document["error"]
    assert call(guarded.port, "POST", "/retrain", b"{}", {**JSON, **_bearer(TOKEN)})[0] == 200
    assert guarded.throttle.failures["bearer"] == 0  # a right token off its routes is not a guess


def test_tls_serves_https_to_a_client_that_trusts_the_ca(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    server = HttpServer(
        "127.0.0.1", 0, TOKEN, {("GET", "/metrics"): _metrics}, SCRAPE_TOKEN, (pki.server.cert, pki.server.key)
    )
    server.start()
    try:
        context = ssl.create_default_context(cafile=str(pki.ca.cert))
        connection = http.client.HTTPSConnection("localhost", server.port, timeout=5, context=context)
        connection.request("GET", "/metrics", headers=_bearer(SCRAPE_TOKEN))
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read()) == {"metrics": "here"}
        connection.close()
        plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        with pytest.raises((http.client.HTTPException, ConnectionError)):  # plain HTTP gets no answer
            plain.request("GET", "/metrics", headers=_bearer(SCRAPE_TOKEN))
            plain.getresponse()
        plain.close()
    finally:
        server.stop()


def test_a_key_that_does_not_fit_the_certificate_is_named_at_start(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    with pytest.raises(OSError, match=r"cannot serve TLS with cert_file .*server\.crt and key_file .*client\.key"):
        HttpServer("127.0.0.1", 0, TOKEN, {}, tls=(pki.server.cert, pki.client.key))
    with pytest.raises(OSError, match=r"missing\.pem"):
        HttpServer("127.0.0.1", 0, TOKEN, {}, tls=(tmp_path / "missing.pem", pki.server.key))


# ---- slow and idle connections, header limits (issue 22) -----------------------------------------------------
def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reads until EOF, ignoring what it answers)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_and_trickling_connections_are_closed_while_others_are_served(
    server: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_protocol, "REQUEST_READ_TIMEOUT_S", 1.0)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]  # connect, send nothing
    trickler = socket.create_connection(("127.0.0.1", server.port))
    started = time.monotonic()
    for byte in b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\n":  # never finishes its headers
        try:
            trickler.send(bytes([byte]))
        except OSError:
            break
        if time.monotonic() - started > 3:
            break
        time.sleep(0.1)
    assert call(server.port, "GET", "/echo")[0] == 200  # served while the others hang on
    assert _closed_within(trickler, 3.0), "a request trickled in byte by byte must not hold its connection"
    assert time.monotonic() - started < 4.5
    assert all(_closed_within(sock, 3.0) for sock in idle)
    for sock in [*idle, trickler]:
        sock.close()


def test_a_request_being_answered_is_not_cut_by_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_protocol, "REQUEST_READ_TIMEOUT_S", 0.5)

    def slow(_request: HttpRequest) -> HttpResponse:
        time.sleep(1.5)  # a slow store: the answer is late, the request was whole
        return HttpResponse(200, {"done": True})

    instance = HttpServer("127.0.0.1", 0, None, {("GET", "/slow"): slow})
    instance.start()
    try:
        status, _, document = call(instance.port, "GET", "/slow")
        assert status == 200 and document == {"done": True}
    finally:
        instance.stop()


def test_an_oversized_header_block_is_refused(server: HttpServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request("GET", "/echo", headers={"X-Padding": "x" * (MAX_HEADER_BYTES + 1024)})
        response = connection.getresponse()
        assert response.status == 431 and "larger than" in json.loads(response.read())["error"]
    finally:
        connection.close()

"""The HTTP port: routing, the bearer token, body limits, and errors answered as JSON."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from email.message import Message

import pytest

from linewatch.sinks.http import MAX_BODY_BYTES, HttpRequest, HttpResponse, HttpServer

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

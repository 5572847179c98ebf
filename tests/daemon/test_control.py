"""The HTTP control routes against a stand-in for the running daemon (the DaemonControl protocol)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from linewatch.daemon.control import control_field, control_routes
from linewatch.daemon.metrics import Health
from linewatch.retrain.runner import RetrainOutcome
from linewatch.retrain.versions import RegistryError
from linewatch.sinks.http import HttpRequest


class StandIn:
    """Answers the four calls and records what reached it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def health(self) -> Health:
        return Health(True, {"status": "ok"})

    def model_state(self) -> dict[str, object]:
        return {"version": "v1"}

    def retrain(self, reason: str | None, source: str) -> dict[str, object]:
        self.calls.append(("retrain", (reason, source)))
        return {"status": "started"}

    def rollback(self, version: str | None, by: str | None = None) -> RetrainOutcome:
        self.calls.append(("rollback", version, by))
        if version == "gone":
            raise RegistryError("no version 'gone'")
        return RetrainOutcome("rolled_back", "as asked", version=version or "v0")


def _post(path: str, body: bytes, daemon: StandIn) -> tuple[int, Any]:
    routes = control_routes(daemon, CollectorRegistry())
    response = routes[("POST", path)](HttpRequest("POST", path, body, "127.0.0.1"))
    return response.status, response.document


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"reason": "two\\nlines"}', "printable string of 1 to 200"),
        (b'{"reason": "\\u001b[31mred\\u001b[0m"}', "printable string of 1 to 200"),
        (json.dumps({"reason": "r" * 201}).encode(), "printable string of 1 to 200"),
        (b'{"reason": ""}', "printable string of 1 to 200"),
        (b'{"reson": "typo"}', "body must be a JSON object"),
        (b'{"reason": 5}', "body must be a JSON object"),
    ],
)
def test_bad_control_bodies_are_400_and_reach_nothing(body: bytes, fragment: str) -> None:
    """Issue 15, item 12: newlines and terminal escapes never reach the log or the store (MQTT refused them
    already; HTTP let them through)."""
    daemon = StandIn()
    for path in ("/retrain", "/model/rollback"):
        status, answer = _post(path, body.replace(b'"reason"', b'"version"') if "rollback" in path else body, daemon)
        assert status == 400 and fragment in answer["error"], answer
    assert daemon.calls == []
    with pytest.raises(ValueError, match=fragment):
        control_field(HttpRequest("POST", "/retrain", body, "127.0.0.1"), "reason")


def test_good_control_bodies_reach_the_daemon() -> None:
    daemon = StandIn()
    assert _post("/retrain", b'{"reason": "new coil of steel"}', daemon)[0] == 202
    assert _post("/retrain", b"", daemon)[0] == 202
    assert _post("/model/rollback", b'{"version": "v0"}', daemon)[0] == 200
    assert _post("/model/rollback", b'{"version": "gone"}', daemon)[0] == 404
    assert daemon.calls == [
        ("retrain", ("new coil of steel", "http")),
        ("retrain", (None, "http")),
        ("rollback", "v0", "http"),
        ("rollback", "gone", "http"),
    ]

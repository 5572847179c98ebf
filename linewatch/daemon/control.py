"""The daemon's HTTP control routes beyond feedback: metrics, health, model state, retrain and rollback.

The routes ask the running daemon for what they need through :class:`DaemonControl`, calls that the
composition root (the App) answers; the operator page uses the same protocol. So neither this module nor
the web mount imports the App, and a route can be tested against anything that answers those calls.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from linewatch.daemon.metrics import Health
from linewatch.feedback import FeedbackError, check_reason, decode_json
from linewatch.retrain.runner import RetrainOutcome
from linewatch.retrain.versions import RegistryError
from linewatch.sinks.http import HttpRequest, HttpResponse, Route, error

MAX_CONTROL_BYTES = 1024  # retrain and rollback requests are a few short fields


class DaemonControl(Protocol):
    """What the control routes and the operator page ask of the running daemon."""

    def health(self) -> Health: ...

    def model_state(self) -> dict[str, object]: ...  # what ``model/state`` says

    def retrain(self, reason: str | None, source: str) -> dict[str, object]: ...  # the answer to echo

    def rollback(self, version: str | None, by: str | None = None) -> RetrainOutcome: ...  # RegistryError: unknown

    products: dict[str, str]  # every camera's product now

    def set_enabled(self, camera: str, enabled: bool, by: str) -> None: ...  # applied in the background, in order

    def select_product(self, camera: str, product: str, by: str) -> None: ...  # UnknownProduct: refused


def control_field(request: HttpRequest, key: str) -> str | None:
    """The one optional string field of a control request body (``{}`` or ``{key: "..."}``); ValueError says
    what is wrong, so a typo in the key is refused instead of silently ignored."""
    try:
        document = decode_json(request.body, MAX_CONTROL_BYTES) if request.body else {}
    except FeedbackError as problem:
        raise ValueError(str(problem)) from None
    value = document.get(key) if isinstance(document, dict) else None
    if not isinstance(document, dict) or set(document) - {key} or not (value is None or isinstance(value, str)):
        raise ValueError(f'body must be a JSON object, {{}} or {{"{key}": "..."}}')
    try:  # the same rule as over MQTT: no newline or escape sequence reaches the log or the store
        return check_reason(value, key)
    except FeedbackError as problem:
        raise ValueError(str(problem)) from None


def control_routes(control: DaemonControl, metrics_registry: CollectorRegistry) -> dict[tuple[str, str], Route]:
    def metrics(_request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, generate_latest(metrics_registry), content_type=CONTENT_TYPE_LATEST)

    def healthz(_request: HttpRequest) -> HttpResponse:
        verdict = control.health()
        return HttpResponse(200 if verdict.healthy else 503, verdict.document)

    def retrain(request: HttpRequest) -> HttpResponse:
        try:
            reason = control_field(request, "reason")
        except ValueError as problem:
            return error(400, str(problem))
        answer = control.retrain(reason, "http")
        return HttpResponse(202 if answer["status"] == "started" else 409, answer)

    def rollback(request: HttpRequest) -> HttpResponse:
        try:
            version = control_field(request, "version")
        except ValueError as problem:
            return error(400, str(problem))
        try:
            outcome = control.rollback(version, "http")
        except RegistryError as problem:
            return error(404, str(problem))
        status = {"rolled_back": 200, "busy": 409}.get(outcome.status, 500)
        return HttpResponse(status, outcome.to_dict())

    return {
        ("GET", "/metrics"): metrics,
        ("GET", "/healthz"): healthz,
        ("GET", "/model"): lambda _request: HttpResponse(200, control.model_state()),
        ("POST", "/retrain"): retrain,
        ("POST", "/model/rollback"): rollback,
    }

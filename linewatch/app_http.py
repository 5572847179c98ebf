"""The App's HTTP routes beyond feedback (metrics, health, model state, retrain and rollback requests),
and the read-only view of the running App that the metrics collector and the health check share.

Kept apart from app.py so the composition root stays about starting and stopping things; everything
here only reads the App or calls its public control methods.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from linewatch.feedback import FeedbackError, decode_json
from linewatch.journal import JournalError
from linewatch.metrics import Health, health
from linewatch.retrain.versions import RegistryError
from linewatch.sinks.http import HttpRequest, HttpResponse, Route, error
from linewatch.types import CameraStatus

if TYPE_CHECKING:
    from linewatch.app import App

MAX_CONTROL_BYTES = 1024  # retrain and rollback requests are a few short fields
SCORING_STALL_S = 30.0  # cameras deliver, yet no batch was journaled for this long: /healthz says unhealthy
BROKER_GRACE_S = 30.0  # after a start, a broker not connected yet is "connecting", not a fault


class AppState:
    """What the metrics collector (:class:`linewatch.metrics.Components`) and ``/healthz`` read."""

    def __init__(self, app: App) -> None:
        self._app = app

    def camera_states(self) -> dict[str, tuple[CameraStatus, Any]]:
        return {name: (runtime.status, runtime.reader.stats) for name, runtime in list(self._app.cameras.items())}

    def dropped_frames(self) -> dict[tuple[str, str], int]:
        return self._app.batcher.drops() if self._app.batcher is not None else {}

    def forwarders(self) -> dict[str, tuple[int, int, bool]]:
        outputs = self._app.outputs
        backlogs = self._backlogs()
        if outputs is None or backlogs is None:
            return {}  # the families go missing from the scrape, the rest is still served
        return {r.name: (backlogs.get(r.name, 0), r.stats.failures, r.failing) for r in outputs.runners}

    def _backlogs(self) -> dict[str, int] | None:
        """Per forwarder; None when the journal cannot be read right now (never an exception in a scrape)."""
        if self._app.outputs is None:
            return None
        try:
            return self._app.outputs.backlogs()
        except JournalError:
            return None

    def mqtt_state(self) -> tuple[bool, dict[tuple[str, str], int]] | None:
        link = self._app.outputs.link if self._app.outputs is not None else None
        return None if link is None else (link.connected, dict(link.stats.rejected))

    def evidence_dropped(self) -> dict[str, int]:
        writer = self._app.outputs.evidence if self._app.outputs is not None else None
        if writer is None:
            return {}
        stats = writer.stats
        return {**stats.dropped, "write_failed": stats.failed}

    def disk_free(self) -> dict[str, int]:
        return self._app.outputs.disk_free() if self._app.outputs is not None else {}

    def health(self) -> Health:
        """The cameras, the broker, the store, the backlog, the model, and whether scoring makes progress."""
        app = self._app
        assert app.outputs is not None
        cameras = {name: runtime.status if runtime.reported else None for name, runtime in list(app.cameras.items())}
        flowing = any(status == CameraStatus.ONLINE for status in cameras.values())
        link = app.outputs.link
        if link is None:
            broker = "disabled"
        elif link.connected:
            broker = "connected"
        else:  # not up yet after a start (within the grace) is not a fault; lost later, or never within it, is
            starting = link.stats.connects == 0 and app.clock.monotonic() - app.started_mono < BROKER_GRACE_S
            broker = "connecting" if starting else "disconnected"
        return health(
            cameras,
            broker,
            not app.outputs.store_failing(),
            self._backlogs(),
            app.serving_version,
            flowing and app.clock.monotonic() - app.last_progress > SCORING_STALL_S,
            lambda: {
                "line": f"{app.config.site.site}/{app.config.site.line}",
                "uptime_s": round(app.clock.monotonic() - app.started_mono, 1),
                "frames": {name: stats.frames for name, (_status, stats) in self.camera_states().items()},
                "retrain": app.retrain_news,
            },
        )


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
    return value


def control_routes(app: App) -> dict[tuple[str, str], Route]:
    def metrics(_request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, generate_latest(app.metrics_registry), content_type=CONTENT_TYPE_LATEST)

    def healthz(_request: HttpRequest) -> HttpResponse:
        verdict = app.state.health()
        return HttpResponse(200 if verdict.healthy else 503, verdict.document)

    def retrain(request: HttpRequest) -> HttpResponse:
        try:
            reason = control_field(request, "reason")
        except ValueError as problem:
            return error(400, str(problem))
        answer = app.retrain(reason, "http")
        return HttpResponse(202 if answer["status"] == "started" else 409, answer)

    def rollback(request: HttpRequest) -> HttpResponse:
        try:
            version = control_field(request, "version")
        except ValueError as problem:
            return error(400, str(problem))
        assert app.retrainer is not None
        try:
            outcome = app.retrainer.rollback(version)
        except RegistryError as problem:
            return error(404, str(problem))
        status = {"rolled_back": 200, "busy": 409}.get(outcome.status, 500)
        return HttpResponse(status, outcome.to_dict())

    return {
        ("GET", "/metrics"): metrics,
        ("GET", "/healthz"): healthz,
        ("GET", "/model"): lambda _request: HttpResponse(200, app.model_state()),
        ("POST", "/retrain"): retrain,
        ("POST", "/model/rollback"): rollback,
    }

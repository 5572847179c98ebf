"""The read-only view of the running daemon that the metrics collector and ``/healthz`` share.

It reads the composition root through :class:`RunningParts`, the few attributes it needs, so neither this
module nor its readers import the App.
"""

from __future__ import annotations

from typing import Any, Protocol

from linewatch.clock import Clock
from linewatch.config import Config
from linewatch.daemon.cameras import CameraRuntime
from linewatch.daemon.metrics import Health, health
from linewatch.daemon.outputs import Outputs
from linewatch.daemon.recording import JournalRecorder
from linewatch.daemon.remote_scoring import RemoteScoring
from linewatch.pipeline.batcher import Batcher
from linewatch.pipeline.journal.records import JournalError
from linewatch.pipeline.remote import RemoteStats
from linewatch.sinks.store_retention import StoreRetentionStats
from linewatch.types import CameraStatus

SCORING_STALL_S = 30.0  # cameras deliver, yet no batch was journaled for this long: /healthz says unhealthy
BROKER_GRACE_S = 30.0  # after a start, a broker not connected yet is "connecting", not a fault


class RunningParts(Protocol):
    """What the view reads of the running daemon (the App has these); None until started."""

    config: Config
    clock: Clock
    cameras: dict[str, CameraRuntime]
    batcher: Batcher | None
    outputs: Outputs | None
    recorder: JournalRecorder | None
    started_mono: float
    last_progress: float  # monotonic time of the last journaled batch
    retrain_news: dict[str, object] | None
    remote: RemoteScoring | None  # [scoring] runtime = "triton"

    @property
    def serving_version(self) -> str: ...


class AppState:
    """What the metrics collector (:class:`linewatch.daemon.metrics.Components`) and ``/healthz`` read."""

    def __init__(self, app: RunningParts) -> None:
        self._app = app

    def camera_states(self) -> dict[str, tuple[CameraStatus, Any]]:
        return {name: (runtime.status, runtime.reader.stats) for name, runtime in list(self._app.cameras.items())}

    def dropped_frames(self) -> dict[tuple[str, str], int]:
        """(camera, reason) -> frames: the batcher's drops and those the journal could not take."""
        app = self._app
        drops = app.batcher.drops() if app.batcher is not None else {}
        return {**drops, **(app.recorder.dropped() if app.recorder is not None else {})}

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

    def journal_dropped(self) -> dict[str, int]:
        keeper = self._app.outputs.keeper if self._app.outputs is not None else None
        return {} if keeper is None else dict(keeper.stats.dropped)

    def disk_free(self) -> dict[str, int]:
        return self._app.outputs.disk_free() if self._app.outputs is not None else {}

    def auth_attempts(self) -> dict[tuple[str, str], int]:
        http = self._app.outputs.http if self._app.outputs is not None else None
        if http is None:
            return {}
        throttle = http.throttle
        counts = {(kind, "wrong"): count for kind, count in throttle.failures.items()}
        counts.update({(kind, "throttled"): count for kind, count in throttle.refused.items()})
        return counts

    def store_retention(self) -> StoreRetentionStats | None:
        retention = self._app.outputs.store_retention if self._app.outputs is not None else None
        return None if retention is None else retention.stats

    def remote_scoring(self) -> RemoteStats | None:
        return self._app.remote.stats if self._app.remote is not None else None

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
            app.recorder.error if app.recorder is not None else None,
            (app.outputs.keeper is not None and app.outputs.keeper.stats.dropping, self.journal_dropped()),
            extra=lambda: {
                "line": f"{app.config.site.site}/{app.config.site.line}",
                "uptime_s": round(app.clock.monotonic() - app.started_mono, 1),
                "frames": {name: stats.frames for name, (_status, stats) in self.camera_states().items()},
                "retrain": app.retrain_news,
            },
            scoring_server=app.remote.health() if app.remote is not None else None,
        )

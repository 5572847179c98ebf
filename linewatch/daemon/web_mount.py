"""The operator page mounted on the daemon: its backend (:class:`linewatch.web.site.WebBackend`).

The composition root hands over what the page needs (the control calls of :class:`DaemonControl`, the
journal, the store's engine, the model registry, the live frames) instead of itself, so this module does
not import the App. Labels go through :func:`linewatch.daemon.feedback.submit` exactly as MQTT feedback
does (checked against the journal, journaled, forwarded to the store in order), with the source ``web``.
"""

from __future__ import annotations

import logging
from datetime import timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import tzlocal
from sqlalchemy import Engine

from linewatch.clock import Clock
from linewatch.config import Config
from linewatch.daemon.control import DaemonControl
from linewatch.daemon.feedback import submit
from linewatch.daemon.recipes import UnknownProduct
from linewatch.feedback import FeedbackRequest
from linewatch.pipeline.journal.outbox import Journal
from linewatch.retrain.store import list_runs, list_versions
from linewatch.retrain.versions import ModelRegistry, RegistryError
from linewatch.sinks.db import DatabaseError
from linewatch.sinks.throttle import AuthThrottle
from linewatch.types import Label
from linewatch.web.auth import SessionKeeper, load_secret
from linewatch.web.live import LiveFrames
from linewatch.web.logins import LOGINS_FILE, LoginRegistry
from linewatch.web.site import Site, WebSettings

log = logging.getLogger(__name__)
SECRET_FILE = "web-secret"


class AppWeb:
    """What the page reads from and asks of the running daemon."""

    def __init__(
        self,
        config: Config,
        control: DaemonControl,
        journal: Journal,
        clock: Clock,
        engine: Engine,
        registry: ModelRegistry,
        live: LiveFrames,
    ) -> None:
        self._control = control
        self._journal = journal
        self._clock = clock
        self._registry = registry
        self.engine = engine
        self.line = f"{config.site.site}/{config.site.line}"
        self._camera_names = [camera.name for camera in config.cameras]
        self.evidence_dir: Path = config.evidence_dir
        self.live = live

    @property
    def cameras(self) -> list[tuple[str, str]]:
        """(name, product now) of every camera: a changeover shows at once."""
        return [(name, self._control.products[name]) for name in self._camera_names]

    def set_enabled(self, camera: str, enabled: bool, user: str | None) -> None:
        self._control.set_enabled(camera, enabled, f"web: {user}" if user else "web")

    def select_product(self, camera: str, product: str, user: str | None) -> tuple[bool, str]:
        try:
            self._control.select_product(camera, product, f"web: {user}" if user else "web")
        except UnknownProduct as problem:
            return False, f"not changed over: {problem.detail}"
        return True, f"camera {camera} judges its parts as {product!r} from its next frame"

    def status(self) -> dict[str, Any]:
        return self._control.health().document

    def model(self) -> dict[str, Any]:
        return self._control.model_state()

    def label(self, request: FeedbackRequest) -> Label:
        label = submit(self._journal, self._clock, request, "web")
        log.info("label %s on %s %s from the web page (%s)", label.label, label.target, label.target_id, label.user)
        return label

    def versions(self) -> list[dict[str, Any]]:
        """The folder's versions, newest first, with the store's row (status, thresholds, gate) where there is
        one; the folder alone while the store cannot be read (rollback works from the folder)."""
        try:
            rows = {Path(row["artifact_path"]).name: row for row in list_versions(self.engine)}
        except DatabaseError as problem:
            log.warning("model versions without the store's records: %s", problem)
            rows = {}
        listed = []
        for entry in reversed(self._registry.versions()):
            row = rows.get(entry.name, {})
            listed.append(
                {
                    **row,
                    "name": entry.name,
                    "created_at": entry.created_at or row.get("created_at"),
                    "active": entry.active,
                }
            )
        return listed

    def runs(self, limit: int) -> list[dict[str, Any]]:
        return list_runs(self.engine, limit)

    def rollback(self, version: str, user: str | None) -> tuple[bool, str]:
        try:
            outcome = self._control.rollback(version, f"web: {user}" if user else "web")
        except RegistryError as problem:
            return False, str(problem)
        return outcome.status == "rolled_back", outcome.reason

    def retrain(self, reason: str | None, user: str | None) -> tuple[bool, str]:
        answer = self._control.retrain(reason, f"web: {user}" if user else "web")
        if answer["status"] == "started":
            return True, "retraining started; its result appears here and on model/state when it ends"
        return False, f"not started: {answer.get('reason') or answer['status']}"


def build_site(config: Config, backend: AppWeb, throttle: AuthThrottle) -> Site:
    """The page for this daemon, its sessions signed with a secret kept in the data folder; ``throttle`` is the
    HTTP port's, so wrong tokens count alike on the JSON routes and the page."""
    logins = LoginRegistry(config.site.data_dir / LOGINS_FILE, config.web.idle_minutes * 60)
    keeper = SessionKeeper(
        load_secret(config.site.data_dir / SECRET_FILE), config.http.token, config.web.session_hours * 3600, logins
    )
    settings = WebSettings(
        refresh_s=config.web.refresh_s,
        review_window=timedelta(hours=config.web.review_hours),
        close_call_band=config.evidence.close_call_band,
        timezone=ZoneInfo(config.web.timezone) if config.web.timezone else _local_zone(),
        samples_dir=config.samples_dir,
    )
    return Site(backend, keeper, settings, throttle)


def _local_zone() -> tzinfo:
    """The machine's own time zone with its daylight-saving rules (what the operators' wall clocks show); a
    fixed offset read at start would be an hour off for half the year."""
    return tzlocal.get_localzone()

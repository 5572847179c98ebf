"""What people and systems ask of the running daemon: camera switches, retrain and rollback requests, labels
over MQTT, a config reload. A part of :class:`linewatch.daemon.app.App` (a mixin, so app.py stays about
starting and stopping), and the one place every channel's request goes through, so each is recorded the
same way: an :class:`~linewatch.types.Action` journaled with who asked (``by``: "web: erin",
"mqtt: operator-anna", "http", "reload"), which the store keeps and the page's Models view lists.

Recording an action never undoes or blocks the action: with the journal unwritable (a full disk) the camera
still switches and the failure is logged, as the page and the health check already report the disk.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from linewatch.clock import Clock
from linewatch.config import Config
from linewatch.daemon.cameras import CameraRuntime
from linewatch.daemon.feedback import submit_many
from linewatch.daemon.metrics import PipelineMetrics
from linewatch.daemon.outputs import Outputs
from linewatch.daemon.parts import PartsDesk
from linewatch.daemon.recipes import ProductSelections, Selection, UnknownProduct
from linewatch.feedback import FeedbackError
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import JournalError
from linewatch.pipeline.scorer import Scorer, ScoringWorker
from linewatch.retrain.runner import Retrainer, RetrainOutcome
from linewatch.retrain.service import RetrainService
from linewatch.retrain.versions import RegistryError
from linewatch.sinks.mqtt import LabelCommand, RejectedPayload
from linewatch.types import Action, CameraStatus

log = logging.getLogger(__name__)
MAX_TRIGGER_CHARS = 200
MAX_DETAIL_CHARS = 300


class LineCommands:
    """Requests from MQTT (the InboundHandlers protocol), HTTP, the page and ``linewatch reload``."""

    config: Config
    clock: Clock
    journal: Journal | None
    outputs: Outputs | None
    cameras: dict[str, CameraRuntime]
    products: dict[str, str]
    selections: ProductSelections
    parts: PartsDesk
    metrics: PipelineMetrics
    worker: ScoringWorker | None
    retrainer: Retrainer | None
    retraining: RetrainService | None
    _serving: tuple[Scorer, str] | None
    _lock: threading.Lock
    _stopping: bool
    _control: ThreadPoolExecutor

    def _active_thresholds(self, for_gate: bool = False) -> dict[str, float]: ...
    def _publish_model_state(self) -> None: ...
    def _on_status(self, camera: str, status: CameraStatus) -> None: ...

    # ---- the record --------------------------------------------------------------------------------
    def record_action(self, kind: str, by: str, camera: str | None = None, detail: str | None = None) -> None:
        """Journal who did what (ACTION_KINDS); logged, never raised, when the journal cannot take it."""
        if self.journal is None:
            return
        detail = detail[:MAX_DETAIL_CHARS] if detail else None
        action = Action(uuid.uuid4().hex, kind, by, self.clock.now(), camera, detail)
        try:
            self.journal.append_batch((), (), (), [action])
        except JournalError as problem:
            log.error("%s by %s (%s) done but not recorded: %s", kind, by, camera or detail or "-", problem)

    # ---- cameras -----------------------------------------------------------------------------------
    def set_camera_enabled(self, name: str, enabled: bool, by: str = "reload") -> None:
        """Start or stop a camera's reader; recorded when it changes anything."""
        with self._lock:
            runtime = self.cameras[name]
            running = runtime.thread is not None and runtime.thread.is_alive()
            if enabled and self._stopping:
                log.info("camera %s: not enabled, the daemon is stopping", name)
                return
            if enabled and not running:
                runtime.stop = threading.Event()
                runtime.thread = runtime.reader.start(runtime.stop)
            elif not enabled and running:
                runtime.stop.set()
                runtime.thread.join(timeout=10)
                self._on_status(name, CameraStatus.DISABLED)
                log.info("camera %s: disabled", name)
            else:
                return
        if self.outputs is not None:
            self.outputs.camera_enabled(name, enabled)
        self.record_action("camera_enabled" if enabled else "camera_disabled", by, name)

    def reload(self, config: Config) -> list[str]:
        """Apply the fields that are safe to change while running (threshold overrides, camera enable
        flags) and report what changed. Anything else needs a restart and is reported as ignored."""
        changes = []
        if config.model.thresholds != self.config.model.thresholds and self.worker is not None:
            # Both the scorer in use and one a swap is about to bring in (they are the same most of the time).
            for scorer in {self.worker.scorer, *([self._serving[0]] if self._serving else [])}:
                scorer.set_threshold_overrides(dict(config.model.thresholds))
            self.metrics.set_thresholds(self._active_thresholds())
            self._publish_model_state()
            changes.append(f"thresholds {dict(config.model.thresholds) or 'calibrated'}")
        old_cameras = {c.name: c for c in self.config.cameras}
        new_cameras = {c.name: c for c in config.cameras}
        if set(old_cameras) != set(new_cameras):
            changes.append("ignored: cameras added or removed (restart to apply)")
        for name in sorted(set(old_cameras) & set(new_cameras)):
            if old_cameras[name].enabled != new_cameras[name].enabled:
                self.set_camera_enabled(name, new_cameras[name].enabled, "reload")
                changes.append(f"camera {name} {'enabled' if new_cameras[name].enabled else 'disabled'}")
        self.config = self.config.model_copy(
            update={
                "model": self.config.model.model_copy(update={"thresholds": config.model.thresholds}),
                "cameras": [
                    camera.model_copy(update={"enabled": new_cameras[camera.name].enabled})
                    if camera.name in new_cameras
                    else camera
                    for camera in self.config.cameras
                ],
            }
        )
        return changes

    def select_product(self, camera: str, product: str, by: str = "mqtt") -> None:
        """Change ``camera`` over to ``product`` from its next frame (recipes.py); remembered across restarts,
        echoed on ``P/<camera>/product`` and recorded. Raises UnknownProduct for a product the model in service
        does not know (or a camera that does not exist), naming what it knows."""
        if camera not in self.cameras:
            raise UnknownProduct(f"no camera {camera!r}; the cameras are {sorted(self.cameras)}")
        known = self._serving_products()
        if product not in known:
            raise UnknownProduct(f"the model in service knows no product {product!r}; it knows {known}")
        with self._lock:
            runtime = self.cameras[camera]
            if runtime.reader.product == product:
                return
            runtime.reader.product = product  # read by the camera's thread for each new frame
            self.products[camera] = product
        log.info("camera %s: changed over to %r by %s", camera, product, by)
        at = self.clock.now().isoformat(timespec="seconds")
        self.selections.remember(camera, Selection(product, runtime.config.product, by, at))
        if self.outputs is not None:
            self.outputs.camera_product(camera, product)
        self.record_action("product_selected", by, camera, product)

    def _serving_products(self) -> list[str]:
        """The products of the model in service, or of the one a swap is about to bring in."""
        if self._serving is not None:
            return list(self._serving[0].products)
        return list(self.worker.scorer.products) if self.worker is not None else []

    # ---- models ------------------------------------------------------------------------------------
    def rollback(self, version: str | None, by: str | None = None) -> RetrainOutcome:
        """Put a previous version back into service (``POST /model/rollback``, the operator page)."""
        if self.retrainer is None:
            raise RegistryError("the daemon is still starting")
        outcome = self.retrainer.rollback(version, by)
        self.record_action("rollback", by or "unknown", None, f"{version or 'previous'}: {outcome.status}")
        return outcome

    def retrain(self, reason: str | None, source: str = "mqtt") -> dict[str, object]:
        """Start a retraining in the background (MQTT ``retrain/set``, ``POST /retrain``, the page); the
        answer is echoed. ``source`` is who asked ("mqtt: anna", "web: erin", "http")."""
        if self.retraining is None:
            return {"status": "refused", "reason": "the daemon is not running yet", "requested": reason}
        log.info("retrain requested by %s (%s)", source, reason or "no reason given")
        trigger = f"{source}: {reason}"[:MAX_TRIGGER_CHARS] if reason else source  # the reason goes on record
        answer = {**self.retraining.request(trigger), "requested": reason}
        self.record_action("retrain_requested", source, None, f"{answer['status']}: {reason or 'no reason given'}")
        return answer

    # ---- what arrives over MQTT (InboundHandlers); runs on the MQTT command worker's thread -------------
    def feedback(self, commands: Sequence[LabelCommand]) -> list[RejectedPayload | None]:
        assert self.journal is not None
        outcomes = submit_many(self.journal, self.clock, [(c.request, c.camera) for c in commands], "mqtt")
        return [RejectedPayload(o.reason, str(o)) if isinstance(o, FeedbackError) else None for o in outcomes]

    def trigger(self, name: str, part_id: str | None, by: str = "mqtt") -> str:
        """A part arrived (MQTT ``<name>/trigger``): arm the station or triggered camera; TriggerError refuses."""
        return self.parts.trigger(name, part_id, by)

    def set_enabled(self, camera: str, enabled: bool, by: str = "mqtt") -> None:
        if camera not in self.cameras:
            raise RejectedPayload("unknown_camera")
        # Stopping a reader may take seconds (a blocked read): never on the MQTT network thread. One worker
        # applies the commands in arrival order, so "false" then "true" ends enabled, as the echo says.
        self._control.submit(self.set_camera_enabled, camera, enabled, by)

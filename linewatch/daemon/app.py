"""Composition root: builds the daemon from the config, starts it in order, stops it in reverse.

Start order: journal -> outputs (store, forwarders, broker, evidence, HTTP; see outputs.py) -> model
(loaded, warmed up) -> batcher -> scorer thread -> cameras. Stopping goes in reverse: cameras stop
capturing, the scorer drains what the batcher holds, the outputs take no more work, forwarders flush,
the broker hears ``stopped`` (the link outlives the forwarders so they can flush through it), the
journal closes. A verdict is durable in the journal before anything else sees it.

What people and systems ask of it (camera switches, retrain and rollback, MQTT labels, reload) is
commands.py, a part of the App.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry

from linewatch.clock import Clock, SystemClock
from linewatch.config import CameraSection, Config
from linewatch.daemon.cameras import CameraRuntime, SourceFactory, make_source
from linewatch.daemon.commands import LineCommands
from linewatch.daemon.control import control_routes
from linewatch.daemon.episodes import end_episodes_left_open, end_open_episodes
from linewatch.daemon.metrics import RETRAIN_RESULTS, Health, PipelineMetrics, StateCollector
from linewatch.daemon.outputs import Outputs
from linewatch.daemon.parts import PartsDesk, PlantAdapter
from linewatch.daemon.recipes import SELECTIONS_FILE, ProductSelections
from linewatch.daemon.recording import JournalRecorder
from linewatch.daemon.remote_scoring import RemoteScoring
from linewatch.daemon.state import AppState
from linewatch.daemon.web_mount import AppWeb, build_site
from linewatch.model.preprocess import resize_rgb
from linewatch.model.training import calibration_warnings
from linewatch.pipeline.batcher import Batcher, SlotPolicy
from linewatch.pipeline.camera.reader import CameraReader
from linewatch.pipeline.events import EpisodePolicy, step, tick
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import JournalError
from linewatch.pipeline.scorer import Scorer, ScoringWorker
from linewatch.retrain.launch import ChildCommand
from linewatch.retrain.runner import Retrainer
from linewatch.retrain.service import RetrainService
from linewatch.retrain.store import last_run
from linewatch.retrain.versions import ModelRegistry, model_version
from linewatch.sinks.db import DatabaseError
from linewatch.types import Batch, CameraStatus, Event, Frame, PartResult, Verdict
from linewatch.web.live import LiveFrames

if TYPE_CHECKING:
    from linewatch.plant.opcua import OpcUaServer

log = logging.getLogger(__name__)


class App(LineCommands):
    """The running daemon. ``start``/``stop`` are called once each; ``stop`` is safe after a failed start."""

    def __init__(
        self,
        config: Config,
        clock: Clock | None = None,
        source_factory: SourceFactory = make_source,
        stop_event: threading.Event | None = None,
        outputs_factory: Callable[[Config, Journal, Clock, App], Outputs] = Outputs,
        retrain_command: ChildCommand | None = None,
        on_progress: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.stop_event = stop_event or threading.Event()
        # In every inspection id (<camera>-<boot>-<seq>): 64 random bits, so that the ids of a line's many starts
        # never meet (a store keys them per line: sinks/db_schema.py); with 32 bits, 10,000 starts meet at 1 %.
        self.boot_id = uuid.uuid4().hex[:16]
        self._source_factory = source_factory
        self._outputs_factory = outputs_factory
        self._policy = EpisodePolicy(
            debounce_n=config.events.debounce_n,
            debounce_m=config.events.debounce_m,
            end_after_s=config.events.end_after_s,
            update_min_interval_s=config.events.update_min_interval_s,
        )
        # Shutdown is staged so nothing captured is lost: stop_event (a signal) -> cameras stop ->
        # the scorer drains what is pending (_drain) -> outputs flush -> journal.
        self._drain = threading.Event()
        self._shutdown_thread: threading.Thread | None = None
        self._input_size = 0
        self.journal: Journal | None = None
        self.recorder: JournalRecorder | None = None
        self.outputs: Outputs | None = None
        self.batcher: Batcher | None = None
        self.worker: ScoringWorker | None = None
        self._worker_thread: threading.Thread | None = None
        self.cameras: dict[str, CameraRuntime] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._control = ThreadPoolExecutor(max_workers=1, thread_name_prefix="control")
        self._retrain_command = retrain_command
        self._on_progress = on_progress  # told after every journaled batch (the systemd watchdog)
        self.registry: ModelRegistry | None = None
        self.retrainer: Retrainer | None = None
        self.retraining: RetrainService | None = None
        self._active_path = config.model.path
        self._serving: tuple[Scorer, str] | None = None  # set by a swap: what model/state describes
        self.retrain_news: dict[str, object] | None = None
        self.live = LiveFrames()  # the latest frame of every camera, for the operator page's live view
        self.parts = PartsDesk(config, self.clock, self._journal_parts, self._camera_status)
        self.parts.listeners.append(self._observe_part)
        self.opcua: OpcUaServer | None = None
        self.products = {camera.name: camera.product for camera in config.cameras}  # now: recipes.py
        self.selections = ProductSelections(config.site.data_dir / SELECTIONS_FILE)
        self._daemon_lock: int | None = None
        self.metrics_registry = CollectorRegistry()
        self.metrics = PipelineMetrics(self.metrics_registry, config.site.line, [c.name for c in config.cameras])
        self.remote: RemoteScoring | None = None  # [scoring] runtime = "triton": the scoring server
        if config.scoring.runtime == "triton":
            self.remote = RemoteScoring(config, self.stop_event, self.metrics.observe_remote)
        self.state = AppState(self)
        self.metrics_registry.register(StateCollector(self.state, config.site.line))
        self.last_progress = self.clock.monotonic()  # of the last journaled batch: /healthz sees a stuck scorer
        self.started_mono = self.clock.monotonic()

    # ---- start ---------------------------------------------------------------------------------
    def start(self, scorer_thread: bool = True) -> None:
        """Start everything. With ``scorer_thread=False`` the caller runs :meth:`run_scorer` itself:
        ``linewatch run`` scores on the main thread, where PyTorch's CPU kernels ran about 30% faster
        than on a secondary thread in our measurements (OpenMP's spinning team is kept hot there)."""
        config = self.config
        config.site.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.journal = Journal(config.journal_path, self.clock)
        except JournalError as problem:  # the file is named; say which setting points at it
            raise JournalError(f"[journal] path: {problem}") from problem
        self.recorder = JournalRecorder(self.journal, self.clock)
        self.outputs = self._outputs_factory(config, self.journal, self.clock, self)
        self.outputs.on_alert_sent = self.metrics.observe_alert
        self.registry = ModelRegistry(config.versions_dir, config.model.path)
        try:
            self._daemon_lock = self.registry.hold_daemon_lock()
        except OSError as problem:  # a read-only models folder: inspection still works, retraining will say why
            log.warning("cannot write to %s (%s): retraining and rollback will fail", config.versions_dir, problem)
        self._active_path = self.registry.active()  # the configured model until a retrain or rollback
        if self._active_path != self.registry.initial and self.registry.initial not in self.registry.history():
            log.warning(
                "[model] path %s is not what this line serves: %s names %s (a retrain or rollback chose it); "
                "to serve the configured model, `linewatch model rollback %s`",
                config.model.path,
                self.registry.active_file,
                self._active_path,
                config.model.path.name,
            )
        end_episodes_left_open(self.journal)  # after the lock: never another running daemon's episodes
        # Only now the forwarders and the journal keeper: delivered and older than keep_days, a crashed run's
        # open episode (a line down for a week) would be pruned before its end was journaled.
        self.outputs.start()
        scorer = self._load_scorer(self._active_path, starting=True)
        # A later model of another input size resizes again in the scorer; nothing breaks, it costs time.
        self._input_size = scorer.input_size
        for camera in config.cameras:
            if camera.product not in scorer.products:
                raise ValueError(f"[[cameras]] {camera.name}: product {camera.product!r} is not in the model "
                                 f"{self._active_path}, which knows {scorer.products}")  # fmt: skip
            self.products[camera.name] = self.selections.start_product(camera.name, camera.product, scorer.products)
        self.batcher = Batcher(config.scoring.batch_max_size, config.scoring.batch_max_wait_ms / 1000, self.clock)
        self.worker = ScoringWorker(
            scorer,
            model_version(self._active_path),
            self.batcher.next_batch,
            self._record,
            self._drain,
            self.clock,
            self.boot_id,
        )
        if self.remote is None:  # a scoring server is warm already; one away with fallback "none" would block start
            self.worker.warm_up(config.scoring.batch_max_size)
        self.last_progress = self.clock.monotonic()
        self.metrics.set_model(self.worker.model_version, scorer.backbone_spec.model_name, self._active_thresholds())
        self._start_retraining()
        self._publish_model_state()
        if config.opcua.enabled:  # before the cameras: no part is judged before the server counts from here
            self._start_opcua()
        if scorer_thread:
            self._worker_thread = threading.Thread(target=self.worker.run, name="scorer")
            self._worker_thread.start()
        for camera in config.cameras:
            self.batcher.add_camera(camera.name, SlotPolicy(camera.policy), camera.queue_size)
            runtime = self._camera_runtime(camera)
            self.cameras[camera.name] = runtime
            self.outputs.camera_enabled(camera.name, camera.enabled)
            self.outputs.camera_product(camera.name, self.products[camera.name])
            if camera.enabled:
                runtime.thread = runtime.reader.start()
            else:
                self._on_status(camera.name, CameraStatus.DISABLED)
                log.info("camera %s: disabled in the config", camera.name)
        if self.outputs.http is not None:  # once the cameras exist: health and metrics read them
            self.outputs.http.add_routes(control_routes(self, self.metrics_registry))
            if self.config.web.enabled:
                backend = AppWeb(
                    self.config, self, self.journal, self.clock, self.outputs.engine, self.registry, self.live
                )
                site = build_site(self.config, backend, self.outputs.http.throttle)
                self.outputs.http.set_site(site.app)
        self._shutdown_thread = threading.Thread(target=self._stop_capture_on_signal, name="shutdown")
        self._shutdown_thread.start()
        self.parts.start()
        log.info("ready: %d camera(s), model %s", len(self.cameras), self.worker.model_version)

    def _stop_capture_on_signal(self) -> None:
        """Once stop is asked for: stop every camera, then let the scorer drain what they delivered."""
        self.stop_event.wait()
        with self._lock:
            self._stopping = True  # from here on no command may start a camera again
            runtimes = list(self.cameras.values())
        for runtime in runtimes:
            runtime.stop.set()
        for runtime in runtimes:
            if runtime.thread is not None:
                runtime.thread.join(timeout=10)
        self._drain.set()

    @property
    def serving_version(self) -> str:
        """The model version in service, or about to be at the next batch after a swap."""
        assert self.worker is not None
        return self._serving[1] if self._serving is not None else self.worker.model_version

    def model_state(self) -> dict[str, object]:
        """What ``model/state`` says: the model in service and the latest retraining news (retained for
        HMIs and MES)."""
        assert self.worker is not None
        scorer = self._serving[0] if self._serving is not None else self.worker.scorer
        version = self._serving[1] if self._serving is not None else self.worker.model_version
        spec = scorer.backbone_spec
        return {
            "version": version,
            "path": str(self._active_path),
            "backbone": spec.model_name,
            "pretrained": spec.pretrained,
            "backbone_sha256": spec.weights_sha256,
            "random_weights": spec.is_random,
            "runtime": f"{scorer.runtime} {scorer.precision}",
            "thresholds": {product: scorer.threshold(product) for product in scorer.products},
            "calibration_warnings": calibration_warnings(scorer.info),
            "trained_at": scorer.info.created_at,
            "status": "active",
            "retrain": self.retrain_news,
        }

    def health(self) -> Health:
        """The health verdict that ``/healthz`` and the operator page show (see :class:`AppState`)."""
        return self.state.health()

    def _publish_model_state(self) -> None:
        if self.outputs is not None:
            self.outputs.model_state(self.model_state())

    # ---- models: loading, retraining, rollback -------------------------------------------------------
    def _load_scorer(self, path: Path, starting: bool = False) -> Scorer:
        model, scoring = self.config.model, self.config.scoring
        if self.remote is not None:
            scorer = self.remote.scorer(path, starting)
        else:
            scorer = Scorer.from_artifact(
                path, model.models_dir, model.device, scoring.precision, model.weights, scoring.runtime
            )
        scorer.set_threshold_overrides(dict(model.thresholds))
        if scorer.backbone_spec.is_random:
            log.warning("model %s runs on RANDOM backbone weights: a demo model, not for real parts", path)
        return scorer

    def _swap_model(self, scorer: Scorer, path: Path, version: str) -> None:
        """Queue the new model for the next batch boundary; ``model/state`` describes it from now on."""
        assert self.worker is not None
        self.worker.swap(scorer, version)
        self._active_path = path
        self._serving = (scorer, version)
        log.info("model %s goes into service at the next batch", version)
        self.metrics.set_model(version, scorer.backbone_spec.model_name, self._active_thresholds())
        self._publish_model_state()

    def _on_retrain_news(self, news: dict[str, object]) -> None:
        self.retrain_news = news
        if news.get("status") in RETRAIN_RESULTS:
            self.metrics.observe_retrain(str(news["status"]), self.clock.now().timestamp())
        self._publish_model_state()

    def _active_thresholds(self, for_gate: bool = False) -> dict[str, float]:
        scorer = self._serving[0] if self._serving is not None else self.worker.scorer  # type: ignore[union-attr]
        pick = scorer.gate_threshold if for_gate else scorer.threshold
        return {product: pick(product) for product in scorer.products}

    def _start_retraining(self) -> None:
        assert self.outputs is not None
        self.retrainer = Retrainer(
            self.config,
            self.registry,
            self.outputs.engine,
            self.clock,
            self._load_scorer,
            self._swap_model,
            self._on_retrain_news,
            lambda: self._active_thresholds(for_gate=True),
            self.stop_event,
            **({"command": self._retrain_command} if self._retrain_command is not None else {}),
        )
        self.retraining = RetrainService(self.config.retrain, self.retrainer, self._last_scheduled_run)
        self.retraining.start(self._active_path, self._seed_retrain_metrics)

    def _seed_retrain_metrics(self) -> None:
        """The last successful retrain survives restarts in the store; the gauge starts from it, so a
        "no retrain for 14 days" alert can fire after a restart too."""
        assert self.outputs is not None
        try:
            runs = [last_run(self.outputs.engine, status) for status in ("accepted", "recalibrated")]
        except DatabaseError:
            return
        finished = [run["finished_at"] for run in runs if run is not None and run["finished_at"] is not None]
        if finished:
            self.metrics.retrain_last_success.labels(self.config.site.line).set(max(finished).timestamp())

    def _last_scheduled_run(self) -> datetime | None:
        assert self.outputs is not None
        try:
            run = last_run(self.outputs.engine, trigger="schedule")
        except DatabaseError:
            return None
        return None if run is None else run["started_at"]

    def _camera_runtime(self, camera: CameraSection) -> CameraRuntime:
        stop = threading.Event()
        reader = CameraReader(
            camera.name,
            self.products[camera.name],
            lambda: self._source_factory(camera, reader.report_skipped),
            self._on_frame,
            self._on_status,
            stop,
            self.clock,
            fps=camera.fps,
            roi=camera.roi,
            rotate=camera.rotate,
            stalled_after_s=camera.stalled_after_s,
            gate=self.parts.gates.get(camera.name),
            part_id_pattern=re.compile(camera.part_id_pattern) if camera.part_id_pattern else None,
            reconnect_min_s=camera.reconnect_min_s,
            reconnect_max_s=camera.reconnect_max_s,
        )
        return CameraRuntime(camera, reader, stop)

    # ---- data path -----------------------------------------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        """Runs on the camera's thread: resize for the model here (OpenCV releases the GIL), off the
        scorer's critical path, then hand the frame to the batcher."""
        assert self.batcher is not None
        self.batcher.put(replace(frame, model_image=resize_rgb(frame.image, self._input_size)))

    def _start_opcua(self) -> None:
        from linewatch.plant.opcua import OpcUaServer  # asyncua loads only when OPC UA is on (a second of start)

        assert self.outputs is not None
        adapter = PlantAdapter(self.parts, self._serving_products, self.select_product, self.record_action)
        server = OpcUaServer(self.config.opcua, adapter, self.outputs.engine, self.config.site.data_dir,
                             site=self.config.site.site, line=self.config.site.line)  # fmt: skip
        server.start()  # OpcUaError names the setting (a port taken, a certificate to renew)
        self.opcua = server
        self.parts.listeners.append(server.part_done)
        self.parts.state_listeners.append(lambda station: server.set_state(station, self.parts.station_state(station)))

    def _journal_parts(self, results: list[PartResult]) -> None:
        assert self.journal is not None
        self.journal.append_batch((), (), (), (), results)

    def _camera_status(self, camera: str) -> CameraStatus | None:
        runtime = self.cameras.get(camera)
        return None if runtime is None else runtime.status

    def _observe_part(self, result: PartResult) -> None:
        waited = None if result.triggered_mono is None else self.clock.monotonic() - result.triggered_mono
        self.metrics.observe_part(result.station, result.verdict, waited)

    def _on_status(self, camera: str, status: CameraStatus) -> None:
        """Kept for the status topic and health check; the reader already logged the change."""
        runtime = self.cameras.get(camera)
        if runtime is not None:
            runtime.status = status
            runtime.reported = True
        if camera in self.parts.tracker.station_of:
            self.parts.state_changed(self.parts.tracker.station_of[camera])
        if self.outputs is not None:
            self.outputs.camera_status(camera, status)

    def _record(self, batch: Batch, verdicts: list[Verdict], pixel_maps: list[np.ndarray]) -> None:
        """Evidence queued (its paths go into the verdicts), episodes from the verdicts, then one journal
        transaction for the whole batch.

        Cameras without a verdict in this batch get a ``tick``, so an episode of a camera that went
        silent (stopped, disabled, stalled) still ends after the quiet period.
        """
        assert self.recorder is not None and self.outputs is not None
        verdicts = self.outputs.with_evidence(batch.frames, verdicts, pixel_maps)
        if self.config.web.enabled:
            for frame, verdict, pixel_map in zip(batch.frames, verdicts, pixel_maps, strict=True):
                self.live.update(verdict, frame.image, pixel_map)
        events: list[Event] = []
        episodes = {name: runtime.episodes for name, runtime in self.cameras.items()}
        for verdict in verdicts:
            if verdict.camera in episodes:
                episodes[verdict.camera], new_events = step(episodes[verdict.camera], verdict, self._policy)
                events.extend(new_events)
        seen = {verdict.camera for verdict in verdicts}
        now = self.clock.now()
        for name, state in episodes.items():
            if name not in seen and state.is_open:
                episodes[name], ended = tick(state, now, self._policy)
                events.extend(ended)
        journaled = self.recorder.append(verdicts, events)
        if journaled:  # else dropped and counted: the episodes go on as if the batch had not been (recording.py)
            for name, state in episodes.items():
                self.cameras[name].episodes = state
            self.parts.observe(verdicts)  # the parts they complete, journaled after them
        now_mono = self.clock.monotonic()
        # The scorer made progress either way: a full disk is reported as such, not as a stuck scorer that
        # /healthz calls stalled and the systemd watchdog would restart into the same full disk.
        self.last_progress = now_mono
        if journaled:
            seconds = self.worker.stats.last_batch_seconds if self.worker is not None else 0.0
            self.metrics.observe_batch(verdicts, events, seconds, now_mono)
        if self._on_progress is not None:
            self._on_progress()

    def work_pending(self) -> bool:
        """The watchdog's "frames wait to be scored": not while they wait for a scoring server that has no
        local fallback (the scorer is retrying within its deadlines, not stuck; /healthz says why)."""
        if self.batcher is None or self.batcher.pending() == 0:
            return False
        return not (self.remote is not None and self.worker is not None and self.remote.waiting(self.worker.scorer))

    def run_scorer(self) -> None:
        """Score on the calling thread until stopped and drained (see :meth:`start`)."""
        assert self.worker is not None, "start(scorer_thread=False) first"
        self.worker.run()

    # ---- stop ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Reverse order of start: cameras, scorer (drains the batcher), outputs, journal."""
        self.stop_event.set()  # also abandons a running training (its runner watches it)
        if self.retraining is not None:
            self.retraining.stop()
        if self._shutdown_thread is not None:
            self._shutdown_thread.join(timeout=30)
        else:  # start failed before the cameras ran
            for runtime in self.cameras.values():
                runtime.stop.set()
        self._drain.set()
        if self._worker_thread is not None:
            self._worker_thread.join(timeout=60)
        try:  # whatever fails from here on, the outputs' threads and the journal are still stopped and closed
            if self.batcher is not None and self.worker is not None:
                # Normally empty: the scorer drained after the cameras stopped. A camera that did not stop
                # within its join timeout may still have delivered; score that too, in batch-size pieces.
                leftover = self.batcher.close()
                size = self.config.scoring.batch_max_size
                for start in range(0, len(leftover), size):
                    batch = Batch(tuple(leftover[start : start + size]), "drain")
                    scored = self.worker.score_or_give_up(batch)
                    if scored is not None:
                        self._record(batch, *scored)
            if self.journal is not None:
                end_open_episodes(self.cameras.values(), self.journal)
                self.parts.stop()
            if self.opcua is not None:
                self.opcua.stop()
        finally:
            try:
                if self.outputs is not None:
                    self.outputs.stop_intake()
                    self.outputs.stop()  # the broker link goes down here: no more commands after it
            finally:
                self._control.shutdown(wait=True, cancel_futures=True)
                if self.journal is not None:
                    self.journal.close()
                if self._daemon_lock is not None:
                    os.close(self._daemon_lock)
                if self.remote is not None:
                    self.remote.close()
        log.info("stopped")

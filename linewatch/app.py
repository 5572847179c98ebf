"""Composition root: builds the daemon from the config, starts it in order, stops it in reverse.

Start order: journal -> forwarders -> model (loaded, warmed up) -> batcher -> scorer thread -> cameras.
Stop order is the exact reverse: cameras stop capturing, the scorer drains what the batcher holds,
forwarders flush, the journal closes. A verdict is durable in the journal before anything else sees it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from linewatch.anople.artifact import MANIFEST
from linewatch.anople.settings import AnoPLeSettings
from linewatch.batcher import Batcher, SlotPolicy
from linewatch.camera.reader import CameraReader
from linewatch.camera.sources import FolderSource, FrameSource, OpenCVSource, SyntheticSource, VideoFileSource
from linewatch.clock import Clock, SystemClock
from linewatch.config import CameraSection, Config
from linewatch.events import CameraEpisodes, EpisodePolicy, event_id_for, initial_state, step, tick
from linewatch.images import collect_images, write_image
from linewatch.journal import ForwarderRunner, Journal, LoggingForwarder
from linewatch.preprocess import resize_rgb
from linewatch.scorer import Scorer, ScoringWorker
from linewatch.synthetic import SyntheticProduct
from linewatch.training import ProductSource, train_artifact
from linewatch.types import Batch, CameraStatus, Event, Frame, Verdict
from linewatch.weights import load_backbone

log = logging.getLogger(__name__)
SkipReporter = Callable[[Path, str], None]
SourceFactory = Callable[[CameraSection, SkipReporter], FrameSource]


def make_source(camera: CameraSection, on_skipped: SkipReporter) -> FrameSource:
    """The frame source a camera's config asks for; ``on_skipped`` counts undecodable folder files."""
    if camera.source == "synthetic":
        product = SyntheticProduct(style_seed=camera.seed, width=camera.width, height=camera.height)
        return SyntheticSource(product, camera.defect_rate, camera.seed)
    if camera.source == "device":
        return OpenCVSource(camera.device, camera.open_timeout_s, camera.read_timeout_s)
    if camera.source == "url":
        return OpenCVSource(camera.url, camera.open_timeout_s, camera.read_timeout_s)
    if camera.source == "file":
        return VideoFileSource(camera.path, loop=camera.loop)
    return FolderSource(camera.path, on_skipped=on_skipped)


def apply_cpu_threads(config: Config) -> int:
    """Set torch's CPU thread count for scoring; by default every core but one.

    The spare core keeps camera, journal and forwarder threads from preempting an OpenMP worker in the
    middle of a parallel region: on 2 cores with 4 cameras, 2 torch threads gave a capture-to-journal
    p99 of 110 ms against 56 ms with 1 (benchmarks/pipeline_throughput.py).
    """
    threads = config.scoring.cpu_threads or max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(threads)
    return threads


def model_version(artifact: Path) -> str:
    """Stable id of a trained model: its folder name and a hash of its manifest."""
    digest = hashlib.sha256((artifact / MANIFEST).read_bytes()).hexdigest()[:10]
    return f"{artifact.name}@{digest}"


@dataclass
class CameraRuntime:
    config: CameraSection
    reader: CameraReader
    stop: threading.Event
    thread: threading.Thread | None = None
    status: CameraStatus = CameraStatus.OFFLINE
    episodes: CameraEpisodes = field(default_factory=initial_state)


class App:
    """The running daemon. ``start``/``stop`` are called once each; ``stop`` is safe after a failed start."""

    def __init__(
        self,
        config: Config,
        clock: Clock | None = None,
        source_factory: SourceFactory = make_source,
        stop_event: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.stop_event = stop_event or threading.Event()
        self.boot_id = uuid.uuid4().hex[:8]
        self._source_factory = source_factory
        self._policy = EpisodePolicy(
            debounce_n=config.events.debounce_n,
            debounce_m=config.events.debounce_m,
            end_after_s=config.events.end_after_s,
            update_min_interval_s=config.events.update_min_interval_s,
        )
        # Shutdown is staged so nothing captured is lost: stop_event (a signal) -> cameras stop ->
        # the scorer drains what is pending (_drain) -> forwarders flush (_forwarder_stop) -> journal.
        self._drain = threading.Event()
        self._forwarder_stop = threading.Event()
        self._shutdown_thread: threading.Thread | None = None
        self._input_size = 0
        self.journal: Journal | None = None
        self.forwarders: list[ForwarderRunner] = []
        self._forwarder_threads: list[threading.Thread] = []
        self.batcher: Batcher | None = None
        self.worker: ScoringWorker | None = None
        self._worker_thread: threading.Thread | None = None
        self.cameras: dict[str, CameraRuntime] = {}
        self._lock = threading.Lock()

    # ---- start ---------------------------------------------------------------------------------
    def start(self, scorer_thread: bool = True) -> None:
        """Start everything. With ``scorer_thread=False`` the caller runs :meth:`run_scorer` itself:
        ``linewatch run`` scores on the main thread, where PyTorch's CPU kernels ran about 30% faster
        than on a secondary thread in our measurements (OpenMP's spinning team is kept hot there)."""
        config = self.config
        config.site.data_dir.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(config.journal_path, self.clock)
        runner = ForwarderRunner(
            self.journal,
            LoggingForwarder(),
            self._forwarder_stop,
            self.clock,
            batch_size=config.journal.forwarder_batch,
        )
        self.forwarders.append(runner)
        self._forwarder_threads.append(runner.start())
        scorer = Scorer.from_artifact(
            config.model.path,
            config.model.models_dir,
            config.model.device,
            config.model.precision,
            config.model.weights,
        )
        scorer.set_threshold_overrides(dict(config.model.thresholds))
        # A later model of another input size resizes again in the scorer; nothing breaks, it costs time.
        self._input_size = scorer.model.input_size
        if scorer.model.backbone_spec.is_random:
            log.warning("model %s runs on RANDOM backbone weights: a demo model, not for real parts", config.model.path)
        self.batcher = Batcher(config.scoring.batch_max_size, config.scoring.batch_max_wait_ms / 1000, self.clock)
        self.worker = ScoringWorker(
            scorer,
            model_version(config.model.path),
            self.batcher.next_batch,
            self._record,
            self._drain,
            self.clock,
            self.boot_id,
        )
        self.worker.warm_up(config.scoring.batch_max_size)
        if scorer_thread:
            self._worker_thread = threading.Thread(target=self.worker.run, name="scorer")
            self._worker_thread.start()
        for camera in config.cameras:
            self.batcher.add_camera(camera.name, SlotPolicy(camera.policy), camera.queue_size)
            runtime = self._camera_runtime(camera)
            self.cameras[camera.name] = runtime
            if camera.enabled:
                runtime.thread = runtime.reader.start()
            else:
                self._on_status(camera.name, CameraStatus.DISABLED)
                log.info("camera %s: disabled in the config", camera.name)
        self._shutdown_thread = threading.Thread(target=self._stop_capture_on_signal, name="shutdown")
        self._shutdown_thread.start()
        log.info("ready: %d camera(s), model %s", len(self.cameras), self.worker.model_version)

    def _stop_capture_on_signal(self) -> None:
        """Once stop is asked for: stop every camera, then let the scorer drain what they delivered."""
        self.stop_event.wait()
        with self._lock:
            runtimes = list(self.cameras.values())
        for runtime in runtimes:
            runtime.stop.set()
        for runtime in runtimes:
            if runtime.thread is not None:
                runtime.thread.join(timeout=10)
        self._drain.set()

    def _camera_runtime(self, camera: CameraSection) -> CameraRuntime:
        stop = threading.Event()
        reader = CameraReader(
            camera.name,
            camera.product,
            lambda: self._source_factory(camera, reader.report_skipped),
            self._on_frame,
            self._on_status,
            stop,
            self.clock,
            fps=camera.fps,
            roi=camera.roi,
            rotate=camera.rotate,
            stalled_after_s=camera.stalled_after_s,
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

    def _on_status(self, camera: str, status: CameraStatus) -> None:
        """Kept for the status topic and health check; the reader already logged the change."""
        runtime = self.cameras.get(camera)
        if runtime is not None:
            runtime.status = status

    def _record(self, batch: Batch, verdicts: list[Verdict]) -> None:
        """Episodes from the verdicts, then one journal transaction for the whole batch.

        Cameras without a verdict in this batch get a ``tick``, so an episode of a camera that went
        silent (stopped, disabled, stalled) still ends after the quiet period.
        """
        assert self.journal is not None
        events: list[Event] = []
        for verdict in verdicts:
            runtime = self.cameras.get(verdict.camera)
            if runtime is None:
                continue
            runtime.episodes, new_events = step(runtime.episodes, verdict, self._policy, event_id_for)
            events.extend(new_events)
        seen = {verdict.camera for verdict in verdicts}
        now = self.clock.now()
        for name, runtime in self.cameras.items():
            if name not in seen and runtime.episodes.is_open:
                runtime.episodes, ended = tick(runtime.episodes, now, self._policy)
                events.extend(ended)
        self.journal.append_batch(verdicts, events)

    def run_scorer(self) -> None:
        """Score on the calling thread until stopped and drained (see :meth:`start`)."""
        assert self.worker is not None, "start(scorer_thread=False) first"
        self.worker.run()

    # ---- control -------------------------------------------------------------------------------
    def reload(self, config: Config) -> list[str]:
        """Apply the fields that are safe to change while running (threshold overrides, camera enable
        flags) and report what changed. Anything else needs a restart and is reported as ignored."""
        changes = []
        if config.model.thresholds != self.config.model.thresholds and self.worker is not None:
            self.worker.scorer.set_threshold_overrides(dict(config.model.thresholds))
            changes.append(f"thresholds {dict(config.model.thresholds) or 'calibrated'}")
        old_cameras = {c.name: c for c in self.config.cameras}
        new_cameras = {c.name: c for c in config.cameras}
        if set(old_cameras) != set(new_cameras):
            changes.append("ignored: cameras added or removed (restart to apply)")
        for name in sorted(set(old_cameras) & set(new_cameras)):
            if old_cameras[name].enabled != new_cameras[name].enabled:
                self.set_camera_enabled(name, new_cameras[name].enabled)
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

    def set_camera_enabled(self, name: str, enabled: bool) -> None:
        with self._lock:
            runtime = self.cameras[name]
            running = runtime.thread is not None and runtime.thread.is_alive()
            if enabled and not running:
                fresh = self._camera_runtime(runtime.config)
                fresh.episodes = runtime.episodes
                self.cameras[name] = fresh
                fresh.thread = fresh.reader.start()
            elif not enabled and running:
                runtime.stop.set()
                runtime.thread.join(timeout=10)
                self._on_status(name, CameraStatus.DISABLED)
                log.info("camera %s: disabled", name)

    # ---- stop ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Reverse order of start: cameras, scorer (drains the batcher), forwarders, journal."""
        self.stop_event.set()
        if self._shutdown_thread is not None:
            self._shutdown_thread.join(timeout=30)
        else:  # start failed before the cameras ran
            for runtime in self.cameras.values():
                runtime.stop.set()
        self._drain.set()
        if self._worker_thread is not None:
            self._worker_thread.join(timeout=60)
        if self.batcher is not None and self.worker is not None:
            # Normally empty: the scorer drained after the cameras stopped. A camera that did not stop
            # within its join timeout may still have delivered; score that too, in batch-size pieces.
            leftover = self.batcher.close()
            size = self.config.scoring.batch_max_size
            for start in range(0, len(leftover), size):
                batch = Batch(tuple(leftover[start : start + size]), "drain")
                self._record(batch, self.worker.score_batch(batch))
        self._forwarder_stop.set()
        for thread in self._forwarder_threads:
            thread.join(timeout=30)
        if self.journal is not None:
            self.journal.close()
        log.info("stopped")


class Interrupted(Exception):
    """The stop event was set while a long start-up step ran; nothing of that step was kept."""


def bootstrap_demo_model(config: Config, stop: threading.Event) -> bool:
    """Train a demo model from synthetic normals when the configured model is missing and the config
    allows it. Only synthetic cameras can supply normals; the result runs on the configured (random)
    backbone and is announced as a demo model. Returns True when a model was trained.

    Setting ``stop`` aborts the training at the next step with ``Interrupted``; the artifact is only
    ever written whole, so an aborted bootstrap leaves nothing behind and the next start retries.
    """
    if config.model.path.exists() or not config.scoring.bootstrap_demo_model:
        return False
    cameras = {c.product: c for c in config.cameras if c.source == "synthetic"}
    if not cameras:
        raise ValueError("[scoring] bootstrap_demo_model needs at least one synthetic camera to draw normals from")
    log.warning("no model at %s: training a DEMO model on synthetic normals (not for real parts)", config.model.path)
    sources = []
    for product, camera in cameras.items():
        folder = config.site.data_dir / "bootstrap" / camera.name
        synthetic = SyntheticProduct(style_seed=camera.seed, width=camera.width, height=camera.height)
        rng = np.random.default_rng(camera.seed + 1)
        for index in range(config.demo.train_normals):
            write_image(folder / f"{index:03d}.png", synthetic.normal(rng).image)
        sources.append(ProductSource(product, collect_images([folder])))
    backbone = load_backbone(
        config.model.backbone, config.model.pretrained, config.model.models_dir, config.model.weights, config.demo.seed
    )

    def check_stop(step: int, total: int, _losses: dict[str, float]) -> None:
        if stop.is_set():
            raise Interrupted(f"demo model training stopped at step {step} of {total}")
        if step % 50 == 0 or step == total:
            log.info("demo model training: step %d of %d", step, total)

    train_artifact(
        sources,
        backbone,
        AnoPLeSettings(steps=config.demo.steps),
        config.model.path,
        config.demo.shots,
        config.demo.seed,
        config.model.target_frr,
        progress=check_stop,
        log=log.info,
        device=config.model.device,
    )
    return True


class _LineContext(logging.Filter):
    """Puts site/line into every record, so one journald stream holds several lines legibly, and drops
    third-party chatter logged on the root logger below WARNING."""

    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root" and record.levelno < logging.WARNING:
            return False  # open_clip narrates model creation on the root logger at INFO
        record.line = self.line
        return True


def configure_logging(config: Config, verbose: bool = False) -> None:
    """Single-line records without timestamps (journald adds its own), line context on each."""
    handler = logging.StreamHandler()
    handler.addFilter(_LineContext(f"{config.site.site}/{config.site.line}"))
    handler.setFormatter(logging.Formatter("%(levelname)s [%(line)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def serve(config_path: Path, verbose: bool = False) -> int:
    """``linewatch run``: start, run until SIGTERM/SIGINT, reload safe fields on SIGHUP, stop cleanly."""
    import signal

    from linewatch.config import ConfigError, load_config

    config = load_config(config_path)
    configure_logging(config, verbose)
    stop = threading.Event()
    reload_requested = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload_requested.set())
    try:
        bootstrap_demo_model(config, stop)
    except Interrupted as interrupted:
        log.info("%s; exiting", interrupted)
        return 0
    log.info("scoring with %d CPU thread(s)", apply_cpu_threads(config))
    app = App(config, stop_event=stop)

    def apply_reloads() -> None:
        while not stop.is_set():
            if reload_requested.wait(0.2) and not stop.is_set():
                reload_requested.clear()
                try:
                    changes = app.reload(load_config(config_path))
                    log.info("reloaded %s: %s", config_path, "; ".join(changes) or "nothing to change")
                except (ConfigError, KeyError, ValueError) as error:
                    log.error("reload refused, keeping the running config: %s", error)

    control = threading.Thread(target=apply_reloads, name="reload")
    try:
        app.start(scorer_thread=False)
        control.start()
        app.run_scorer()  # returns once stopped and drained
    finally:
        stop.set()
        if control.is_alive():
            control.join(timeout=10)
        app.stop()
    return 0

"""The daemon's outputs, built from the config: the SQL store, the MQTT broker, evidence files and the
HTTP port, all fed from the journal or beside it.

Start order: store (migrated) -> forwarders -> broker link -> evidence writer and retention sweeper ->
HTTP port. ``stop_intake`` closes what takes new work (HTTP, evidence) once scoring has drained; ``stop``
then lets the forwarders flush what the journal holds, says ``stopped`` on the broker and disposes of
the store. A down broker or database never stops inspection: the journal keeps everything and the
forwarders replay it in order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from linewatch.clock import Clock
from linewatch.config import Config
from linewatch.daemon.feedback import submit
from linewatch.daemon.housekeeping import JournalKeeper, journal_watermark_bytes
from linewatch.feedback import FEEDBACK_MAX_BYTES, FeedbackError, parse_feedback
from linewatch.pipeline.journal.forwarding import Forwarder, ForwarderRunner, LoggingForwarder
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import JournalError, JournalRecord, event_from_payload
from linewatch.sinks.db import DatabaseError, LineScope, confirmed_normal_inspections, make_engine, masked
from linewatch.sinks.db_forwarder import DbForwarder
from linewatch.sinks.db_migrate import database_revision, head_revision, upgrade_database
from linewatch.sinks.evidence import EvidenceJob, EvidenceSampler, EvidenceWriter, evidence_paths
from linewatch.sinks.http import HttpRequest, HttpResponse, HttpServer, error
from linewatch.sinks.mqtt import InboundHandlers, MqttForwarder, MqttLink
from linewatch.sinks.mqtt_discovery import home_assistant_discovery
from linewatch.sinks.mqtt_stats import LineStats, report_every
from linewatch.sinks.retention import RetentionSweeper, disk_free_bytes, disk_usage
from linewatch.sinks.store_retention import StoreRetention, StoreRetentionPolicy
from linewatch.types import CameraStatus, EventType, Frame, Verdict

log = logging.getLogger(__name__)
MB = 1024 * 1024
MQTT_RETRY_MIN_S = 0.2
MQTT_RETRY_MAX_S = 2.0


class StoreForwarder:
    """The DB forwarder behind a schema check. The schema is made current (or, without
    ``upgrade_at_start``, checked) before the first write; until that succeeds every send raises and the
    runner backs off, so a PostgreSQL that is down when the daemon starts delays the store, never the
    inspection."""

    name = "db"
    kinds = None

    def __init__(self, config: Config, engine: Any) -> None:
        self._config = config
        self._engine = engine
        self._inner = DbForwarder(engine)
        self.ready = False

    def ensure_schema(self) -> None:
        config = self._config
        if config.store.upgrade_at_start:
            result = upgrade_database(config.store_url, config.backup_dir, scope=LineScope.of(config.site))
            if result.from_revision != result.to_revision:
                log.info("store migrated from %s to %s", result.from_revision or "empty", result.to_revision)
            if result.backup is not None:
                log.info("store backed up to %s before migrating", result.backup)
        else:
            found, head = database_revision(self._engine), head_revision()
            if found != head:
                raise DatabaseError(
                    f"{masked(config.store_url)}: schema at revision {found or 'empty'}, this linewatch needs "
                    f"{head}: run `linewatch db upgrade` (or set [store] upgrade_at_start = true)"
                )
        self.ready = True

    def send(self, records: Sequence[JournalRecord]) -> int:
        if not self.ready:
            self.ensure_schema()
        return self._inner.send(records)


class AlertTimer:
    """The MQTT forwarder, timed: for every defect event the broker acknowledged, capture -> alert sent
    (the end-to-end latency a line cares about) goes to ``observe``. Wall clock, as the event carries its
    frame's capture time; the journal's strict parser reads it, like every other consumer."""

    def __init__(self, inner: Forwarder, clock: Clock, observe: Callable[[float], None]) -> None:
        self._inner = inner
        self._clock = clock
        self._observe = observe
        self.name = inner.name
        self.kinds = inner.kinds

    def send(self, records: Sequence[JournalRecord]) -> int:
        delivered = self._inner.send(records)
        now = self._clock.now()
        for record in records[:delivered]:
            if record.kind == "event":
                try:
                    event = event_from_payload(record.payload)
                except JournalError:
                    continue  # the forwarder skipped it too (and logged why)
                if event.type == EventType.NEW:  # updates and ends carry older frames: not an alert's latency
                    self._observe(max(0.0, (now - event.frame_ts).total_seconds()))
        return delivered


class Outputs:
    """Owns every consumer of the journal, its housekeeping and the operator channels. ``handlers``
    answer what arrives over MQTT (the App); ``free_bytes`` (evidence disk), ``journal_free_bytes`` and
    ``mqtt_client_factory`` are injectable for tests."""

    def __init__(
        self,
        config: Config,
        journal: Journal,
        clock: Clock,
        handlers: InboundHandlers,
        free_bytes: Callable[[], int] | None = None,
        mqtt_client_factory: Callable[..., Any] | None = None,
        journal_free_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.clock = clock
        self._handlers = handlers
        evidence_dir = config.evidence_dir
        self._free_bytes = free_bytes or (lambda: disk_free_bytes(evidence_dir))
        self._mqtt_client_factory = mqtt_client_factory
        self._journal_free_bytes = journal_free_bytes
        self._forwarder_stop = threading.Event()
        self._sweeper_stop = threading.Event()
        self.engine: Any = None
        self.link: MqttLink | None = None
        self.runners: list[ForwarderRunner] = []
        self._threads: list[threading.Thread] = []
        self._sweeper_thread: threading.Thread | None = None
        self._keeper_thread: threading.Thread | None = None
        self._store_retention_thread: threading.Thread | None = None
        self._stats_thread: threading.Thread | None = None
        self.stats: LineStats | None = None  # P/stats counters, with MQTT on
        self.keeper: JournalKeeper | None = None
        self.store_retention: StoreRetention | None = None
        self.sampler = EvidenceSampler(
            config.evidence.every_nth_normal, config.evidence.close_call_band, config.evidence.close_call_interval_s
        )
        self.evidence: EvidenceWriter | None = None
        self.sweeper: RetentionSweeper | None = None
        self.http: HttpServer | None = None
        self._protected: set[str] | None = None
        self.on_alert_sent: Callable[[float], None] | None = None  # seconds from capture to PUBACK (metrics)

    # ---- start ---------------------------------------------------------------------------------
    def start(self) -> None:
        config = self.config
        self.engine = make_engine(config.store_url, LineScope.of(config.site))
        store = StoreForwarder(config, self.engine)
        try:
            store.ensure_schema()
        except DatabaseError as problem:
            log.error("store not ready (%s); inspecting anyway: the journal keeps everything until it is", problem)
        self._start_runner(store, config.store.retry_min_s, config.store.retry_max_s)
        if config.mqtt.enabled:
            cameras = [camera.name for camera in config.cameras]  # disabled ones too: MQTT can enable them
            self.link = MqttLink(
                config.mqtt,
                config.mqtt_prefix,
                config.mqtt_client_id,
                self._handlers,
                **({"client_factory": self._mqtt_client_factory} if self._mqtt_client_factory else {}),
                discovery=home_assistant_discovery(
                    config.mqtt, config.mqtt_prefix, config.site.site, config.site.line, cameras
                ),
            )
            # Alerts are live: a new cursor starts at the head (no past episodes re-alerted). While the broker
            # is away a send fails at once without touching the network, so a short backoff is cheap and
            # delivery resumes within MQTT_RETRY_MAX_S of the reconnect.
            mqtt_forwarder: Forwarder = MqttForwarder(
                self.link, config.site.site, config.site.line, config.web.public_url
            )
            self.stats = LineStats(config.site.site, config.site.line, self.clock.now())
            if config.mqtt.stats_interval_s > 0:
                self._stats_thread = threading.Thread(
                    target=report_every,
                    args=(config.mqtt.stats_interval_s, self._sweeper_stop, self.stats, self.clock.now,
                          self.link.publish_stats),
                    name="mqtt-stats",
                )  # fmt: skip
                self._stats_thread.start()
            if self.on_alert_sent is not None:
                mqtt_forwarder = AlertTimer(mqtt_forwarder, self.clock, self.on_alert_sent)
            self._start_runner(mqtt_forwarder, MQTT_RETRY_MIN_S, MQTT_RETRY_MAX_S, start_at_head=True)
        if config.journal.log_records:
            self._start_runner(LoggingForwarder(), config.store.retry_min_s, config.store.retry_max_s)
        if self.link is not None:
            self.link.start()  # connects in the background; a missing broker only delays delivery
        self.evidence = EvidenceWriter(
            config.evidence_dir,
            config.evidence.jpeg_quality,
            config.evidence.queue_size,
            self._free_bytes,
            int(config.evidence.min_free_mb * MB),
        )
        self.evidence.start()
        self.sweeper = RetentionSweeper(
            config.evidence_dir,
            self.clock,
            config.evidence.max_age_days * 86400,
            int(config.evidence.min_free_mb * MB),
            self._free_bytes,
            self._protected_evidence,
        )
        self._sweeper_thread = threading.Thread(
            target=self.sweeper.run, args=(self._sweeper_stop, config.evidence.sweep_interval_s), name="retention"
        )
        self._sweeper_thread.start()
        journal_dir = self.journal.path.parent
        self.keeper = JournalKeeper(
            self.journal,
            self.clock,
            [runner.name for runner in self.runners],
            config.journal.keep_days,
            journal_watermark_bytes(config.journal.min_free_mb, disk_usage(journal_dir).total),
            self._journal_free_bytes or (lambda: disk_free_bytes(journal_dir)),
        )
        self._keeper_thread = threading.Thread(
            target=self.keeper.run, args=(self._sweeper_stop, config.journal.prune_interval_s), name="journal-keeper"
        )
        self._keeper_thread.start()
        self.store_retention = StoreRetention(self.engine, self.clock, StoreRetentionPolicy.from_config(config.store))
        self._store_retention_thread = threading.Thread(
            target=self.store_retention.run,
            args=(self._sweeper_stop, config.store.retention_interval_s),
            name="store-retention",
        )
        self._store_retention_thread.start()
        http = config.http
        self.http = HttpServer(http.host, http.port, http.token, self._routes(), http.scrape_token, http.tls_files)
        self.http.start()
        scheme = "HTTPS" if http.tls_files else "HTTP"
        log.info("%s port %s:%d (metrics, health, feedback, retraining)", scheme, http.host, self.http.port)

    def _start_runner(
        self, forwarder: Forwarder, retry_min_s: float, retry_max_s: float, start_at_head: bool = False
    ) -> None:
        runner = ForwarderRunner(
            self.journal,
            forwarder,
            self._forwarder_stop,
            self.clock,
            batch_size=self.config.journal.forwarder_batch,
            backoff_min_s=retry_min_s,
            backoff_max_s=retry_max_s,
            start_at_head=start_at_head,
            wake=threading.Event(),
        )
        self.runners.append(runner)
        self._threads.append(runner.start())

    def _protected_evidence(self) -> set[str]:
        """Confirmed normals that retraining has not used yet keep their evidence (read from the store).
        While the store is unreachable the last set read stands in, so an outage never unprotects them."""
        try:
            self._protected = confirmed_normal_inspections(self.engine)
        except DatabaseError:
            if self._protected is None:
                raise
            log.warning("store unreachable: retention keeps the last known %d confirmed normals", len(self._protected))
        return self._protected

    def _routes(self) -> dict[tuple[str, str], Callable[[HttpRequest], HttpResponse]]:
        return {("POST", "/feedback"): self._http_feedback}

    def _http_feedback(self, request: HttpRequest) -> HttpResponse:
        try:
            feedback = parse_feedback(request.body, FEEDBACK_MAX_BYTES)
            label = submit(self.journal, self.clock, feedback, "http")
        except FeedbackError as problem:
            return error(404 if problem.reason == "unknown_id" else 400, str(problem))
        return HttpResponse(
            200,
            {
                "label_id": label.label_id,
                "target": str(label.target),
                "target_id": label.target_id,
                "camera": label.camera,
                "label": str(label.label),
            },
        )

    # ---- data path -----------------------------------------------------------------------------
    def with_evidence(
        self, frames: Sequence[Frame], verdicts: list[Verdict], pixel_maps: list[np.ndarray]
    ) -> list[Verdict]:
        """Queue evidence for the frames the sampler wants and put its paths into their verdicts. A frame
        whose evidence could not be queued (queue full, disk low) gets no paths. A queued write can still
        fail later (counted) and retention deletes old files by design, so readers of a path must expect
        it to be missing now and then; the verdict row outlives the image. The batch is also counted for
        P/stats here, the one place every scored batch passes on its way to the journal."""
        assert self.evidence is not None
        kept = []
        for frame, verdict, pixel_map in zip(frames, verdicts, pixel_maps, strict=True):
            if self.sampler.wants(verdict.camera, verdict.label, verdict.score, verdict.threshold, verdict.frame_ts):
                paths = evidence_paths(verdict.camera, verdict.frame_ts, verdict.inspection_id, verdict.label)
                job = EvidenceJob(paths.snapshot, paths.heatmap, frame.image, pixel_map, verdict.label)
                if self.evidence.submit(job):
                    verdict = replace(verdict, snapshot=paths.snapshot, heatmap=paths.heatmap)
            kept.append(verdict)
        if self.stats is not None:
            self.stats.observe(kept)
        return kept

    def camera_status(self, camera: str, status: CameraStatus) -> None:
        if self.link is not None:
            self.link.publish_camera_status(camera, status)

    def camera_enabled(self, camera: str, enabled: bool) -> None:
        if self.link is not None:
            self.link.publish_camera_enabled(camera, enabled)

    def camera_product(self, camera: str, product: str) -> None:
        if self.link is not None:
            self.link.publish_camera_product(camera, product)

    def model_state(self, state: dict[str, Any]) -> None:
        if self.link is not None:
            self.link.publish_model_state(state)

    def backlogs(self) -> dict[str, int]:
        return self.journal.backlogs()

    def disk_free(self) -> dict[str, int]:
        """Free bytes where the journal and the evidence go (the metrics' ``volume`` label); unreadable ones
        are left out rather than reported as 0, which would page someone for a full disk."""
        readings: dict[str, int] = {}
        journal_dir = self.journal.path.parent
        journal_free = self._journal_free_bytes or (lambda: disk_free_bytes(journal_dir))  # what the keeper reads
        for volume, read in (("journal", journal_free), ("evidence", self._free_bytes)):
            try:
                readings[volume] = int(read())
            except OSError:
                continue
        return readings

    def store_failing(self) -> bool:
        return any(runner.name == "db" and runner.failing for runner in self.runners)

    # ---- stop ----------------------------------------------------------------------------------
    def stop_intake(self) -> None:
        """After scoring drained: no more feedback over HTTP, evidence written out, sweeps stopped."""
        if self.http is not None:
            self.http.stop()
        if self.evidence is not None:
            self.evidence.stop(timeout=30)
        self._sweeper_stop.set()
        for thread in (self._sweeper_thread, self._keeper_thread, self._store_retention_thread, self._stats_thread):
            if thread is not None:
                thread.join(timeout=30)

    def stop(self) -> None:
        """Forwarders flush what the journal holds (best effort), then the broker hears ``stopped``."""
        self._forwarder_stop.set()
        for wake in self.journal.appended:  # an idle runner notices the stop now, not at its next poll
            wake.set()
        for thread in self._threads:
            thread.join(timeout=30)
        if self.link is not None:
            self.link.stop()
        if self.engine is not None:
            self.engine.dispose()

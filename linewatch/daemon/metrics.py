"""Prometheus metrics and the health verdict, for ``GET /metrics`` and ``GET /healthz``.

Two kinds of numbers, kept apart on purpose:

- What happens on the data path (batch sizes, inference time, capture-to-journal latency, scores,
  verdicts, episodes, retrain outcomes) is observed once, where it happens, through
  :class:`PipelineMetrics` (the App calls it after each journaled batch).
- What the components already count for themselves (frames captured, drops with their reasons,
  reconnects, journal backlogs, broker connection, forwarder failures, evidence drops, free disk) is
  read at scrape time by :class:`StateCollector`, so no component needs to know about Prometheus and the
  exported value can never drift from the component's own.

Names: prefix ``linewatch_``, counters end in ``_total``, durations are ``_seconds`` histograms, labels
are low cardinality (``line``, ``camera``, ``reason``, ``result``, ``forwarder``, ``volume``); never ids.
:data:`METRIC_NAMES` lists every family, so dashboards and alert rules can be checked against it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from linewatch.pipeline.remote import RemoteStats
from linewatch.sinks.store_retention import StoreRetentionStats
from linewatch.types import CameraStatus, Event, EventType, Verdict, VerdictLabel

LATENCY_BUCKETS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
INFERENCE_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
ALERT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)  # outages replay late alerts
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
SCORE_BUCKETS = tuple(round(0.05 * step, 2) for step in range(1, 20))  # scores are in (0, 1)

RETRAIN_RESULTS = ("accepted", "rejected", "failed", "skipped", "recalibrated")  # runs' outcomes

# Every metric family the exporter serves (histograms add _bucket/_sum/_count, counters _total).
METRIC_NAMES = (
    "linewatch_frames_captured_total",
    "linewatch_frames_dropped_total",
    "linewatch_camera_up",
    "linewatch_camera_reconnects_total",
    "linewatch_batch_size",
    "linewatch_inference_seconds",
    "linewatch_journal_latency_seconds",
    "linewatch_alert_latency_seconds",
    "linewatch_score",
    "linewatch_threshold",
    "linewatch_inspections_total",
    "linewatch_defect_events_total",
    "linewatch_journal_backlog",
    "linewatch_forwarder_failures_total",
    "linewatch_mqtt_connected",
    "linewatch_mqtt_rejected_total",
    "linewatch_db_errors_total",
    "linewatch_evidence_dropped_total",
    "linewatch_journal_dropped_total",
    "linewatch_disk_free_bytes",
    "linewatch_http_auth_refused_total",
    "linewatch_retrain_runs_total",
    "linewatch_retrain_last_success_timestamp_seconds",
    "linewatch_model_info",
    "linewatch_remote_scoring_seconds",
    "linewatch_remote_scoring_errors_total",
    "linewatch_remote_fallback_batches_total",
    "linewatch_scoring_server_up",
    "linewatch_store_rows_deleted_total",
    "linewatch_store_retention_batch_seconds",
    "linewatch_store_partitions_total",
)


class PipelineMetrics:
    """The data path's own observations; thread-safe (prometheus-client locks each child)."""

    def __init__(self, registry: CollectorRegistry, line: str, cameras: Sequence[str] = ()) -> None:
        self.line = line
        self.batch_size = Histogram(
            "linewatch_batch_size", "Frames per scored batch", ["line"], buckets=BATCH_BUCKETS, registry=registry
        )
        self.inference_seconds = Histogram(
            "linewatch_inference_seconds",
            "Time to score one batch (preprocessing and model)",
            ["line"],
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.journal_latency = Histogram(
            "linewatch_journal_latency_seconds",
            "Capture to journal commit of a verdict: nothing is sent or stored before this",
            ["line", "camera"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.alert_latency = Histogram(
            "linewatch_alert_latency_seconds",
            "Capture to broker acknowledgement of a defect event (end to end)",
            ["line"],
            buckets=ALERT_BUCKETS,
            registry=registry,
        )
        self.score = Histogram(
            "linewatch_score", "Image anomaly scores", ["line", "camera"], buckets=SCORE_BUCKETS, registry=registry
        )
        self.threshold = Gauge(
            "linewatch_threshold", "Threshold in force per product", ["line", "product"], registry=registry
        )
        self.inspections = Counter(
            "linewatch_inspections", "Verdicts journaled", ["line", "camera", "result"], registry=registry
        )
        self.defect_events = Counter(
            "linewatch_defect_events", "Defect episodes opened", ["line", "camera"], registry=registry
        )
        self.parts = Counter(
            "linewatch_parts",
            "Part verdicts of the stations (OK, NOK, incomplete)",
            ["line", "station", "verdict"],
            registry=registry,
        )
        self.part_latency = Histogram(
            "linewatch_part_latency_seconds",
            "Trigger to journaled part verdict (the reject gate's wait, before MQTT and OPC UA)",
            ["line", "station"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.retrain_runs = Counter(
            "linewatch_retrain_runs", "Retraining runs by outcome", ["line", "result"], registry=registry
        )
        self.retrain_last_success = Gauge(
            "linewatch_retrain_last_success_timestamp_seconds",
            "Unix time of the last retrain that changed the model (accepted or recalibrated)",
            ["line"],
            registry=registry,
        )
        self.remote_seconds = Histogram(
            "linewatch_remote_scoring_seconds",
            "Round trip of one batch to the scoring server ([scoring] runtime triton)",
            ["line"],
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "linewatch_model_info", "The model in service (value 1)", ["line", "version", "backbone"], registry=registry
        )
        self._model: tuple[str, str] | None = None
        self._products: set[str] = set()
        # Counters exist at 0 from the start, so a rule's increase() sees the first verdict or failed run too.
        for camera in cameras:
            for result in (VerdictLabel.NORMAL, VerdictLabel.DEFECT):
                self.inspections.labels(line, camera, str(result))
            self.defect_events.labels(line, camera)
        for result in RETRAIN_RESULTS:
            self.retrain_runs.labels(line, result)
        for per_line in (self.batch_size, self.inference_seconds, self.alert_latency):
            per_line.labels(line)

    def observe_batch(
        self, verdicts: Sequence[Verdict], events: Sequence[Event], seconds: float, now_mono: float
    ) -> None:
        """After a batch is journaled: its size and scoring time, each verdict's latency, score and result,
        and the episodes it opened."""
        line = self.line
        self.batch_size.labels(line).observe(len(verdicts))
        self.inference_seconds.labels(line).observe(seconds)
        for verdict in verdicts:
            self.journal_latency.labels(line, verdict.camera).observe(max(0.0, now_mono - verdict.captured_mono))
            self.score.labels(line, verdict.camera).observe(verdict.score)
            self.inspections.labels(line, verdict.camera, str(verdict.label)).inc()
        for event in events:
            if event.type == EventType.NEW:
                self.defect_events.labels(line, event.camera).inc()

    def observe_remote(self, seconds: float) -> None:
        self.remote_seconds.labels(self.line).observe(seconds)

    def observe_part(self, station: str, verdict: str, seconds: float | None) -> None:
        self.parts.labels(self.line, station, verdict).inc()
        if seconds is not None:
            self.part_latency.labels(self.line, station).observe(seconds)

    def observe_alert(self, seconds: float) -> None:
        self.alert_latency.labels(self.line).observe(seconds)

    def observe_retrain(self, status: str, at_unix: float) -> None:
        """A retraining run ended (busy requests and progress steps are not runs)."""
        self.retrain_runs.labels(self.line, status).inc()
        if status in ("accepted", "recalibrated"):
            self.retrain_last_success.labels(self.line).set(at_unix)

    def set_model(self, version: str, backbone: str, thresholds: dict[str, float]) -> None:
        if self._model is not None:
            self.model_info.remove(self.line, *self._model)
        self._model = (version, backbone)
        self.model_info.labels(self.line, version, backbone).set(1)
        self.set_thresholds(thresholds)

    def set_thresholds(self, thresholds: dict[str, float]) -> None:
        """The thresholds in force (after a swap or a SIGHUP override); products no longer served go."""
        for product in self._products - set(thresholds):
            self.threshold.remove(self.line, product)
        self._products = set(thresholds)
        for product, value in thresholds.items():
            self.threshold.labels(self.line, product).set(value)


class Components(Protocol):
    """What the state collector reads; :class:`linewatch.daemon.state.AppState` provides it."""

    def camera_states(self) -> dict[str, tuple[CameraStatus, Any]]: ...  # name -> (status, CameraStats)

    def dropped_frames(self) -> dict[tuple[str, str], int]: ...  # (camera, reason) -> count, batcher drops

    def forwarders(self) -> dict[str, tuple[int, int, bool]]: ...  # name -> (backlog, failures, failing now)

    def mqtt_state(self) -> tuple[bool, dict[tuple[str, str], int]] | None: ...  # connected, rejected; None: off

    def evidence_dropped(self) -> dict[str, int]: ...  # reason -> count (write failures as "failed")

    def journal_dropped(self) -> dict[str, int]: ...  # undelivered records dropped for space, by class

    def disk_free(self) -> dict[str, int]: ...  # volume ("journal", "evidence") -> free bytes

    def auth_attempts(self) -> dict[tuple[str, str], int]: ...  # (kind, outcome) -> refused token attempts

    def remote_scoring(self) -> RemoteStats | None: ...  # None: scoring in this process

    def store_retention(self) -> StoreRetentionStats | None: ...  # None: before the outputs start


class StateCollector(Collector):
    """Reads the components' counters at scrape time (see the module docstring)."""

    def __init__(self, components: Components, line: str) -> None:
        self._components = components
        self._line = line

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked: the families depend on what is configured (MQTT off has no MQTT metrics)

    def collect(self) -> Iterator[Metric]:
        line, parts = self._line, self._components
        captured = CounterMetricFamily(
            "linewatch_frames_captured", "Frames read from a camera", labels=["line", "camera"]
        )
        reconnects = CounterMetricFamily(
            "linewatch_camera_reconnects", "Camera open attempts after the first", labels=["line", "camera"]
        )
        up = GaugeMetricFamily(
            "linewatch_camera_up",
            "1 while the camera delivers frames; disabled ones are left out",
            labels=["line", "camera"],
        )
        dropped = CounterMetricFamily(
            "linewatch_frames_dropped", "Frames not scored, by reason", labels=["line", "camera", "reason"]
        )
        for camera, (status, stats) in sorted(parts.camera_states().items()):
            captured.add_metric([line, camera], stats.frames)
            reconnects.add_metric([line, camera], stats.reconnects)
            if status != CameraStatus.DISABLED:  # switched off on purpose: not "down", no alert
                up.add_metric([line, camera], 1.0 if status == CameraStatus.ONLINE else 0.0)
            dropped.add_metric([line, camera, "fps_limit"], stats.frames_limited)
            dropped.add_metric([line, camera, "bad_frame"], stats.bad_frames)
        for (camera, reason), count in sorted(parts.dropped_frames().items()):
            dropped.add_metric([line, camera, reason], count)
        yield from (captured, reconnects, up, dropped)

        backlog = GaugeMetricFamily(
            "linewatch_journal_backlog", "Journal records a forwarder has not delivered", labels=["line", "forwarder"]
        )
        failures = CounterMetricFamily(
            "linewatch_forwarder_failures", "Failed delivery attempts (retried)", labels=["line", "forwarder"]
        )
        db_errors = CounterMetricFamily("linewatch_db_errors", "Failed writes to the SQL store", labels=["line"])
        for name, (pending, failed, _failing) in sorted(parts.forwarders().items()):
            backlog.add_metric([line, name], pending)
            failures.add_metric([line, name], failed)
            if name == "db":
                db_errors.add_metric([line], failed)
        yield from (backlog, failures, db_errors)

        mqtt = parts.mqtt_state()
        if mqtt is not None:
            connected, rejected = mqtt
            yield _gauge("linewatch_mqtt_connected", "1 while the broker session is up", line, float(connected))
            refused = CounterMetricFamily(
                "linewatch_mqtt_rejected", "Incoming MQTT payloads refused, by reason", labels=["line", "reason"]
            )
            per_reason: dict[str, int] = {}
            for (_kind, reason), count in rejected.items():
                per_reason[reason] = per_reason.get(reason, 0) + count
            for reason, count in sorted(per_reason.items()):
                refused.add_metric([line, reason], count)
            yield refused

        evidence = CounterMetricFamily(
            "linewatch_evidence_dropped", "Evidence images not written, by reason", labels=["line", "reason"]
        )
        for reason, count in sorted(parts.evidence_dropped().items()):
            evidence.add_metric([line, reason], count)
        yield evidence

        journal = CounterMetricFamily(
            "linewatch_journal_dropped",
            "Undelivered journal records dropped below the disk watermark, by class",
            labels=["line", "kind"],
        )
        for kind, count in sorted(parts.journal_dropped().items()):
            journal.add_metric([line, kind], count)
        yield journal

        retention = parts.store_retention()
        if retention is not None:
            deleted = CounterMetricFamily(
                "linewatch_store_rows_deleted",
                "Rows store retention deleted (inspections counted per minute), by kind: normal after "
                "keep_normal_days, old and parts after keep_days, rollup after keep_rollup_days",
                labels=["line", "kind"],
            )
            for kind, count in sorted(retention.deleted.items()):
                deleted.add_metric([line, kind], count)
            yield deleted
            batch = GaugeMetricFamily(
                "linewatch_store_retention_batch_seconds",
                "The longest delete transaction of the last retention pass: the store forwarder's longest wait",
                labels=["line"],
            )
            batch.add_metric([line], retention.longest_batch_s)
            yield batch
            partitions = CounterMetricFamily(
                "linewatch_store_partitions",
                "Daily partitions of inspections this daemon changed (PostgreSQL): created ahead, compacted at "
                "keep_normal_days, dropped at keep_days",
                labels=["line", "change"],
            )
            for change, count in sorted(retention.partitions.items()):
                partitions.add_metric([line, change], count)
            yield partitions

        disk = GaugeMetricFamily(
            "linewatch_disk_free_bytes", "Free bytes where linewatch writes", labels=["line", "volume"]
        )
        for volume, free in sorted(parts.disk_free().items()):
            disk.add_metric([line, volume], free)
        yield disk

        auth = CounterMetricFamily(
            "linewatch_http_auth_refused",
            "HTTP token attempts refused: wrong, or throttled after repeated wrong ones; kind bearer or login",
            labels=["line", "kind", "outcome"],
        )
        for (kind, outcome), count in sorted(parts.auth_attempts().items()):
            auth.add_metric([line, kind, outcome], count)
        yield auth

        remote = parts.remote_scoring()
        if remote is not None:
            yield _gauge(
                "linewatch_scoring_server_up", "1 while the scoring server answers", line, float(remote.reachable)
            )
            errors = CounterMetricFamily(
                "linewatch_remote_scoring_errors",
                "Remote scoring calls that gave no scores: unreachable (no answer in time) or refused",
                labels=["line", "reason"],
            )
            for reason in ("unreachable", "refused"):
                errors.add_metric([line, reason], remote.errors.get(reason, 0))
            fallback = CounterMetricFamily(
                "linewatch_remote_fallback_batches",
                "Batches scored locally while the server was unreachable",
                labels=["line"],
            )
            fallback.add_metric([line], remote.fallback_batches)
            yield from (errors, fallback)


def _gauge(name: str, documentation: str, line: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["line"])
    family.add_metric([line], value)
    return family


@dataclass(frozen=True)
class Health:
    healthy: bool
    document: dict[str, Any]


def health(
    cameras: dict[str, CameraStatus | None],
    broker: str,
    store_ok: bool,
    backlogs: dict[str, int] | None,
    model_version: str,
    scoring_stalled: bool,
    journal_error: str | None = None,
    journal_dropped: tuple[bool, dict[str, int]] = (False, {}),
    extra: Callable[[], dict[str, Any]] | None = None,
    scoring_server: str | None = None,
) -> Health:
    """The health verdict: unhealthy when an enabled camera delivers nothing, the broker (if configured) is
    ``disconnected``, the scoring server (``scoring_server``, runtime triton) is ``unreachable``, the store
    cannot be written, the journal cannot be read (``backlogs`` None) or written (``journal_error``: a full
    disk), the keeper had to drop undelivered records (``journal_dropped``: dropping now, totals by class), or
    the scorer stopped making progress. Disabled cameras are fine, and so is a camera that has not reported
    yet (None: still opening after a start) and a broker still ``connecting`` for the first time."""
    problems = [f"camera {name} is {status}" for name, status in sorted(cameras.items()) if status in _DOWN]
    if broker == "disconnected":
        problems.append("MQTT broker disconnected")
    if not store_ok:
        problems.append("SQL store not writable")
    if backlogs is None:
        problems.append("journal not readable")
    if journal_error is not None:
        problems.append("journal not writable")
    dropping, dropped = journal_dropped
    if dropping:
        problems.append("disk below the journal watermark: undelivered records dropped")
    if scoring_stalled:
        problems.append("scoring made no progress")
    if scoring_server == "unreachable":
        problems.append("scoring server unreachable")
    document = {
        "status": "unhealthy" if problems else "ok",
        "problems": problems,
        "cameras": {name: "starting" if status is None else str(status) for name, status in sorted(cameras.items())},
        "broker": broker,
        "store": "ok" if store_ok else "failing",
        "journal_backlog": None if backlogs is None else dict(sorted(backlogs.items())),
        "journal": "ok" if journal_error is None else f"not writable: {journal_error}",
        "journal_dropped": dict(sorted(dropped.items())),
        "model_version": model_version,
        **({"scoring_server": scoring_server} if scoring_server is not None else {}),
        **(extra() if extra is not None else {}),
    }
    return Health(not problems, document)


_DOWN = (CameraStatus.OFFLINE, CameraStatus.STALLED)

"""Metrics and health: the exporter's families, their values, and the health verdict; end to end through a
running daemon's HTTP port with a real broker that goes away and comes back."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from linewatch.cli.main import main
from linewatch.config import load_config
from linewatch.daemon.app import App
from linewatch.daemon.metrics import METRIC_NAMES, PipelineMetrics, StateCollector, health
from linewatch.pipeline.camera.reader import CameraStats
from linewatch.pipeline.remote import RemoteStats
from linewatch.sinks.store_retention import StoreRetentionStats
from linewatch.types import CameraStatus, Event, EventType, Verdict, VerdictLabel
from tests.daemon.test_app import daemon_model, mqtt_section, write_config
from tests.services.mosquitto import MosquittoBroker, wait_until
from tests.services.ports import free_port

__all__ = ["daemon_model"]  # the fixture, shared with test_app


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exposed sample as {(name, sorted labels): value}, parsed back from the text format."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def verdict(camera: str, seq: int, label: VerdictLabel, score: float, captured_mono: float) -> Verdict:
    return Verdict(
        inspection_id=f"{camera}-b-{seq}",
        camera=camera,
        product="bracket",
        seq=seq,
        frame_ts=datetime(2026, 11, 28, tzinfo=UTC),
        captured_mono=captured_mono,
        score=score,
        threshold=0.5,
        label=label,
        model_version="v1",
    )


def test_pipeline_metrics_count_what_a_batch_did() -> None:
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, "l1")
    batch = [
        verdict("cam1", 1, VerdictLabel.NORMAL, 0.2, 99.98),
        verdict("cam1", 2, VerdictLabel.DEFECT, 0.9, 99.96),
        verdict("cam2", 1, VerdictLabel.NORMAL, 0.3, 99.99),
    ]
    opened = Event(
        "e1", EventType.NEW, 1, "cam1", "bracket", batch[1].frame_ts, 0.9, 0.5, VerdictLabel.DEFECT, "v1", "cam1-b-2"
    )
    metrics.observe_batch(batch, [opened], 0.012, now_mono=100.0)
    metrics.set_model("v1@abc", "ViT-B-16-plus-240", {"bracket": 0.5})
    metrics.set_model("v2@def", "ViT-B-16-plus-240", {"bracket": 0.45})
    metrics.observe_retrain("accepted", 1_764_300_000.0)
    metrics.observe_retrain("rejected", 1_764_400_000.0)
    metrics.observe_alert(0.4)
    got = samples(registry)
    line = ("line", "l1")
    assert got[("linewatch_inspections_total", (("camera", "cam1"), line, ("result", "defect")))] == 1
    assert got[("linewatch_inspections_total", (("camera", "cam1"), line, ("result", "normal")))] == 1
    assert got[("linewatch_defect_events_total", (("camera", "cam1"), line))] == 1
    assert got[("linewatch_batch_size_sum", (line,))] == 3
    assert got[("linewatch_inference_seconds_sum", (line,))] == pytest.approx(0.012)
    assert got[("linewatch_journal_latency_seconds_sum", (("camera", "cam1"), line))] == pytest.approx(0.06)
    assert got[("linewatch_journal_latency_seconds_bucket", (("camera", "cam1"), ("le", "0.03"), line))] == 1
    assert got[("linewatch_journal_latency_seconds_bucket", (("camera", "cam1"), ("le", "0.05"), line))] == 2
    assert got[("linewatch_score_count", (("camera", "cam2"), line))] == 1
    models = {labels: value for (name, labels), value in got.items() if name == "linewatch_model_info"}
    assert models == {(("backbone", "ViT-B-16-plus-240"), line, ("version", "v2@def")): 1}  # the old one is gone
    assert got[("linewatch_threshold", (line, ("product", "bracket")))] == 0.45
    assert got[("linewatch_retrain_runs_total", (line, ("result", "rejected")))] == 1
    assert got[("linewatch_alert_latency_seconds_bucket", (("le", "0.5"), line))] == 1
    assert got[("linewatch_alert_latency_seconds_bucket", (("le", "0.25"), line))] == 0
    metrics.set_thresholds({"hinge": 0.3})  # a SIGHUP override, or a model of other products
    thresholds = {labels: v for (name, labels), v in samples(registry).items() if name == "linewatch_threshold"}
    assert thresholds == {(line, ("product", "hinge")): 0.3}
    assert got[("linewatch_retrain_last_success_timestamp_seconds", (line,))] == 1_764_300_000.0  # rejected: no


@dataclass
class FakeComponents:
    connected: bool = True
    remote: bool = False

    def camera_states(self) -> dict[str, tuple[CameraStatus, Any]]:
        return {
            "cam1": (CameraStatus.ONLINE, CameraStats(frames=120, reconnects=2, frames_limited=7)),
            "cam2": (CameraStatus.STALLED, CameraStats(frames=5)),
            "cam3": (CameraStatus.DISABLED, CameraStats(frames=50)),
        }

    def dropped_frames(self) -> dict[tuple[str, str], int]:
        return {("cam1", "queue_full"): 3}

    def forwarders(self) -> dict[str, tuple[int, int, bool]]:
        return {"db": (40, 6, True), "mqtt": (0, 1, False)}

    def mqtt_state(self) -> tuple[bool, dict[tuple[str, str], int]] | None:
        return self.connected, {("feedback", "bad_json"): 2, ("retrain", "bad_json"): 1, ("enabled", "schema"): 4}

    def evidence_dropped(self) -> dict[str, int]:
        return {"queue_full": 9}

    def journal_dropped(self) -> dict[str, int]:
        return {"normal_verdict": 940, "event": 2}

    def disk_free(self) -> dict[str, int]:
        return {"journal": 10_000, "evidence": 20_000}

    def auth_attempts(self) -> dict[tuple[str, str], int]:
        return {("bearer", "wrong"): 12, ("login", "throttled"): 3}

    def remote_scoring(self) -> RemoteStats | None:
        return RemoteStats(reachable=False, errors={"unreachable": 4}, fallback_batches=2) if self.remote else None

    def store_retention(self) -> StoreRetentionStats | None:
        return StoreRetentionStats(deleted={"normal": 3000, "old": 20, "parts": 5, "rollup": 0}, longest_batch_s=0.04)


def test_the_state_collector_reads_the_components_counters() -> None:
    registry = CollectorRegistry()
    registry.register(StateCollector(FakeComponents(connected=False), "l1"))
    got = samples(registry)
    line = ("line", "l1")
    assert got[("linewatch_frames_captured_total", (("camera", "cam1"), line))] == 120
    assert got[("linewatch_camera_reconnects_total", (("camera", "cam1"), line))] == 2
    assert got[("linewatch_camera_up", (("camera", "cam1"), line))] == 1
    assert got[("linewatch_camera_up", (("camera", "cam2"), line))] == 0
    assert ("linewatch_camera_up", (("camera", "cam3"), line)) not in got  # disabled on purpose: not "down"
    assert got[("linewatch_frames_captured_total", (("camera", "cam3"), line))] == 50
    assert got[("linewatch_frames_dropped_total", (("camera", "cam1"), line, ("reason", "fps_limit")))] == 7
    assert got[("linewatch_frames_dropped_total", (("camera", "cam1"), line, ("reason", "queue_full")))] == 3
    assert got[("linewatch_journal_backlog", (("forwarder", "db"), line))] == 40
    assert got[("linewatch_db_errors_total", (line,))] == 6
    assert got[("linewatch_mqtt_connected", (line,))] == 0
    assert got[("linewatch_mqtt_rejected_total", (line, ("reason", "bad_json")))] == 3  # summed over topics
    assert got[("linewatch_evidence_dropped_total", (line, ("reason", "queue_full")))] == 9
    assert got[("linewatch_journal_dropped_total", (("kind", "normal_verdict"), line))] == 940
    assert got[("linewatch_journal_dropped_total", (("kind", "event"), line))] == 2
    assert got[("linewatch_store_rows_deleted_total", (("kind", "normal"), line))] == 3000
    assert got[("linewatch_store_retention_batch_seconds", (line,))] == 0.04
    assert got[("linewatch_disk_free_bytes", (line, ("volume", "evidence")))] == 20_000
    assert got[("linewatch_http_auth_refused_total", (("kind", "bearer"), line, ("outcome", "wrong")))] == 12
    assert got[("linewatch_http_auth_refused_total", (("kind", "login"), line, ("outcome", "throttled")))] == 3
    assert not any(name.startswith(("linewatch_remote", "linewatch_scoring_server")) for name, _ in got)


def test_remote_scoring_counters_appear_with_a_scoring_server() -> None:
    registry = CollectorRegistry()
    registry.register(StateCollector(FakeComponents(remote=True), "l1"))
    got = samples(registry)
    line = ("line", "l1")
    assert got[("linewatch_scoring_server_up", (line,))] == 0
    assert got[("linewatch_remote_scoring_errors_total", (line, ("reason", "unreachable")))] == 4
    assert got[("linewatch_remote_scoring_errors_total", (line, ("reason", "refused")))] == 0
    assert got[("linewatch_remote_fallback_batches_total", (line,))] == 2


def test_health_names_an_unreachable_scoring_server() -> None:
    verdict = health(
        {"cam1": CameraStatus.ONLINE}, "connected", True, {"db": 0}, "v1@abc", False, scoring_server="unreachable"
    )
    assert not verdict.healthy and verdict.document["problems"] == ["scoring server unreachable"]
    assert verdict.document["scoring_server"] == "unreachable"
    fine = health(
        {"cam1": CameraStatus.ONLINE}, "connected", True, {"db": 0}, "v1@abc", False, scoring_server="reachable"
    )
    assert fine.healthy and fine.document["scoring_server"] == "reachable"


@pytest.mark.parametrize(
    ("cameras", "broker", "store_ok", "backlogs", "stalled", "problems"),
    [
        ({"cam1": CameraStatus.ONLINE, "cam2": CameraStatus.DISABLED}, "connected", True, {"db": 3}, False, []),
        ({"cam1": CameraStatus.ONLINE}, "disabled", True, {"db": 3}, False, []),  # no broker configured
        ({"cam1": None}, "connecting", True, {"db": 3}, False, []),  # just started: nothing is late yet
        ({"cam1": CameraStatus.STALLED}, "connected", True, {"db": 3}, False, ["camera cam1 is stalled"]),
        (
            {"cam1": CameraStatus.OFFLINE},
            "disconnected",
            True,
            {"db": 3},
            False,
            ["camera cam1 is offline", "MQTT broker disconnected"],
        ),
        (
            {"cam1": CameraStatus.ONLINE},
            "connected",
            False,
            None,
            True,
            ["SQL store not writable", "journal not readable", "scoring made no progress"],
        ),
    ],
)
def test_health_table(
    cameras: dict[str, CameraStatus | None],
    broker: str,
    store_ok: bool,
    backlogs: dict[str, int] | None,
    stalled: bool,
    problems: list[str],
) -> None:
    verdict = health(cameras, broker, store_ok, backlogs, "v1@abc", stalled)
    assert verdict.healthy is (not problems)
    assert verdict.document["problems"] == problems
    assert verdict.document["status"] == ("ok" if not problems else "unhealthy")
    assert verdict.document["journal_backlog"] == backlogs and verdict.document["model_version"] == "v1@abc"
    assert verdict.document["broker"] == broker
    assert set(verdict.document["cameras"].values()) <= {"online", "offline", "stalled", "disabled", "starting"}


def _get(app: App, path: str) -> tuple[int, bytes]:
    assert app.outputs is not None and app.outputs.http is not None
    url = f"http://127.0.0.1:{app.outputs.http.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def _scrape(app: App) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = _get(app, "/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_metrics_move_as_frames_flow_and_health_follows_the_broker(
    daemon_model: Path, tmp_path: Path, broker: MosquittoBroker, mqtt_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = f"""{mqtt_section(broker, mqtt_prefix, reconnect_min_s=0.1, reconnect_max_s=0.5)}
[http]
port = {free_port()}
"""
    config_path = write_config(tmp_path, daemon_model, cameras=2, fps=10.0, outputs=outputs)
    config = load_config(config_path)
    app = App(config)
    app.start()
    line = ("line", "l1")
    try:
        wait_until(lambda: _get(app, "/healthz")[0] == 200, timeout=30, interval=0.2)
        first = _scrape(app)
        wait_until(
            lambda: (
                _scrape(app)[("linewatch_frames_captured_total", (("camera", "cam0"), line))]
                >= first[("linewatch_frames_captured_total", (("camera", "cam0"), line))] + 10
            ),
            timeout=30,
            interval=0.2,
        )
        later = _scrape(app)
        text = _get(app, "/metrics")[1].decode()
        exposed = {
            f"{family.name}_total" if family.type == "counter" else family.name
            for family in text_string_to_metric_families(text)
        }
        not_yet = {"linewatch_retrain_last_success_timestamp_seconds"}  # a gauge set by the first successful run
        remote = {name for name in METRIC_NAMES if "remote" in name or "scoring_server" in name}  # runtime triton
        assert set(METRIC_NAMES) - not_yet - remote <= exposed
        # This daemon scores in-process: no scoring server to count (the round-trip histogram is an empty family).
        assert not (remote - {"linewatch_remote_scoring_seconds"}) & exposed

        def inspected(scrape: dict[Any, float]) -> float:
            return sum(v for (name, _), v in scrape.items() if name == "linewatch_inspections_total")

        assert inspected(later) > inspected(first)
        assert later[("linewatch_journal_latency_seconds_count", (("camera", "cam0"), line))] > 0
        assert later[("linewatch_camera_up", (("camera", "cam1"), line))] == 1
        assert later[("linewatch_mqtt_connected", (line,))] == 1
        # defect episodes (30 % defects, debounce 1 of 1) reach the broker: capture -> PUBACK is timed
        wait_until(lambda: _scrape(app)[("linewatch_alert_latency_seconds_count", (line,))] > 0, timeout=30)
        document = json.loads(_get(app, "/healthz")[1])
        assert document["status"] == "ok" and document["broker"] == "connected"
        assert document["cameras"] == {"cam0": "online", "cam1": "online"}
        capsys.readouterr()
        assert main(["status", "--interval", "0.5", "--config", str(config_path)]) == 0
        shown = capsys.readouterr().out
        assert "line test/l1: OK" in shown and "broker connected" in shown
        rates = [float(row.split()[2]) for row in shown.splitlines() if row.startswith(("  cam0 ", "  cam1 "))]
        assert len(rates) == 2 and all(rate > 0 for rate in rates)  # both cameras deliver frames

        broker.stop()
        wait_until(lambda: _get(app, "/healthz")[0] == 503, timeout=30, interval=0.2)
        assert json.loads(_get(app, "/healthz")[1])["problems"] == ["MQTT broker disconnected"]
        assert main(["status", "--interval", "0.1", "--config", str(config_path)]) == 1
        assert "! MQTT broker disconnected" in capsys.readouterr().out
        assert _scrape(app)[("linewatch_mqtt_connected", (line,))] == 0
        broker.start()
        wait_until(lambda: _get(app, "/healthz")[0] == 200, timeout=30, interval=0.2)
    finally:
        if not broker.running:
            broker.start()
        app.stop()


def test_health_names_an_unwritable_journal_and_records_dropped_for_space() -> None:
    """Issue 15, items 2 and 3: both were invisible in /healthz."""
    online = {"cam1": CameraStatus.ONLINE}
    dropped = {"normal_verdict": 940, "event": 2}
    verdict = health(online, "connected", True, {"db": 3}, "v1@abc", False, "disk full", (True, dropped))
    assert not verdict.healthy
    assert verdict.document["problems"] == [
        "journal not writable",
        "disk below the journal watermark: undelivered records dropped",
    ]
    assert verdict.document["journal"] == "not writable: disk full"
    assert verdict.document["journal_dropped"] == {"event": 2, "normal_verdict": 940}
    calm = health(online, "connected", True, {"db": 3}, "v1@abc", False, None, (False, dropped))
    assert calm.healthy and calm.document["journal"] == "ok" and calm.document["journal_dropped"] == dropped

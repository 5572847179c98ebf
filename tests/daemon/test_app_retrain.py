"""The running daemon retrains on request, swaps the model between batches without losing a frame, tells
``GET /model`` about it, and rolls back over HTTP."""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from linewatch.config import load_config
from linewatch.daemon.app import App
from linewatch.retrain.store import list_runs
from linewatch.retrain.versions import model_version
from linewatch.sinks.db_schema import Inspection
from linewatch.sinks.mqtt_payloads import MODEL_STATE_FIELDS
from tests.daemon.test_app import (
    _assert_no_frame_lost,
    _wait_for,
    daemon_model,
    journal_records,
    mqtt_section,
    write_config,
)
from tests.services.mosquitto import MosquittoBroker, MqttWatcher

__all__ = ["daemon_model"]  # the fixture, shared with test_app

OUTPUTS = """
[mqtt]
enabled = false

[http]
port = 0

[evidence]
every_nth_normal = 1

[retrain]
schedule = "0 3 * * *"
min_new_normals = 6
steps = 20
frr_margin = 0.99
"""


def _http(app: App, method: str, path: str, document: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    assert app.outputs is not None and app.outputs.http is not None
    body = None if document is None else json.dumps(document).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{app.outputs.http.port}{path}",
        data=body,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def _stored_normals(app: App) -> list[str]:
    assert app.outputs is not None
    query = select(Inspection.id).where(Inspection.snapshot.is_not(None), Inspection.verdict == "normal")
    with app.outputs.engine.connect() as conn:
        return list(conn.scalars(query.order_by(Inspection.frame_ts)))


def _labelled(app: App) -> int:
    assert app.outputs is not None
    with app.outputs.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).where(Inspection.label == "normal")) or 0)


def test_retrain_and_rollback_in_a_running_daemon(daemon_model: Path, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, daemon_model, cameras=1, fps=20.0, outputs=OUTPUTS))
    app = App(config)
    app.start()
    try:
        first = model_version(daemon_model)
        assert _http(app, "GET", "/model")[1]["version"] == first
        _wait_for(lambda: len(_stored_normals(app)) >= 8, timeout_s=60)
        for inspection_id in _stored_normals(app)[:8]:
            status, _ = _http(app, "POST", "/feedback", {"inspection_id": inspection_id, "label": "normal"})
            assert status == 200
        _wait_for(lambda: _labelled(app) >= 8, timeout_s=30)

        assert _http(app, "POST", "/retrain", {"reson": "typo"})[0] == 400  # a misspelt key is not ignored
        status, answer = _http(app, "POST", "/retrain", {"reason": "new batch of steel"})
        assert (status, answer["status"], answer["requested"]) == (202, "started", "new batch of steel")
        assert app.retrain("again", "mqtt")["status"] == "busy"  # one at a time, whoever asks
        assert app.retraining is not None
        outcome = app.retraining.wait(timeout=180)
        assert outcome is not None and outcome.status == "accepted", outcome and outcome.reason
        second = outcome.version
        assert app.outputs is not None
        assert list_runs(app.outputs.engine)[0]["trigger"] == "http: new batch of steel"  # the reason on record
        state = _http(app, "GET", "/model")[1]
        assert state["version"] == second and state["retrain"]["status"] == "accepted"
        _wait_for(lambda: journal_records(config.journal_path, "verdict")[-1].payload["model_version"] == second, 30)

        assert _http(app, "POST", "/model/rollback", {"version": 7})[0] == 400
        assert _http(app, "POST", "/model/rollback", {"version": "nope"})[0] == 404
        status, answer = _http(app, "POST", "/model/rollback", {})
        assert (status, answer["status"], answer["version"]) == (200, "rolled_back", first)
        _wait_for(lambda: journal_records(config.journal_path, "verdict")[-1].payload["model_version"] == first, 30)
    finally:
        app.stop()
    verdicts = journal_records(config.journal_path, "verdict")
    _assert_no_frame_lost(verdicts, cameras=1)  # the swaps happened between batches
    versions = [record.payload["model_version"] for record in verdicts]
    switches = [(a, b) for a, b in itertools.pairwise(versions) if a != b]
    assert switches == [(first, second), (second, first)]


def test_a_retrain_asked_over_mqtt_is_echoed_and_each_step_reaches_model_state(
    daemon_model: Path, tmp_path: Path, broker: MosquittoBroker, mqtt_prefix: str
) -> None:
    outputs = f"""{mqtt_section(broker, mqtt_prefix)}
[http]
port = 0

[retrain]
schedule = ""
recalibrate = false
"""
    config = load_config(write_config(tmp_path, daemon_model, cameras=1, fps=5.0, outputs=outputs))
    state_topic, echo_topic = f"{mqtt_prefix}/model/state", f"{mqtt_prefix}/retrain/state"
    with MqttWatcher(broker, state_topic, echo_topic) as watcher:
        app = App(config)
        app.start()
        try:
            first = watcher.wait_for(lambda seen: seen.topic == state_topic, timeout=30)
            assert json.loads(first.payload)["version"] == model_version(daemon_model)
            assert tuple(json.loads(first.payload)) == MODEL_STATE_FIELDS  # what docs/mqtt.md lists
            watcher.publish(f"{mqtt_prefix}/retrain/set", json.dumps({"reason": "shift change"}))
            echo = watcher.wait_for(lambda seen: seen.topic == echo_topic, timeout=30)
            assert json.loads(echo.payload) == {
                "status": "started",
                "trigger": "mqtt: shift change",
                "requested": "shift change",
            }

            def news(seen: Any) -> dict[str, Any]:
                return json.loads(seen.payload).get("retrain") or {} if seen.topic == state_topic else {}

            watcher.wait_for(lambda seen: news(seen).get("status") == "skipped", timeout=60)
            with MqttWatcher(broker, state_topic) as late:  # an HMI that connects later gets the retained state
                retained = late.wait_for(lambda seen: seen.retain, timeout=10)
                assert news(retained)["status"] == "skipped"
        finally:
            app.stop()
    steps = [news(seen) for seen in watcher.on(state_topic) if news(seen)]
    assert [step["status"] for step in steps] == ["running", "skipped"]  # every step, in order, retained
    assert {step["trigger"] for step in steps} == {"mqtt: shift change"}
    assert "too few new confirmed normals" in steps[-1]["reason"]

"""The whole daemon against a real Mosquitto and a real PostgreSQL that go down and come back mid-run.

Every journaled verdict must reach the store, and every defect event must reach a subscriber in journal
order; a duplicate is only ever a redelivery of the same event message. Feedback arriving over MQTT,
HTTP and the CLI must reach the store too.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from linewatch.cli.main import main
from linewatch.config import Config, load_config
from linewatch.daemon.app import App
from linewatch.pipeline.journal.records import JournalRecord
from linewatch.retrain.store import list_versions
from linewatch.retrain.versions import model_version
from linewatch.sinks.db import DatabaseError, LineScope, make_engine
from linewatch.sinks.db_schema import DefectEvent, Inspection, LabelRecord
from tests.daemon.test_app import daemon_model, journal_records, mqtt_section, write_config  # noqa: F401  (a module-scoped fixture)
from tests.services.mosquitto import MosquittoBroker, MqttWatcher, wait_until
from tests.services.postgres import PostgresServer


def _write_config(root: Path, model: Path, broker: MosquittoBroker, store_url: str, prefix: str) -> Path:
    outputs = f"""
[store]
url = "{store_url}"
retry_min_s = 0.1
retry_max_s = 0.5

{mqtt_section(broker, prefix, ack_timeout_s=2.0, reconnect_min_s=0.1, reconnect_max_s=0.5)}
[evidence]
every_nth_normal = 5
min_free_mb = 0  # evidence must not depend on the test machine's free disk

[http]
port = 0

[web]
public_url = "https://{prefix.replace("/", "-")}.plant:9108"
"""
    return write_config(root, model, fps=25, outputs=outputs, update_min_interval_s=0.0)


def _journaled(config: Config, kind: str) -> list[JournalRecord]:
    return journal_records(config.journal_path, kind)


def _grows_by(config: Config, count: int) -> Callable[[], bool]:
    start = len(_journaled(config, "verdict"))
    return lambda: len(_journaled(config, "verdict")) >= start + count


def _quiesce(app: App) -> None:
    """Stop capturing, then wait until every forwarder has delivered everything the journal holds."""
    for name in list(app.cameras):
        app.set_camera_enabled(name, False)
    assert app.journal is not None and app.outputs is not None
    journal, names = app.journal, [runner.name for runner in app.outputs.runners]
    wait_until(lambda: not any(journal.backlog(name) for name in names), timeout=60, interval=0.1)


def test_broker_and_database_outages_lose_nothing(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
    broker: MosquittoBroker,
    postgres_server: PostgresServer,
    postgres_url: str,
    mqtt_prefix: str,
) -> None:
    config = load_config(_write_config(tmp_path, daemon_model, broker, postgres_url, mqtt_prefix))
    with MqttWatcher(broker, f"{mqtt_prefix}/+/defect", persistent=True) as watcher:
        app = App(config)
        app.start()
        try:
            wait_until(_grows_by(config, 20), timeout=60, interval=0.1)
            broker.stop()  # the broker goes away: inspection goes on, events wait in the journal
            wait_until(_grows_by(config, 40), timeout=60, interval=0.1)
            broker.start()
            wait_until(_grows_by(config, 20), timeout=60, interval=0.1)
            postgres_server.stop()  # and then the database
            wait_until(_grows_by(config, 40), timeout=60, interval=0.1)
            postgres_server.start()
            _quiesce(app)
            journaled_events = _journaled(config, "event")
            received = watcher.wait_until(lambda seen: len(seen) >= len(journaled_events), timeout=30)
        finally:
            app.stop()
    assert app.outputs is not None
    failures = {runner.name: runner.stats.failures for runner in app.outputs.runners}
    assert failures["db"] > 0 and failures["mqtt"] > 0, failures  # both outages were really felt

    verdicts = _journaled(config, "verdict")
    engine = make_engine(postgres_url)
    with engine.connect() as connection:
        stored = {row.id: row for row in connection.execute(select(Inspection))}
        episodes = {row.event_id: row for row in connection.execute(select(DefectEvent))}
    engine.dispose()
    assert len(verdicts) >= 120 and sorted(stored) == sorted(record.key for record in verdicts)
    for record in verdicts:
        row = stored[record.key]
        assert (row.camera, row.seq, row.verdict, row.snapshot) == (
            record.camera,
            record.payload["seq"],
            record.payload["label"],
            record.payload["snapshot"],
        )

    assert journaled_events, "defect rate 0.3 over 120+ frames opened no episode"
    messages = [json.loads(seen.payload) for seen in received]
    first_copies: dict[tuple[str, int], dict] = {}
    for message in messages:
        key = (message["event_id"], message["seq"])
        assert first_copies.setdefault(key, message) == message  # a duplicate is the same message again
    in_order = list(dict.fromkeys((m["event_id"], m["seq"]) for m in messages))
    assert in_order == [(e.payload["event_id"], e.payload["seq"]) for e in journaled_events]
    assert {m["site"] for m in messages} == {"test"}
    assert all(m["verdict"] == "defect" for m in messages if m["type"] != "end")
    for message in messages:  # [web] public_url: absolute links to the same evidence files
        for key in ("snapshot", "heatmap"):
            expected = None if message[key] is None else f"https://{mqtt_prefix.replace('/', '-')}.plant:9108/evidence/"
            assert (message[f"{key}_url"] is None) == (expected is None)
            assert expected is None or message[f"{key}_url"] == expected + message[key]
    assert set(episodes) == {e.payload["event_id"] for e in journaled_events}
    print(  # the numbers behind the closing note (pytest -s shows them)
        f"outages: {len(verdicts)} verdicts journaled, {len(stored)} stored; {len(journaled_events)} event "
        f"messages journaled, {len(messages)} received, {len(messages) - len(in_order)} duplicates; "
        f"forwarder failures {failures}"
    )


def test_feedback_over_mqtt_http_and_cli_reaches_the_store_with_evidence(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
    broker: MosquittoBroker,
    mqtt_prefix: str,
) -> None:
    store_url = f"sqlite:///{tmp_path / 'data' / 'linewatch.sqlite3'}"
    config_path = _write_config(tmp_path, daemon_model, broker, store_url, mqtt_prefix)
    config = load_config(config_path)
    with MqttWatcher(broker, f"{mqtt_prefix}/#") as watcher:
        app = App(config)
        app.start()
        try:
            wait_until(lambda: len(_journaled(config, "event")) >= 1, timeout=60, interval=0.1)
            _quiesce(app)
            verdicts = _journaled(config, "verdict")
            event = _journaled(config, "event")[0].payload
            normal = next(v for v in verdicts if v.payload["label"] == "normal")
            other = next(v for v in verdicts if v.key not in (normal.key, event["inspection_id"]))
            watcher.publish(
                f"{mqtt_prefix}/{event['camera']}/feedback/set",
                json.dumps({"event_id": event["event_id"], "label": "normal", "user": "op1"}),
            )
            assert app.outputs is not None and app.outputs.http is not None
            connection = http.client.HTTPConnection("127.0.0.1", app.outputs.http.port, timeout=5)
            body = json.dumps({"inspection_id": normal.key, "label": "defect"})
            connection.request("POST", "/feedback", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            answer = response.read()  # the connection is kept alive: read the answer before the next request
            assert response.status == 200, answer
            unknown = json.dumps({"inspection_id": "nope", "label": "normal"})
            connection.request("POST", "/feedback", body=unknown, headers={"Content-Type": "application/json"})
            assert connection.getresponse().status == 404
            connection.close()
            exit_codes: list[int] = []
            command = ["label", other.key, "normal", "--config", str(config_path)]
            cli = threading.Thread(target=lambda: exit_codes.append(main(command)))
            cli.start()
            cli.join(timeout=30)
            assert exit_codes == [0]
            wait_until(lambda: len(_journaled(config, "label")) == 3, timeout=30, interval=0.1)
            _quiesce(app)
        finally:
            app.stop()
        watcher.wait_for(lambda seen: seen.topic == f"{mqtt_prefix}/available" and seen.text == "stopped")
    assert [seen.text for seen in watcher.on(f"{mqtt_prefix}/available")] == ["online", "stopped"]

    engine = make_engine(store_url)
    with engine.connect() as connection:
        labels = {row.target_id: row for row in connection.execute(select(LabelRecord))}
        inspections = {row.id: row for row in connection.execute(select(Inspection))}
    engine.dispose()
    assert (labels[event["event_id"]].source, labels[event["event_id"]].username) == ("mqtt", "op1")
    assert (labels[normal.key].source, labels[other.key].source) == ("http", "cli")
    assert inspections[normal.key].label == "defect" and inspections[other.key].label == "normal"
    assert inspections[event["inspection_id"]].label == "normal"  # an event label reaches its defect frames
    evidence = config.evidence_dir
    defect_row = inspections[event["inspection_id"]]
    assert defect_row.snapshot and (evidence / defect_row.snapshot).is_file()
    assert defect_row.heatmap and (evidence / defect_row.heatmap).is_file()


def test_a_camera_disabled_and_enabled_again_loses_no_frame(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
    broker: MosquittoBroker,
    mqtt_prefix: str,
) -> None:
    """Issue 15, item 1: the re-enabled reader numbers on, so every scored frame keeps an id of its own and
    reaches the journal, the store and (as defect events) a subscriber; counters never go backwards."""
    store_url = f"sqlite:///{tmp_path / 'store.sqlite3'}"
    config = load_config(_write_config(tmp_path, daemon_model, broker, store_url, mqtt_prefix))
    with MqttWatcher(broker, f"{mqtt_prefix}/+/defect", persistent=True) as watcher:
        app = App(config)
        app.start()
        try:
            wait_until(_grows_by(config, 16), timeout=60, interval=0.1)
            app.set_camera_enabled("cam1", False)
            frames_at_disable = app.cameras["cam1"].reader.stats.frames
            wait_until(_grows_by(config, 8), timeout=60, interval=0.1)
            app.set_camera_enabled("cam1", True)
            wait_until(
                lambda: app.cameras["cam1"].reader.stats.frames >= frames_at_disable + 16, timeout=60, interval=0.1
            )
            assert app.cameras["cam1"].status.value == "online"
            _quiesce(app)
            journaled_events = _journaled(config, "event")
            received = watcher.wait_until(lambda seen: len(seen) >= len(journaled_events), timeout=30)
        finally:
            app.stop()
    assert app.worker is not None
    verdicts = _journaled(config, "verdict")
    assert len(verdicts) == app.worker.stats.frames  # every scored frame was journaled, none taken for a replay
    cam1 = [record.payload["seq"] for record in verdicts if record.camera == "cam1"]
    assert cam1 == list(range(1, app.cameras["cam1"].reader.stats.frames + 1))  # numbering went on after enable
    engine = make_engine(store_url)
    with engine.connect() as connection:
        stored = sorted(row.id for row in connection.execute(select(Inspection)))
    engine.dispose()
    assert stored == sorted(record.key for record in verdicts)
    published = list(dict.fromkeys((m["event_id"], m["seq"]) for m in (json.loads(s.payload) for s in received)))
    assert published == [(e.payload["event_id"], e.payload["seq"]) for e in journaled_events]


def test_the_active_model_is_recorded_once_a_store_down_at_start_returns(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
    postgres_server: PostgresServer,
    postgres_url: str,
) -> None:
    """Issue 15, item 9: with PostgreSQL down at start, the active version never reached model_versions."""
    outputs = f'[store]\nurl = "{postgres_url}"\nretry_min_s = 0.1\nretry_max_s = 0.5\n\n[mqtt]\nenabled = false\n'
    config = load_config(write_config(tmp_path, daemon_model, cameras=1, outputs=outputs + "\n[http]\nport = 0\n"))
    postgres_server.stop()
    app = App(config)
    app.start()
    try:
        wait_until(_grows_by(config, 8), timeout=60, interval=0.1)  # inspecting without a store
        postgres_server.start()
        engine = make_engine(postgres_url, LineScope.of(config.site))

        def recorded() -> list[dict]:
            try:
                return [row for row in list_versions(engine) if row["status"] == "active"]
            except DatabaseError:
                return []  # the schema is not there yet: the store forwarder creates it

        wait_until(lambda: bool(recorded()), timeout=60, interval=0.2)
        assert [row["version"] for row in recorded()] == [model_version(daemon_model)]
        engine.dispose()
    finally:
        app.stop()

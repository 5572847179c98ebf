"""Who did what (issue 22): a camera switched over MQTT under a client level, or by a reload, is journaled as an
action naming the sender and reaches the store; every camera's enabled state is on MQTT from the start."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from linewatch.config import load_config
from linewatch.daemon.app import App
from linewatch.pipeline.journal.records import action_from_payload
from linewatch.sinks.db import make_engine
from linewatch.sinks.db_schema import ActionRecord
from tests.daemon.test_app import _wait_for, daemon_model, journal_records, mqtt_section, write_config  # noqa: F401
from tests.services.mosquitto import MosquittoBroker, MqttWatcher


def test_switches_are_recorded_with_their_sender_and_published_from_the_start(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
    broker: MosquittoBroker,
    mqtt_prefix: str,
) -> None:
    outputs = f"{mqtt_section(broker, mqtt_prefix)}\n[http]\nport = 0\n"
    config = load_config(write_config(tmp_path, daemon_model, cameras=2, outputs=outputs))
    with MqttWatcher(broker, f"{mqtt_prefix}/+/enabled") as watcher:
        app = App(config)
        app.start()
        try:
            for camera in ("cam0", "cam1"):  # before any command: HMIs and Home Assistant see the state
                watcher.wait_for(
                    lambda seen, c=camera: seen.topic == f"{mqtt_prefix}/{c}/enabled" and seen.text == "true"
                )
            watcher.publish(f"{mqtt_prefix}/cam1/enabled/set/operator-anna", b"false")
            watcher.publish(f"{mqtt_prefix}/cam1/enabled/set", b"true")  # the bare topic: unnamed
            _wait_for(lambda: len(journal_records(config.journal_path, "action")) == 2, 30)
            app.reload(config.model_copy(update={"cameras": [
                c.model_copy(update={"enabled": c.name != "cam0"}) for c in config.cameras
            ]}))  # fmt: skip
            engine = make_engine(config.store_url)

            def stored() -> list[tuple[str, str, str | None]]:
                with engine.connect() as conn:
                    query = select(ActionRecord.kind, ActionRecord.actor, ActionRecord.camera)
                    return [tuple(row) for row in conn.execute(query.order_by(ActionRecord.at))]

            _wait_for(lambda: len(stored()) == 3, 30)  # forwarded to the store like verdicts
        finally:
            app.stop()
        assert watcher.on(f"{mqtt_prefix}/cam0/enabled")[-1].text == "false"  # a reload publishes its switch too
    actions = [action_from_payload(r.payload) for r in journal_records(config.journal_path, "action")]
    expected = [
        ("camera_disabled", "mqtt: operator-anna", "cam1"),
        ("camera_enabled", "mqtt", "cam1"),
        ("camera_disabled", "reload", "cam0"),
    ]
    assert [(a.kind, a.by, a.camera) for a in actions] == expected
    assert stored() == expected
    engine.dispose()

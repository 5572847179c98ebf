"""A running daemon publishes its counters on P/stats (issue 19): retained, growing, matching what it journaled."""

from __future__ import annotations

import json
from pathlib import Path

from linewatch.config import load_config
from linewatch.daemon.app import App
from linewatch.sinks.mqtt_stats import STATS_FIELDS
from tests.daemon.test_app import daemon_model, journal_records, mqtt_section, write_config  # noqa: F401  (a fixture)
from tests.services.mosquitto import MosquittoBroker, MqttWatcher


def test_the_daemon_publishes_growing_counters_that_match_its_journal(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
    broker: MosquittoBroker,
    mqtt_prefix: str,
) -> None:
    outputs = f"{mqtt_section(broker, mqtt_prefix, stats_interval_s=0.3)}\n[http]\nport = 0\n"
    config = load_config(write_config(tmp_path, daemon_model, cameras=2, fps=10.0, outputs=outputs))
    topic = f"{mqtt_prefix}/stats"
    with MqttWatcher(broker, topic) as watcher:
        app = App(config)
        app.start()
        try:
            watcher.wait_for(lambda seen: sum(json.loads(seen.payload)["frames"].values()) >= 20, timeout=60)
        finally:
            app.stop()
        messages = [json.loads(seen.payload) for seen in watcher.on(topic)]
    assert all(tuple(message) == STATS_FIELDS for message in messages)
    assert len({message["since"] for message in messages}) == 1  # one run of the daemon
    totals = [sum(message["frames"].values()) for message in messages]
    assert totals == sorted(totals) and totals[-1] >= 20  # counters only grow
    last = messages[-1]
    assert set(last["frames"]) == {camera.name for camera in config.cameras}
    verdicts = journal_records(config.journal_path, "verdict")
    assert sum(sum(counts.values()) for counts in last["verdicts"].values()) == totals[-1] <= len(verdicts)
    with MqttWatcher(broker, topic) as late:  # a system that connects after the stop reads the latest
        assert json.loads(late.wait_for(lambda seen: seen.retain).payload)["since"] == last["since"]

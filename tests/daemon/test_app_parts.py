"""Parts and triggers (issue 19): triggered synthetic cameras in a two-camera station give one part verdict per
trigger, with the trigger's part id, on MQTT, in the journal and in the store; a camera that does not report
makes the part ``incomplete`` at the deadline; a folder camera takes part ids from its file names."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sqlalchemy import select

from linewatch.config import load_config
from linewatch.daemon.app import App
from linewatch.images import write_image
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.pipeline.journal.records import part_from_payload, verdict_from_payload
from linewatch.sinks.db import make_engine
from linewatch.sinks.db_schema import PartRecord
from tests.daemon.test_app import (  # noqa: F401  (a fixture)
    HEIGHT,
    WIDTH,
    _wait_for,
    daemon_model,
    journal_records,
    mqtt_section,
    write_config,
)
from tests.services.mosquitto import MosquittoBroker, MqttWatcher

STATION = """
[[stations]]
name = "st1"
cameras = ["cam0", "cam1"]
deadline_ms = 1500
"""


def _triggered(path: Path, station: str = STATION) -> Path:
    text = path.read_text().replace('policy = "queue"', 'policy = "queue"\ntrigger = "triggered"')
    path.write_text(text + station)
    return path


def test_each_trigger_gives_one_part_verdict_with_its_part_id(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
    broker: MosquittoBroker,
    mqtt_prefix: str,
) -> None:
    outputs = f"{mqtt_section(broker, mqtt_prefix)}\n[http]\nport = 0\n"
    config = load_config(_triggered(write_config(tmp_path, daemon_model, cameras=2, fps=30.0, outputs=outputs)))
    parts = [f"P-{n}" for n in range(5)]
    with MqttWatcher(broker, f"{mqtt_prefix}/st1/part") as watcher:
        app = App(config)
        app.start()
        try:
            watcher.wait_until(lambda _seen: app.outputs is not None and app.outputs.link is not None
                               and app.outputs.link.connected, timeout=10)  # fmt: skip
            for part_id in parts:
                watcher.publish(f"{mqtt_prefix}/st1/trigger/plc-7", json.dumps({"part_id": part_id}))
                watcher.wait_for(lambda seen, p=part_id: json.loads(seen.payload)["part_id"] == p, timeout=30)
            watcher.publish(f"{mqtt_prefix}/st1/trigger", b"")  # a bare pulse: the daemon names the part
            watcher.wait_until(lambda seen: len(seen) == len(parts) + 1, timeout=30)
            messages = [json.loads(seen.payload) for seen in watcher.on(f"{mqtt_prefix}/st1/part")]
            engine = make_engine(config.store_url)

            def stored_parts() -> list[str]:
                with engine.connect() as conn:
                    return list(conn.execute(select(PartRecord.part_id)).scalars())

            _wait_for(lambda: len(stored_parts()) == len(parts) + 1, 30)  # forwarded to the store like verdicts
        finally:
            app.stop()
    assert [m["part_id"] for m in messages[: len(parts)]] == parts
    assert messages[-1]["part_id"].startswith("st1-")
    assert all(m["verdict"] in ("OK", "NOK") and len(m["inspections"]) == 2 for m in messages)
    verdicts = [verdict_from_payload(r.payload) for r in journal_records(config.journal_path, "verdict")]
    # one frame per camera per trigger, each tagged with the part: nothing scored between triggers
    assert sorted((v.camera, v.part_id) for v in verdicts) == sorted(
        (camera, m["part_id"]) for m in messages for camera in ("cam0", "cam1")
    )
    for message in messages:
        frames = [v for v in verdicts if v.part_id == message["part_id"]]
        worst = "NOK" if any(v.label == "defect" for v in frames) else "OK"
        assert message["verdict"] == worst and set(message["inspections"]) == {v.inspection_id for v in frames}
    stored = [part_from_payload(r.payload) for r in journal_records(config.journal_path, "part")]
    assert [p.part_id for p in stored] == [m["part_id"] for m in messages]
    assert sorted(stored_parts()) == sorted(m["part_id"] for m in messages)
    engine.dispose()


def test_a_camera_that_does_not_report_makes_the_part_incomplete_at_the_deadline(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = _triggered(write_config(tmp_path, daemon_model, cameras=2, fps=30.0))
    path.write_text(path.read_text().replace('name = "cam1"', 'name = "cam1"\nenabled = false'))
    config = load_config(path)
    app = App(config)
    app.start()
    try:
        assert app.trigger("st1", "P-9", "test") == "P-9"
        _wait_for(lambda: bool(journal_records(config.journal_path, "part")), 10)
        (part,) = [part_from_payload(r.payload) for r in journal_records(config.journal_path, "part")]
        assert part.verdict == "incomplete" and "no frame from cam1 within 1500 ms" in part.reason
        assert len(part.inspections) == 1  # cam0's frame was judged
        assert app.parts.part_counts("st1")["incomplete"] == 1 and app.parts.station_state("st1") == "error"
    finally:
        app.stop()


def test_a_folder_camera_takes_its_part_ids_from_the_file_names(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    path = write_config(tmp_path, daemon_model, cameras=1)
    text = path.read_text().replace('source = "synthetic"', f'source = "folder"\npath = "{folder}"')
    text = text.replace('policy = "queue"', 'policy = "queue"\npart_id_pattern = "^(?P<part>[A-Z]+-[0-9]+)_"')
    path.write_text(text + '\n[[stations]]\nname = "gate"\ncameras = ["cam0"]\n')
    config = load_config(path)
    product = SyntheticProduct(style_seed=0, width=WIDTH, height=HEIGHT)
    rng = np.random.default_rng(0)
    app = App(config)
    app.start()
    try:
        for name in ("SN-100_top.png", "SN-101_top.png", "unnamed.png"):
            write_image(folder / name, product.normal(rng).image)
        _wait_for(lambda: len(journal_records(config.journal_path, "verdict")) == 3, 30)
        _wait_for(lambda: len(journal_records(config.journal_path, "part")) == 2, 10)
    finally:
        app.stop()
    verdicts = [verdict_from_payload(r.payload) for r in journal_records(config.journal_path, "verdict")]
    assert sorted(str(v.part_id) for v in verdicts) == ["None", "SN-100", "SN-101"]
    parts = [part_from_payload(r.payload) for r in journal_records(config.journal_path, "part")]
    assert sorted(p.part_id for p in parts) == ["SN-100", "SN-101"] and {p.station for p in parts} == {"gate"}

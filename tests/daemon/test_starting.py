"""A first start that trains the demo model answers on the HTTP port from the first seconds (issue 21): the
page and ``/healthz`` say which stage the daemon is in and how far the training is, ``linewatch status``
reads it, and the port is free again for the daemon's own server afterwards."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from linewatch.cli.main import main
from linewatch.config import load_config
from linewatch.daemon.lifecycle import bootstrap_demo_model, needs_demo_model
from linewatch.daemon.starting import StartingPort
from tests.daemon.test_app import write_config
from tests.services.ports import free_port

DEMO = """
[demo]
train_normals = 4
shots = 2
steps = 4
"""


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def starting_config(root: Path, port: int = 0) -> Path:
    outputs = f"[mqtt]\nenabled = false\n\n[http]\nport = {port}\n"
    path = write_config(root, root / "models" / "demo", cameras=1, outputs=outputs)
    path.write_text(path.read_text().replace("[scoring]\n", "[scoring]\nbootstrap_demo_model = true\n") + DEMO)
    return path


def test_the_port_tells_the_stage_and_the_training_progress_until_the_model_exists(tmp_path: Path) -> None:
    config = load_config(starting_config(tmp_path))
    assert needs_demo_model(config)
    starting = StartingPort(config)
    starting.start()
    stages: list[tuple[str, float | None]] = []
    seen: dict[str, tuple[int, str]] = {}

    def report(stage: str, fraction: float | None) -> None:
        stages.append((stage, fraction))
        starting.report(stage, fraction)
        if fraction == 0.5:  # half way through training: what a newcomer would see
            seen["healthz"] = get(starting.port, "/healthz")
            seen["page"] = get(starting.port, "/")

    try:
        assert bootstrap_demo_model(config, threading.Event(), report)
    finally:
        port = starting.port
        starting.stop()
    assert [stage for stage, _ in stages[:2]] == [
        "writing synthetic normal parts for the demo model",
        "loading the backbone for the demo model",
    ]
    assert [fraction for _, fraction in stages[2:]] == [0.25, 0.5, 0.75, 1.0]
    status, body = seen["healthz"]
    health = json.loads(body)
    assert status == 503 and health["status"] == "starting" and health["progress"] == 0.5
    assert health["problems"] == ["training the demo model: 50 % (step 2 of 4)"]
    status, page = seen["page"]
    assert status == 503 and "training the demo model: 50 %" in page and 'http-equiv="refresh"' in page
    assert '<progress max="100" value="50">' in page
    assert not needs_demo_model(config)  # the model is there: the next start serves at once
    with socket.create_server(("127.0.0.1", port)):  # the port is free for the daemon's own server
        pass


def test_status_reads_a_starting_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = starting_config(tmp_path, free_port())
    starting = StartingPort(load_config(path))
    starting.start()
    try:
        starting.report("training the demo model: 40 % (step 80 of 200)", 0.4)
        assert main(["status", "--interval", "0", "--config", str(path)]) == 1
    finally:
        starting.stop()
    assert capsys.readouterr().out.strip() == "line test/l1: STARTING: training the demo model: 40 % (step 80 of 200)"

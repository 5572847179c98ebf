"""``linewatch run`` under systemd's Type=notify protocol, with a fake NOTIFY_SOCKET: READY once warmed up
and inspecting, WATCHDOG pings while the pipeline makes progress, RELOADING/READY around a SIGHUP, and
STOPPING when told to stop; nothing before READY."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.daemon.test_app import REPO, daemon_model, write_config

__all__ = ["daemon_model"]  # the fixture, shared with test_app


def _received(receiver: socket.socket, until: float) -> list[str]:
    messages = []
    receiver.settimeout(0.2)
    while time.monotonic() < until:
        try:
            messages.append(receiver.recv(4096).decode())
        except TimeoutError:
            continue
    return messages


def test_ready_then_watchdog_pings_while_inspecting_then_stopping(daemon_model: Path, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, daemon_model, cameras=1, fps=10.0)
    notify_path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(notify_path))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
        "NOTIFY_SOCKET": str(notify_path),
        "WATCHDOG_USEC": "1000000",  # WatchdogSec=1: a ping every 0.5 s while all is well
    }
    log = tmp_path / "daemon.log"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "linewatch", "run", "--config", str(config_path)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    try:
        messages: list[str] = []
        deadline = time.monotonic() + 120
        while not any(m.startswith("READY=1") for m in messages) and time.monotonic() < deadline:
            messages += _received(receiver, time.monotonic() + 0.5)
        messages += _received(receiver, time.monotonic() + 3.0)  # inspecting: about 6 pings
        daemon.send_signal(signal.SIGHUP)
        messages += _received(receiver, time.monotonic() + 2.0)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0, log.read_text()[-2000:]
        messages += _received(receiver, time.monotonic() + 0.5)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        receiver.close()
    kinds = [message.split("\n", 1)[0].split("=", 1)[0] for message in messages]
    ready = kinds.index("READY")
    assert set(kinds[:ready]) <= {"STATUS"}, kinds  # nothing but status before READY
    assert "inspecting 1 camera(s), model model@" in messages[ready]
    pings = [i for i, kind in enumerate(kinds) if kind == "WATCHDOG"]
    assert len(pings) >= 4 and pings[0] > ready, kinds  # pinging while frames flow
    reload_at = kinds.index("RELOADING")
    assert kinds[reload_at + 1] == "READY" and "reloaded" in messages[reload_at + 1], messages[reload_at:]
    stopping = kinds.index("STOPPING")
    assert stopping > reload_at and "WATCHDOG" not in kinds[stopping + 1 :], kinds

"""sd_notify against a real AF_UNIX datagram socket standing in for systemd, the progress-driven watchdog
under a stepped clock, and the shipped unit file through ``systemd-analyze verify``."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from linewatch.clock import FakeClock
from linewatch.daemon.systemd import STATUS_MAX_CHARS, Notifier, notify, watchdog_interval

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "linewatch.service"
SERVE_UNIT = UNIT.with_name("linewatch-serve.service")
INSTALLED_BINARY = "/opt/linewatch/.venv/bin/linewatch"


class Receiver:
    """The service manager's end of NOTIFY_SOCKET: a bound datagram socket."""

    def __init__(self, name: str, address: str) -> None:
        self.name = name  # what goes into NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        """Every datagram received so far, oldest first (sending is synchronous, so nothing is in flight)."""
        received = []
        while True:
            try:
                received.append(self.sock.recv(65536).decode())
            except BlockingIOError:
                return received

    @property
    def environ(self) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.name}


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "notify"
    box = Receiver(str(path), str(path))
    yield box
    box.sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"linewatch-test-{uuid.uuid4().hex}"
    box = Receiver("@" + name, "\0" + name)
    yield box
    box.sock.close()


class StepClock(FakeClock):
    """A fake clock whose ``wait`` parks the calling thread until the test calls :meth:`step`, so each
    watchdog period runs exactly when the test says and is finished when ``step`` returns."""

    def __init__(self) -> None:
        super().__init__()
        self.periods: list[float] = []
        self._go = threading.Semaphore(0)
        self._parked = threading.Semaphore(0)

    def wait(self, seconds: float, stop: threading.Event) -> bool:
        self.periods.append(seconds)
        self._parked.release()
        self._go.acquire()
        self.advance(seconds)
        return stop.is_set()

    def until_parked(self) -> None:
        assert self._parked.acquire(timeout=5), "the watchdog thread never waited on the clock"

    def step(self) -> None:
        """Run one watchdog period to its end."""
        self._go.release()
        self.until_parked()

    def release(self) -> None:
        self._go.release()


WATCHDOG_60S = {"WATCHDOG_USEC": "60000000"}


def start(
    receiver: Receiver, work_pending: Callable[[], bool] | None = None
) -> tuple[Notifier, StepClock, threading.Event, threading.Thread]:
    clock = StepClock()
    notifier = Notifier({**receiver.environ, **WATCHDOG_60S, "WATCHDOG_PID": str(os.getpid())}, clock)
    stop = threading.Event()
    thread = notifier.start_watchdog(stop, work_pending)
    assert thread is not None
    clock.until_parked()
    return notifier, clock, stop, thread


def finish(clock: StepClock, stop: threading.Event, thread: threading.Thread) -> None:
    stop.set()
    clock.release()
    thread.join(timeout=5)
    assert not thread.is_alive()


# ---- notify ----------------------------------------------------------------------------------------


def test_notify_sends_one_datagram_to_a_path_socket(receiver: Receiver) -> None:
    assert notify("READY=1\nSTATUS=inspecting", receiver.environ) is True
    assert receiver.messages() == ["READY=1\nSTATUS=inspecting"]


def test_notify_reaches_an_abstract_socket(abstract_receiver: Receiver) -> None:
    assert notify("STATUS=hello", abstract_receiver.environ) is True
    assert abstract_receiver.messages() == ["STATUS=hello"]


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}], ids=["unset", "empty"])
def test_notify_without_systemd_is_a_silent_false(environ: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    assert notify("READY=1", environ) is False
    assert caplog.records == []


@pytest.mark.parametrize("kind", ["missing", "closed", "relative"])
def test_an_unreachable_socket_is_logged_once_and_never_raises(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if kind == "relative":
        name = f"notify-{uuid.uuid4().hex}"  # systemd only ever passes absolute or @abstract names
    else:
        name = str(tmp_path / "notify")
        if kind == "closed":  # the file exists, nobody listens: ECONNREFUSED
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
                gone.bind(name)
    with caplog.at_level(logging.DEBUG, logger="linewatch.daemon.systemd"):
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": name}) is False
        assert notify("WATCHDOG=1", {"NOTIFY_SOCKET": name}) is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert name in warnings[0].getMessage()
    assert len(caplog.records) == 2  # the repeat went to debug


def test_notify_refuses_an_empty_message(receiver: Receiver) -> None:
    with pytest.raises(ValueError, match="empty"):
        notify("", receiver.environ)


# ---- watchdog_interval -----------------------------------------------------------------------------

OWN_PID = "own pid"


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("60000000", None, 60.0),
        ("60000000", OWN_PID, 60.0),
        ("1500000", OWN_PID, 1.5),
        ("60000000", "1", None),  # meant for another process (we inherited the environment)
        ("60000000", "abc", None),
        ("0", None, None),
        ("-5", None, None),
        ("60s", None, None),
        ("", None, None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    environ = {}
    if usec is not None:
        environ["WATCHDOG_USEC"] = usec
    if pid is not None:
        environ["WATCHDOG_PID"] = str(os.getpid()) if pid == OWN_PID else pid
    assert watchdog_interval(environ) == expected


# ---- Notifier: lifecycle messages ------------------------------------------------------------------


def test_lifecycle_messages(receiver: Receiver) -> None:
    notifier = Notifier(receiver.environ)
    assert notifier.enabled
    assert notifier.status("loading model press3-brackets")
    assert notifier.ready("inspecting 3 cameras")
    assert notifier.reloading()
    assert notifier.ready()
    assert notifier.stopping()
    loading, ready, reloading, reloaded, stopping = receiver.messages()
    assert loading == "STATUS=loading model press3-brackets"
    assert ready == "READY=1\nSTATUS=inspecting 3 cameras"
    lines = reloading.split("\n")
    assert lines[0] == "RELOADING=1"
    key, usec = lines[1].split("=")
    assert key == "MONOTONIC_USEC"
    assert 0 < int(usec) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000  # the kernel clock, not a fake
    assert lines[2].startswith("STATUS=")
    assert reloaded.startswith("READY=1\n")
    assert stopping.startswith("STOPPING=1\nSTATUS=")


def test_a_slow_start_asks_systemd_for_more_time(receiver: Receiver) -> None:
    assert Notifier(receiver.environ).extend_start(900, "loading the model (OpenVINO int8)")
    assert receiver.messages() == ["EXTEND_TIMEOUT_USEC=900000000\nSTATUS=loading the model (OpenVINO int8)"]


def test_status_text_stays_one_bounded_line(receiver: Receiver) -> None:
    notifier = Notifier(receiver.environ)
    notifier.status("reload refused:\n[model] thresholds\tmust be numbers")
    notifier.status("x" * (STATUS_MAX_CHARS * 3))
    injected, long = receiver.messages()
    assert injected == "STATUS=reload refused: [model] thresholds must be numbers"  # no smuggled READY=1 lines
    assert "\n" not in long
    assert len(long) == len("STATUS=") + STATUS_MAX_CHARS
    assert long.endswith("...")


def test_without_systemd_everything_is_a_no_op() -> None:
    notifier = Notifier({}, FakeClock())
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.stopping() is False
    notifier.progress()
    assert notifier.start_watchdog(threading.Event(), lambda: True) is None


def test_no_watchdog_thread_when_the_watchdog_is_for_another_process(receiver: Receiver) -> None:
    notifier = Notifier({**receiver.environ, **WATCHDOG_60S, "WATCHDOG_PID": "1"}, FakeClock())
    assert notifier.start_watchdog(threading.Event()) is None
    assert receiver.messages() == []


# ---- Notifier: the progress-driven watchdog --------------------------------------------------------


def test_pings_only_after_progress_at_half_the_interval(receiver: Receiver) -> None:
    notifier, clock, stop, thread = start(receiver)  # no predicate: the strict rule
    clock.step()
    assert receiver.messages() == []  # nothing scored yet
    notifier.progress()
    notifier.progress()
    clock.step()
    assert receiver.messages() == ["WATCHDOG=1"]  # one ping per period, however many batches
    clock.step()
    assert receiver.messages() == []
    notifier.progress()
    clock.step()
    assert receiver.messages() == ["WATCHDOG=1"]
    finish(clock, stop, thread)
    assert set(clock.periods) == {30.0}


def test_a_stuck_pipeline_stops_the_pings_and_says_why(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    notifier, clock, stop, thread = start(receiver, work_pending=lambda: True)  # cameras keep delivering
    for _ in range(3):
        notifier.progress()
        clock.step()
    assert receiver.messages() == ["WATCHDOG=1"] * 3
    with caplog.at_level(logging.INFO, logger="linewatch.daemon.systemd"):
        for _ in range(4):  # stuck: systemd restarts the service one WatchdogSec after the last ping
            clock.step()
        assert receiver.messages() == []
        notifier.progress()  # it came back before systemd acted
        clock.step()
    assert receiver.messages() == ["WATCHDOG=1"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "no batch journaled for 30 s" in errors[0]
    assert any("resume" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    finish(clock, stop, thread)


def test_an_idle_pipeline_keeps_pinging(receiver: Receiver) -> None:
    """All cameras disabled or stalled: nothing waits, nothing is scored, and a restart would not help."""
    _notifier, clock, stop, thread = start(receiver, work_pending=lambda: False)
    for _ in range(4):
        clock.step()
    assert receiver.messages() == ["WATCHDOG=1"] * 4
    finish(clock, stop, thread)


def test_work_must_wait_a_whole_period_to_count_as_stuck(receiver: Receiver) -> None:
    """A frame that arrives just before a wake-up is not a stuck pipeline; one still unscored a period
    later is."""
    waiting = threading.Event()
    notifier, clock, stop, thread = start(receiver, work_pending=waiting.is_set)
    clock.step()
    assert receiver.messages() == ["WATCHDOG=1"]  # idle
    waiting.set()  # a camera comes back
    clock.step()
    assert receiver.messages() == ["WATCHDOG=1"]  # it only just arrived
    clock.step()
    assert receiver.messages() == []  # a period later, still nothing journaled: stuck
    notifier.progress()
    waiting.clear()
    clock.step()
    assert receiver.messages() == ["WATCHDOG=1"]
    finish(clock, stop, thread)


def test_ready_then_watchdog_while_batches_flow_then_stopping(receiver: Receiver) -> None:
    """The order the daemon produces: READY, pings only while batches are journaled, STOPPING."""
    clock = StepClock()
    notifier = Notifier({**receiver.environ, **WATCHDOG_60S}, clock)
    stop = threading.Event()
    notifier.ready()
    thread = notifier.start_watchdog(stop, lambda: True)
    assert thread is not None
    clock.until_parked()
    with pytest.raises(RuntimeError, match="already running"):
        notifier.start_watchdog(stop)
    notifier.progress()
    clock.step()
    clock.step()  # the pipeline stalls
    notifier.stopping()
    finish(clock, stop, thread)
    assert receiver.messages() == [
        "READY=1\nSTATUS=inspecting",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping: draining the batch, flushing the journal",
    ]


# ---- the unit file ---------------------------------------------------------------------------------


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_unit_file_verifies_cleanly(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on the shipped unit, with one substitution.

    verify checks that every Exec*= binary exists, and ``/opt/linewatch/.venv/bin/linewatch`` only exists on
    an installed line PC. So the check runs on a copy whose ExecStart=/ExecReload= name this test's Python
    interpreter instead (the arguments are not checked) and asserts that verify says nothing at all: it
    reports unknown keys and unparsable values on stderr yet exits 0, so the exit code alone proves
    little. A copy with a misspelt key shows that such a diagnostic would be caught. Not covered: device
    groups, users and credential files, which verify does not resolve.
    """
    text = UNIT.read_text()
    assert text.count(INSTALLED_BINARY) == 2  # ExecStart and the check-config ExecReload
    copy = tmp_path / "linewatch.service"
    copy.write_text(text.replace(INSTALLED_BINARY, sys.executable))
    result = verify(copy)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")

    broken = tmp_path / "broken" / "linewatch.service"
    broken.parent.mkdir()
    broken.write_text(copy.read_text().replace("WatchdogSec=60", "WatchdogSecs=60"))
    result = verify(broken)
    assert "WatchdogSecs" in result.stdout + result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_scoring_server_unit_verifies_cleanly(tmp_path: Path) -> None:
    """The GPU server's unit (linewatch serve), checked like the daemon's."""
    text = SERVE_UNIT.read_text()
    assert text.count(INSTALLED_BINARY) == 1 and f"{INSTALLED_BINARY} serve " in text
    copy = tmp_path / "linewatch-serve.service"
    copy.write_text(text.replace(INSTALLED_BINARY, sys.executable))
    result = verify(copy)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_unit_matches_the_example_config() -> None:
    """Every credential the example config reads is loaded by the unit, and its data lives in the unit's
    StateDirectory (the only writable place under ProtectSystem=strict)."""
    unit = UNIT.read_text()
    example = (UNIT.parents[1] / "linewatch.example.toml").read_text()
    wanted = set(re.findall(r'"/run/credentials/linewatch\.service/([^"/]+)"', example))
    loaded = {
        line.removeprefix("LoadCredential=").split(":")[0]
        for line in unit.splitlines()
        if line.startswith("LoadCredential=")
    }
    assert wanted == loaded
    assert "StateDirectory=linewatch\n" in unit
    assert 'data_dir = "/var/lib/linewatch"' in example
    for key in ("models_dir", "dir"):
        paths = [line for line in example.splitlines() if line.startswith(f"{key} = ")]
        assert paths and all('"/var/lib/linewatch/' in line for line in paths)

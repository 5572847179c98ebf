"""The training process seen from the daemon: start it, watch it, end it, read its report.

Training runs in a child process (``python -m linewatch.retrain.child SPEC.json``) so a crash, a leak or
a hung GPU driver there never takes the inspecting daemon with it. The child gets its own process group
and thread budget and a time limit, and it never outlives the wait for it (limit, the daemon's stop).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from linewatch.retrain.child import ChildSpec

log = logging.getLogger("linewatch.retrain.runner")  # one logger for a run, whichever module speaks

KILL_GRACE_S = 5.0
LOG_TAIL_CHARS = 600

ChildCommand = Callable[[Path], list[str]]


def child_command(spec: Path) -> list[str]:
    return [sys.executable, "-m", "linewatch.retrain.child", str(spec)]


class RunFailed(Exception):
    """A step of the run failed; the message is the reason recorded for it."""


def run_child(
    command: ChildCommand, spec: Path, work: Path, time_limit_s: float, cpu_threads: int, stop: threading.Event
) -> dict[str, Any]:
    """Run the training process to its end, the time limit, or the daemon's stop; the report it wrote."""
    limit = time_limit_s
    log_path = work / "child.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(cpu_threads)}
    started = time.monotonic()
    with log_path.open("wb") as output:
        process = subprocess.Popen(
            command(spec), stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    try:
        while True:
            try:
                code = process.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if stop.is_set():
                    raise RunFailed("the daemon is stopping; training abandoned") from None
                if time.monotonic() - started > limit:
                    raise RunFailed(f"training exceeded the time limit of {limit:g} s and was killed") from None
    finally:  # whatever ends the wait (limit, stop, Ctrl-C), the child does not outlive it
        if process.poll() is None:
            _kill(process)
    if code != 0:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        raise RunFailed(f"the training process {how}: {_tail(log_path)}")
    report_path = Path(ChildSpec.read(spec).report)
    try:
        return json.loads(report_path.read_text())
    except (OSError, json.JSONDecodeError) as problem:
        raise RunFailed(f"the training process left no readable report ({problem})") from None


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole process group, SIGKILL after a grace period. A process that survives SIGKILL
    (stuck in the kernel, a hung GPU driver) is logged and left, rather than hanging the daemon's stop."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            continue
    if process.poll() is None:
        log.error("retrain: training process %d did not die on SIGKILL; left behind", process.pid)


def _tail(path: Path) -> str:
    try:
        text = path.read_bytes()[-LOG_TAIL_CHARS:].decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-4:]) or "(no output)"

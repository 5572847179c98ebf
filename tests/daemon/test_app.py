"""The daemon end to end: synthetic cameras -> batcher -> scorer -> episodes -> journal, clean and hard stops."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from linewatch.anople.backbone import TINY_MODEL, load_random_backbone
from linewatch.clock import FakeClock
from linewatch.config import load_config
from linewatch.daemon.app import App
from linewatch.daemon.recording import JournalRecorder
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import JournalRecord
from linewatch.sinks.db import make_engine
from linewatch.sinks.db_schema import DefectEvent
from linewatch.types import Batch, CameraStatus, Frame, Verdict, VerdictLabel
from tests.conftest import quick_artifact
from tests.pipeline.test_journal import make_event
from tests.services.mosquitto import MosquittoBroker

PRODUCT = "bracket"
WIDTH, HEIGHT = 160, 120
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def daemon_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained briefly on the synthetic camera's own normals (accuracy is not the point here)."""
    product = SyntheticProduct(style_seed=0, width=WIDTH, height=HEIGHT)
    rng = np.random.default_rng(0)
    images = [product.normal(rng).image for _ in range(4)]
    out = tmp_path_factory.mktemp("daemon-model") / "model"
    return quick_artifact(out, load_random_backbone(TINY_MODEL, seed=0), images, PRODUCT, 2, 0.1)


# The outputs have their own tests against a throwaway broker and database; these only need the journal.
OFFLINE_OUTPUTS = """
[mqtt]
enabled = false

[http]
port = 0
"""


def write_config(
    root: Path,
    model: Path,
    cameras: int = 2,
    fps: float = 40.0,
    outputs: str = OFFLINE_OUTPUTS,
    update_min_interval_s: float = 1.0,
) -> Path:
    """A daemon config with synthetic cameras (queue policy, 30% defects) and the model; ``outputs`` holds
    the [store]/[mqtt]/[evidence]/[http] sections."""
    camera_blocks = "".join(
        f"""
[[cameras]]
name = "cam{i}"
source = "synthetic"
product = "{PRODUCT}"
fps = {fps}
policy = "queue"
queue_size = 256
defect_rate = 0.3
width = {WIDTH}
height = {HEIGHT}
seed = {i}
"""
        for i in range(cameras)
    )
    path = root / "linewatch.toml"
    path.write_text(
        f"""
[site]
site = "test"
line = "l1"
data_dir = "{root / "data"}"

[model]
path = "{model}"
models_dir = "{root / "models"}"
backbone = "{TINY_MODEL}"
pretrained = "none"

[scoring]
batch_max_size = 4
batch_max_wait_ms = 20

[events]
debounce_n = 1
debounce_m = 1
end_after_s = 0.2
update_min_interval_s = {update_min_interval_s}
{outputs}{camera_blocks}"""
    )
    return path


def mqtt_section(broker: MosquittoBroker, prefix: str, **settings: float) -> str:
    """The [mqtt] section for a daemon on this test broker: topics under ``prefix`` and a client id of its own
    (persistent sessions must not be shared between tests), plus ``settings`` (timeouts, backoff)."""
    extra = "".join(f"{key} = {value}\n" for key, value in settings.items())
    client_id = "linewatch-" + prefix.replace("/", "-")
    return f"""
[mqtt]
host = "{broker.host}"
port = {broker.port}
prefix = "{prefix}"
client_id = "{client_id}"
{extra}"""


def journal_records(journal_path: Path, kind: str) -> list[JournalRecord]:
    """Read the journal of a running daemon without registering a cursor in it (a reader's cursor would
    show up as a forwarder with a growing backlog)."""
    with closing(sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True, timeout=5)) as connection:
        if not connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'records'").fetchall():
            return []  # the daemon has created the file but not its schema yet
        rows = connection.execute(
            "SELECT position, kind, key, camera, payload, committed_at FROM records WHERE kind = ? ORDER BY position",
            (kind,),
        ).fetchall()
    return [JournalRecord(row[0], row[1], row[2], row[3], json.loads(row[4]), row[5]) for row in rows]


def _wait_for(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.1)


def _assert_no_frame_lost(verdicts: list[JournalRecord], cameras: int) -> None:
    """Queue policy with room to spare: every camera's frames 1..n are journaled exactly once, in order."""
    keys = [record.key for record in verdicts]
    assert len(keys) == len(set(keys))
    for index in range(cameras):
        seqs = [record.payload["seq"] for record in verdicts if record.camera == f"cam{index}"]
        assert seqs == list(range(1, len(seqs) + 1)), f"cam{index}"


def test_app_journals_every_frame_and_stops_in_order(daemon_model: Path, tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, daemon_model))
    app = App(config)
    app.start()
    try:
        _wait_for(lambda: len(journal_records(config.journal_path, "verdict")) >= 24, timeout_s=60)
    finally:
        app.stop()
    verdicts = journal_records(config.journal_path, "verdict")
    captured = sum(runtime.reader.stats.frames for runtime in app.cameras.values())
    assert len(verdicts) == captured  # drained on stop: nothing captured is left unjournaled
    assert app.batcher is not None and not any(app.batcher.drops().values())
    _assert_no_frame_lost(verdicts, cameras=2)
    payload = verdicts[0].payload
    assert payload["product"] == PRODUCT and payload["model_version"].startswith("model@")
    assert payload["label"] in {"normal", "defect"} and 0.0 <= payload["score"] <= 1.0
    events = journal_records(config.journal_path, "event")
    defects = [v for v in verdicts if v.payload["label"] == "defect"]
    assert bool(events) == bool(defects)  # debounce 1 of 1: every defect run opens an episode
    if events:
        assert events[0].payload["type"] == "new"
    assert not any(t.is_alive() for t in (app._worker_thread, *(r.thread for r in app.cameras.values())) if t)


def _start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "linewatch", "run", "--config", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=config.parent,
    )


def test_linewatch_run_reloads_on_sighup_and_stops_cleanly_on_sigterm(daemon_model: Path, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, daemon_model)
    journal_path = load_config(config_path).journal_path
    log = tmp_path / "daemon.log"
    daemon = _start_daemon(config_path, log)
    try:
        _wait_for(lambda: journal_path.exists() and len(journal_records(journal_path, "verdict")) >= 20, timeout_s=120)
        config_path.write_text(config_path.read_text().replace('name = "cam1"', 'name = "cam1"\nenabled = false'))
        daemon.send_signal(signal.SIGHUP)
        _wait_for(lambda: "camera cam1 disabled" in log.read_text(), timeout_s=30)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
    output = log.read_text()
    assert "ready: 2 camera(s)" in output and "signal SIGTERM: stopping" in output
    assert output.rstrip().endswith("stopped"), output[-500:]
    assert "[test/l1]" in output  # line context on every record
    verdicts = journal_records(journal_path, "verdict")
    assert len(verdicts) >= 20
    _assert_no_frame_lost(verdicts, cameras=2)


def test_sigkill_mid_run_keeps_every_committed_verdict_once(daemon_model: Path, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, daemon_model)
    journal_path = load_config(config_path).journal_path
    daemon = _start_daemon(config_path, tmp_path / "daemon.log")
    try:
        _wait_for(lambda: journal_path.exists() and len(journal_records(journal_path, "verdict")) >= 12, timeout_s=120)
        seen_before_kill = len(journal_records(journal_path, "verdict"))
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    verdicts = journal_records(journal_path, "verdict")
    assert len(verdicts) >= seen_before_kill
    _assert_no_frame_lost(verdicts, cameras=2)
    positions = [record.position for record in verdicts]
    assert positions == sorted(positions)


def test_run_with_a_broken_config_exits_78(tmp_path: Path) -> None:
    from linewatch.cli.main import main

    bad = tmp_path / "bad.toml"
    bad.write_text('[[cameras]]\nname = "c"\nsource = "url"\nproduct = "p"\n')
    assert main(["run", "--config", str(bad)]) == 78


def _newer_schema(path: Path) -> None:
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA user_version = 99")


BROKEN_JOURNALS = {
    "truncated": (lambda path: path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 20), "cannot open the journal"),
    "garbage": (lambda path: path.write_bytes(b"not a database at all\n" * 200), "cannot open the journal"),
    "directory": (lambda path: path.mkdir(), "cannot open the journal"),
    "newer schema": (_newer_schema, "journal schema version 99 is newer"),
}


@pytest.mark.parametrize("damage", BROKEN_JOURNALS, ids=list(BROKEN_JOURNALS))
def test_a_broken_journal_at_start_is_named_by_key_and_file_without_a_traceback(
    daemon_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """Issue 15, item 8: ``linewatch run`` and ``linewatch label`` refuse it with the setting and the file."""
    from linewatch.cli.main import main

    config_path = write_config(tmp_path, daemon_model)
    journal_path = load_config(config_path).journal_path
    journal_path.parent.mkdir(parents=True)
    make_broken, cause = BROKEN_JOURNALS[damage]
    make_broken(journal_path)
    assert main(["run", "--config", str(config_path)]) == 1
    error = capsys.readouterr().err
    assert f"linewatch: error: [journal] path: {journal_path}: {cause}" in error and "Traceback" not in error
    assert main(["label", "cam0-x-1", "normal", "--config", str(config_path)]) == 2
    error = capsys.readouterr().err
    assert f"linewatch: error: [journal] path: {journal_path}: {cause}" in error and "Traceback" not in error


def test_reload_applies_thresholds_and_enable_flags_between_batches(daemon_model: Path, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, daemon_model)
    config = load_config(config_path)
    app = App(config)
    app.start()
    try:
        _wait_for(lambda: len(journal_records(config.journal_path, "verdict")) >= 8, timeout_s=60)
        text = config_path.read_text().replace('name = "cam1"', 'name = "cam1"\nenabled = false')
        text = text.replace('pretrained = "none"', f'pretrained = "none"\nthresholds = {{ "{PRODUCT}" = -1.0 }}')
        config_path.write_text(text)
        changes = app.reload(load_config(config_path))
        assert changes == ["thresholds {'bracket': -1.0}", "camera cam1 disabled"]
        assert app.cameras["cam1"].status is CameraStatus.DISABLED
        assert not app.cameras["cam1"].thread.is_alive()
        cam1_frames = app.cameras["cam1"].reader.stats.frames
        reloaded_at = len(journal_records(config.journal_path, "verdict"))
        _wait_for(lambda: len(journal_records(config.journal_path, "verdict")) >= reloaded_at + 8, timeout_s=60)
        assert app.reload(load_config(config_path)) == []  # nothing changed since
    finally:
        app.stop()
    verdicts = journal_records(config.journal_path, "verdict")
    later = verdicts[reloaded_at + 4 :]  # a batch in flight at the reload may still use the old threshold
    assert later and all(v.payload["threshold"] == -1.0 and v.payload["label"] == "defect" for v in later)
    assert all(v.payload["seq"] <= cam1_frames for v in verdicts if v.camera == "cam1")  # cam1 captured no more
    assert sum(v.camera == "cam0" for v in later) >= 4


def test_unknown_product_threshold_is_refused(daemon_model: Path, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, daemon_model)
    config_path.write_text(
        config_path.read_text().replace('pretrained = "none"', 'pretrained = "none"\nthresholds = { "bolt" = 0.5 }')
    )
    app = App(load_config(config_path))
    with pytest.raises(KeyError, match="unknown product"):
        app.start()
    app.stop()


class _NoEvidence:
    """Stands in for the outputs where only the journal matters."""

    def with_evidence(self, _frames: object, verdicts: list[Verdict], _maps: object) -> list[Verdict]:
        return verdicts


def test_episode_of_a_silent_camera_ends_on_other_cameras_batches(daemon_model: Path, tmp_path: Path) -> None:
    clock = FakeClock()
    app = App(load_config(write_config(tmp_path, daemon_model)), clock)  # debounce 1 of 1, end after 0.2 s
    app.cameras = {name: app._camera_runtime(camera) for name, camera in ((c.name, c) for c in app.config.cameras)}
    app.journal = Journal(tmp_path / "journal.sqlite3", clock)
    app.recorder = JournalRecorder(app.journal, clock)
    app.outputs = _NoEvidence()  # type: ignore[assignment]

    def verdict(camera: str, seq: int, label: VerdictLabel) -> tuple[Batch, list[Verdict], list[np.ndarray]]:
        now = clock.now()
        frame = Frame(camera, seq, now, clock.monotonic(), np.zeros((2, 2, 3), np.uint8), PRODUCT)
        result = Verdict(f"{camera}-t-{seq}", camera, PRODUCT, seq, now, 0.0, 0.9, 0.5, label, "v1")
        return Batch((frame,), "full"), [result], [np.zeros((4, 4), np.float32)]

    app._record(*verdict("cam0", 1, VerdictLabel.DEFECT))  # opens an episode on cam0, which then goes silent
    clock.advance(0.1)
    app._record(*verdict("cam1", 1, VerdictLabel.NORMAL))  # cam0 quiet for 0.1 s: still open
    clock.advance(0.15)
    app._record(*verdict("cam1", 2, VerdictLabel.NORMAL))  # cam0 quiet for 0.25 s > 0.2 s: ends now
    events = journal_records(tmp_path / "journal.sqlite3", "event")
    assert [(e.camera, e.payload["type"], e.payload["seq"]) for e in events] == [("cam0", "new", 1), ("cam0", "end", 2)]
    app.journal.close()


def test_enable_commands_apply_in_order_and_never_restart_a_stopping_daemon(daemon_model: Path, tmp_path: Path) -> None:
    app = App(load_config(write_config(tmp_path, daemon_model)))
    app.start()
    try:
        for enabled in (False, True, False, True):  # as MQTT delivers them, faster than a reader stops
            app.set_enabled("cam1", enabled)
        app._control.submit(lambda: None).result(timeout=30)  # the queue has drained
        assert app.cameras["cam1"].thread is not None and app.cameras["cam1"].thread.is_alive()
        app.stop_event.set()
        assert app._shutdown_thread is not None
        app._shutdown_thread.join(timeout=30)
        app.set_camera_enabled("cam1", True)  # a late command while stopping
        assert not app.cameras["cam1"].thread.is_alive()
    finally:
        app.stop()
    assert not any(thread.name.startswith(("camera", "control")) for thread in threading.enumerate())


def test_no_episode_stays_open_across_a_clean_stop_or_a_crash(daemon_model: Path, tmp_path: Path) -> None:
    """Issue 15, item 4: an episode open at a clean stop gets its end (stopped) before the outputs flush;
    one a crash left open in the journal gets its end (restarted) at the next start. The store's
    ended_at is never left empty and says why."""
    config_path = write_config(tmp_path, daemon_model)  # debounce 1 of 1, 30 % defects: episodes open soon
    config_path.write_text(config_path.read_text().replace("end_after_s = 0.2", "end_after_s = 600"))
    config = load_config(config_path)
    config.journal_path.parent.mkdir(parents=True)
    with Journal(config.journal_path, FakeClock()) as journal:  # what a SIGKILLed run left behind
        journal.append_batch((), [make_event("ev-crashed", 1), make_event("ev-crashed", 2)])
    app = App(config)
    app.start()
    try:
        _wait_for(lambda: len({r.camera for r in journal_records(config.journal_path, "event")[3:]}) == 2, 60)
    finally:
        app.stop()
    events = journal_records(config.journal_path, "event")
    ends = {record.payload["event_id"]: record.payload for record in events if record.payload["type"] == "end"}
    assert ends["ev-crashed"]["seq"] == 3 and ends["ev-crashed"]["end_reason"] == "restarted"
    # Ended at start, before any new message. By position, not by index: the crashed run's own records carry
    # the fake clock's old commit time, so the journal keeper may prune them once the store has them.
    crashed_end = next(
        r.position for r in events if r.payload["event_id"] == "ev-crashed" and r.payload["type"] == "end"
    )
    assert all(r.position > crashed_end for r in events if r.payload["event_id"] != "ev-crashed")
    opened = {record.payload["event_id"] for record in events}
    assert set(ends) == opened  # nothing left open
    assert {ends[event_id]["end_reason"] for event_id in opened - {"ev-crashed"}} == {"stopped"}
    engine = make_engine(config.store_url)
    with engine.connect() as connection:
        stored = {row.event_id: row for row in connection.execute(select(DefectEvent))}
    engine.dispose()
    assert set(stored) == opened
    assert all(row.ended_at is not None and row.end_reason == ends[key]["end_reason"] for key, row in stored.items())

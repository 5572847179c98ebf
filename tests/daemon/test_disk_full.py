"""Issue 15, item 2: a journal that cannot be written is a defined state, not a hung daemon.

The journal sits on a real 8 MB tmpfs that the test fills (as root, where mounting is allowed); elsewhere
SQLite's ``max_page_count`` caps the journal file, which fails writes with the same SQLITE_FULL. Either
way: scoring goes on, the frames are dropped and counted (``linewatch_frames_dropped_total`` with the
reason ``journal_unwritable``), ``/healthz`` says ``journal not writable``, inspection resumes by itself
when space returns, and a stop in the middle of it ends every thread.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from linewatch.config import load_config
from linewatch.daemon.app import App
from tests.daemon.test_app import _wait_for, daemon_model, journal_records, write_config  # noqa: F401


class Space:
    """Takes the journal's space away and gives it back."""

    def __init__(self, mount: Path | None) -> None:
        self.mount = mount

    def fill(self, app: App) -> None:
        if self.mount is None:  # cap the journal at its present size: the next page it needs fails
            assert app.journal is not None
            connection = app.journal._db()  # the journal's own connection: the cap is per connection
            pages = connection.execute("PRAGMA page_count").fetchone()[0]
            connection.execute(f"PRAGMA max_page_count = {pages}")
            return
        with (self.mount / "filler").open("wb", buffering=0) as filler:  # unbuffered: nothing left to flush
            try:
                while True:
                    filler.write(b"\0" * 65536)
            except OSError as full:
                assert full.errno == errno.ENOSPC

    def free(self, app: App) -> None:
        if self.mount is None:
            assert app.journal is not None
            app.journal._db().execute("PRAGMA max_page_count = 1073741823")
        else:
            (self.mount / "filler").unlink()


@pytest.fixture
def space(tmp_path: Path) -> Iterator[Space]:
    mount = tmp_path / "small-fs"
    mount.mkdir()
    if os.geteuid() == 0 and shutil.which("mount"):
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
        if done.returncode == 0:
            try:
                yield Space(mount)
            finally:
                subprocess.run(["umount", "-l", str(mount)], check=False)
            return
    yield Space(None)


def _dropped(app: App) -> float:
    metrics = text_string_to_metric_families(generate_latest(app.metrics_registry).decode())
    return sum(
        sample.value
        for family in metrics
        for sample in family.samples
        if sample.name == "linewatch_frames_dropped_total" and sample.labels.get("reason") == "journal_unwritable"
    )


def test_a_full_disk_drops_and_counts_frames_reports_it_recovers_and_stops(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
    space: Space,
) -> None:
    config_path = write_config(tmp_path, daemon_model)
    if space.mount is not None:
        journal = f'[journal]\npath = "{space.mount / "journal.sqlite3"}"\n\n[scoring]'
        config_path.write_text(config_path.read_text().replace("[scoring]", journal))
    config = load_config(config_path)
    app = App(config)
    app.start()
    try:
        _wait_for(lambda: len(journal_records(config.journal_path, "verdict")) >= 8, timeout_s=60)
        assert app.health().healthy
        space.fill(app)
        _wait_for(lambda: _dropped(app) >= 8, timeout_s=60)
        verdict = app.health()
        assert not verdict.healthy and "journal not writable" in verdict.document["problems"]
        assert verdict.document["journal"].startswith("not writable: ")
        assert app.worker is not None
        scored, progress = app.worker.stats.frames, app.last_progress
        _wait_for(lambda: app.worker is not None and app.worker.stats.frames >= scored + 8, timeout_s=60)
        assert app.last_progress > progress  # scoring goes on: neither "stalled" nor a watchdog restart

        space.free(app)  # space returns: inspection resumes by itself
        journaled = len(journal_records(config.journal_path, "verdict"))
        _wait_for(lambda: len(journal_records(config.journal_path, "verdict")) >= journaled + 8, timeout_s=60)
        _wait_for(lambda: app.health().healthy, timeout_s=30)
        assert app.health().document["journal"] == "ok"

        space.fill(app)  # and a stop in the middle of it still ends everything
        dropped = _dropped(app)
        _wait_for(lambda: _dropped(app) > dropped, timeout_s=60)
    finally:
        started = time.monotonic()
        app.stop()
        stop_seconds = time.monotonic() - started
    assert stop_seconds < 60  # well within the unit's TimeoutStopSec
    lingering = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon]
    assert lingering == []
    keys = [record.key for record in journal_records(config.journal_path, "verdict")]
    assert len(keys) == len(set(keys))

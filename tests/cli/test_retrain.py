"""``linewatch retrain``, ``linewatch model rollback`` and ``linewatch model versions``.

Offline (nothing listens on the ``[http]`` port): they act on the line's model registry and SQLite store
themselves. With a daemon answering: they POST to it, with the bearer token, and print its answer. The
daemon here is a stand-in on :class:`HttpServer` (the real one's routes are tested in test_app_retrain),
so what the CLI sends can be recorded and the answers chosen.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import linewatch.cli.retrain
from linewatch.anople.backbone import Backbone
from linewatch.anople.files import MANIFEST
from linewatch.cli.main import main
from linewatch.cli.retrain import offline_retrainer
from linewatch.config import Config, load_config
from linewatch.retrain.store import list_runs, list_versions
from linewatch.retrain.versions import ModelRegistry, model_version
from linewatch.sinks.db import make_engine
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.http import HttpRequest, HttpResponse, HttpServer
from tests.conftest import quick_artifact, synthetic_normals

PRODUCT = "bracket"
TOKEN = "linewatch-test-token-0123"
FIRST, SECOND = "20261101T020000Z", "20261102T020000Z"


def closed_port() -> int:
    """A loopback port nothing listens on: the OS picks a free one, the socket is closed at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(
    path: Path, root: Path, port: int, token: str | None = None, store_url: str | None = None, retrain: str = ""
) -> Path:
    """A line's config: data under ``root/data``, versions under ``root/models/line1`` (the default)."""
    lines = [
        "[site]",
        f"data_dir = {json.dumps(str(root / 'data'))}",
        "[model]",
        f"path = {json.dumps(str(root / 'models' / 'line1' / FIRST))}",
        f"models_dir = {json.dumps(str(root / 'models'))}",
        "[http]",
        f"port = {port}",
        *([f"token = {json.dumps(token)}"] if token is not None else []),
        *(["[store]", f"url = {json.dumps(store_url)}"] if store_url is not None else []),
        "[retrain]",
        "schedule = '30 2 * * *'",
        retrain,
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def printed_document(out: str) -> dict[str, Any]:
    """The JSON answer the command printed after its one-line note."""
    return json.loads(out[out.index("{") :])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Backbone) -> Path:
    out = tmp_path_factory.mktemp("artifact") / "model"
    return quick_artifact(out, tiny_backbone, synthetic_normals(5, 4, seed=1), PRODUCT, 2, 0.1)


@dataclass(frozen=True)
class Line:
    """A line with two published versions, the second active on disk and in the store, no daemon."""

    config_path: Path
    config: Config
    first: Path
    second: Path

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.config.versions_dir, self.config.model.path)

    def store_statuses(self) -> dict[str, str]:
        engine = make_engine(self.config.store_url)
        try:
            return {row["version"]: row["status"] for row in list_versions(engine)}
        finally:
            engine.dispose()


def _publish_copy(artifact: Path, target: Path, created_at: str) -> Path:
    """A version folder as retraining leaves it: the artifact, its own creation time (so its id differs)."""
    shutil.copytree(artifact, target)
    manifest = json.loads((target / MANIFEST).read_text())
    manifest["created_at"] = created_at
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return target


@pytest.fixture
def line(tmp_path: Path, artifact: Path) -> Line:
    versions = tmp_path / "models" / "line1"
    first = _publish_copy(artifact, versions / FIRST, "2026-11-01T02:00:00+00:00")
    second = _publish_copy(artifact, versions / SECOND, "2026-11-02T02:00:00+00:00")
    config_path = write_config(tmp_path / "linewatch.toml", tmp_path, closed_port())
    config = load_config(config_path)
    assert config.versions_dir == versions
    upgrade_database(config.store_url, config.backup_dir)
    ModelRegistry(config.versions_dir, config.model.path).activate(second)
    recorder = offline_retrainer(config)  # records the active version in the store, as the daemon does at start
    recorder.record_active(first)
    recorder.record_active(second)
    recorder.engine.dispose()
    made = Line(config_path, config, first, second)
    assert made.store_statuses() == {model_version(first): "retired", model_version(second): "active"}
    return made


# ---- offline: model rollback -------------------------------------------------------------------------


def test_rollback_offline_puts_the_previous_version_back_on_disk_and_in_the_store(
    line: Line, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "rollback", "--config", str(line.config_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no daemon answers on the HTTP port")
    answer = printed_document(out)
    assert answer["status"] == "rolled_back" and answer["version"] == model_version(line.first)
    active_json = json.loads((line.config.versions_dir / "active.json").read_text())
    assert active_json["active"] == FIRST and active_json["history"][:2] == [FIRST, SECOND]
    assert line.registry.active() == line.first
    assert line.store_statuses() == {model_version(line.first): "active", model_version(line.second): "retired"}

    # A named version (here by NAME@HASH) goes back the same way.
    assert main(["model", "rollback", model_version(line.second), "--config", str(line.config_path)]) == 0
    assert printed_document(capsys.readouterr().out)["version"] == model_version(line.second)
    assert line.registry.active() == line.second
    assert line.store_statuses()[model_version(line.second)] == "active"


def test_rollback_offline_to_an_unknown_version_lists_the_versions_and_changes_nothing(
    line: Line, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (line.config.versions_dir / "active.json").read_bytes()
    assert main(["model", "rollback", "20250101T000000Z", "--config", str(line.config_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("linewatch: error: no version '20250101T000000Z'")
    assert model_version(line.first) in err and model_version(line.second) in err
    assert (line.config.versions_dir / "active.json").read_bytes() == before
    assert line.store_statuses()[model_version(line.second)] == "active"


# ---- offline: model versions -------------------------------------------------------------------------


def _version_rows(out: str) -> dict[str, str]:
    """Listing line per version folder name."""
    return {name: row for row in out.splitlines() for name in (FIRST, SECOND) if f" {name} " in row}


def test_versions_lists_both_with_the_active_one_starred_and_its_store_status(
    line: Line, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "versions", "--config", str(line.config_path)]) == 0
    out = capsys.readouterr().out
    assert f"versions in {line.config.versions_dir}" in out and "unreachable" not in out
    rows = _version_rows(out)
    assert rows[SECOND].startswith(" * ") and rows[FIRST].startswith("   ")
    assert "active" in rows[SECOND].split() and "retired" in rows[FIRST].split()
    assert out.index(FIRST) < out.index(SECOND)  # oldest first


def test_versions_without_a_reachable_store_still_lists_the_folder_and_hides_the_password(
    line: Line, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql+psycopg://u:s3cretpw@127.0.0.1:{closed_port()}/x"
    config_path = write_config(tmp_path / "pg.toml", tmp_path, closed_port(), store_url=url)
    assert main(["model", "versions", "--config", str(config_path)]) == 0
    captured = capsys.readouterr()
    assert "store not readable, showing the folder only" in captured.out
    rows = _version_rows(captured.out)
    assert rows[SECOND].startswith(" * ") and rows[FIRST].startswith("   ")
    assert "s3cretpw" not in captured.out + captured.err


# ---- offline: retrain --------------------------------------------------------------------------------


def test_retrain_offline_without_confirmed_normals_is_skipped_with_the_reason(
    line: Line, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["retrain", "--reason", "new batch", "--config", str(line.config_path)]) == 0
    answer = printed_document(capsys.readouterr().out)
    assert answer["status"] == "skipped" and answer["version"] is None
    assert answer["reason"].startswith(f"too few new confirmed normals to train ('{PRODUCT}' 0; need 8")
    assert line.registry.active() == line.second  # nothing changed
    engine = make_engine(line.config.store_url)
    try:
        runs = list_runs(engine)
    finally:
        engine.dispose()
    assert [(run["id"], run["trigger"], run["status"]) for run in runs] == [
        (answer["run_id"], "cli: new batch", "skipped")  # the reason goes on record with the run
    ]
    assert main(["model", "versions", "--config", str(line.config_path)]) == 0
    listing = capsys.readouterr().out
    assert "latest retrain runs:" in listing
    assert f"#{answer['run_id']}" in listing and "skipped" in listing and "cli: new batch: too few" in listing


def test_offline_commands_refuse_while_a_daemon_holds_the_line(line: Line, capsys: pytest.CaptureFixture[str]) -> None:
    fd = line.registry.hold_daemon_lock()  # a daemon that is still starting: its port does not answer yet
    try:
        assert main(["retrain", "--config", str(line.config_path)]) == 2
        assert main(["model", "rollback", "--config", str(line.config_path)]) == 2
    finally:
        os.close(fd)
    assert capsys.readouterr().err.count("a linewatch daemon serves this line") == 2
    assert line.registry.active() == line.second


def test_retrain_offline_while_a_run_holds_the_training_lock_is_busy(
    line: Line, capsys: pytest.CaptureFixture[str]
) -> None:
    with line.registry.training_lock():
        assert main(["retrain", "--config", str(line.config_path)]) == 1
    assert printed_document(capsys.readouterr().out)["status"] == "busy"


def test_retrain_offline_with_the_store_down_fails_without_printing_its_password(
    line: Line, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"postgresql+psycopg://u:s3cretpw@127.0.0.1:{closed_port()}/x"
    config_path = write_config(tmp_path / "pg.toml", tmp_path, closed_port(), store_url=url)
    assert main(["retrain", "--config", str(config_path)]) == 1
    captured = capsys.readouterr()
    answer = printed_document(captured.out)
    assert answer["status"] == "failed" and answer["reason"].startswith("store unreachable, nothing to train from")
    assert "u:***@127.0.0.1" in answer["reason"] and "s3cretpw" not in captured.out + captured.err
    assert line.registry.active() == line.second


def test_retrain_when_disabled_is_refused_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = write_config(tmp_path / "off.toml", tmp_path, closed_port(), retrain="enabled = false")
    assert main(["retrain", "--config", str(config_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"linewatch: error: {config_path}: [retrain] enabled = false\n"
    assert captured.out == "" and not (tmp_path / "data").exists()


# ---- with a daemon answering on the HTTP port ----------------------------------------------------------


@dataclass
class StandIn:
    """A daemon's control routes: records each request body, answers what the test set."""

    server: HttpServer
    answers: dict[tuple[str, str], Callable[[], HttpResponse]]
    received: list[tuple[str, str, Any]] = field(default_factory=list)

    def route(self, method: str, path: str) -> Callable[[HttpRequest], HttpResponse]:
        def answer(request: HttpRequest) -> HttpResponse:
            self.received.append((method, path, json.loads(request.body) if request.body else None))
            return self.answers[(method, path)]()

        return answer


@pytest.fixture
def daemon() -> Iterator[StandIn]:
    routes = [("POST", "/retrain"), ("POST", "/model/rollback"), ("GET", "/model")]
    server = HttpServer("127.0.0.1", 0, TOKEN, {})
    stand_in = StandIn(server, {})
    server.add_routes({route: stand_in.route(*route) for route in routes})
    server.start()
    yield stand_in
    server.stop()


def _daemon_config(tmp_path: Path, daemon: StandIn, token: str = TOKEN) -> Path:
    return write_config(tmp_path / "linewatch.toml", tmp_path, daemon.server.port, token=token)


def test_retrain_asks_the_daemon_with_the_token_and_prints_its_answer(
    daemon: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = {"status": "started", "trigger": "http", "requested": "new batch"}
    daemon.answers[("POST", "/retrain")] = lambda: HttpResponse(202, started)
    config_path = _daemon_config(tmp_path, daemon)
    assert main(["retrain", "--reason", "new batch", "--config", str(config_path)]) == 0
    assert json.loads(capsys.readouterr().out) == started
    assert daemon.received == [("POST", "/retrain", {"reason": "new batch"})]
    assert not (tmp_path / "data").exists()  # nothing done locally

    busy = {"status": "busy", "reason": "a retraining is already queued or running", "requested": None}
    daemon.answers[("POST", "/retrain")] = lambda: HttpResponse(409, busy)
    assert main(["retrain", "--config", str(config_path)]) == 1
    assert json.loads(capsys.readouterr().out) == busy
    assert daemon.received[-1] == ("POST", "/retrain", {"reason": None})


def test_retrain_wait_polls_the_model_state_until_this_run_ends(
    daemon: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(linewatch.cli.retrain, "WAIT_POLL_S", 0.01)
    now = datetime.now(UTC)
    news = iter(
        [
            {"status": "accepted", "reason": "an earlier run", "at": (now - timedelta(hours=1)).isoformat()},
            {"status": "training", "reason": "training in a child process", "at": now.isoformat()},
            {"status": "rejected", "reason": "misses defects", "run_id": 4, "at": datetime.now(UTC).isoformat()},
        ]
    )
    daemon.answers[("POST", "/retrain")] = lambda: HttpResponse(202, {"status": "started", "trigger": "http"})
    daemon.answers[("GET", "/model")] = lambda: HttpResponse(200, {"version": "v@1", "retrain": next(news)})
    assert main(["retrain", "--wait", "--config", str(_daemon_config(tmp_path, daemon))]) == 1
    final = json.loads(capsys.readouterr().out)
    assert (final["status"], final["run_id"]) == ("rejected", 4)
    assert [path for _, path, _ in daemon.received] == ["/retrain", "/model", "/model", "/model"]


def test_rollback_asks_the_daemon_and_exits_by_its_answer(
    daemon: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rolled = {"status": "rolled_back", "reason": "v1@abc is active again", "run_id": None, "version": "v1@abc"}
    daemon.answers[("POST", "/model/rollback")] = lambda: HttpResponse(200, rolled)
    config_path = _daemon_config(tmp_path, daemon)
    assert main(["model", "rollback", "--config", str(config_path)]) == 0
    assert json.loads(capsys.readouterr().out) == rolled
    assert main(["model", "rollback", "v1", "--config", str(config_path)]) == 0
    capsys.readouterr()
    assert daemon.received == [
        ("POST", "/model/rollback", {"version": None}),
        ("POST", "/model/rollback", {"version": "v1"}),
    ]

    daemon.answers[("POST", "/model/rollback")] = lambda: HttpResponse(404, {"error": "no version 'v9'; available: v1"})
    assert main(["model", "rollback", "v9", "--config", str(config_path)]) == 2
    assert capsys.readouterr().err == "linewatch: error: the daemon refused: no version 'v9'; available: v1\n"


def test_a_wrong_token_is_refused_by_the_daemon_and_nothing_runs_locally(
    daemon: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_path = _daemon_config(tmp_path, daemon, token="not-the-daemons-token")
    for command in (["retrain"], ["model", "rollback"]):
        assert main([*command, "--config", str(config_path)]) == 2
        captured = capsys.readouterr()
        assert "the daemon refused: missing or wrong bearer token" in captured.err and captured.out == ""
    assert daemon.received == []  # the server turned them away before any route
    assert not (tmp_path / "data").exists()


def test_retrain_wait_when_the_daemon_goes_away_is_a_clear_error(
    daemon: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(linewatch.cli.retrain, "WAIT_POLL_S", 0.01)

    def start_then_stop() -> HttpResponse:
        daemon.server.stop()  # closes the port before the answer goes out: the poll meets a refused connection
        return HttpResponse(202, {"status": "started", "trigger": "http"})

    daemon.answers[("POST", "/retrain")] = start_then_stop
    assert main(["retrain", "--wait", "--config", str(_daemon_config(tmp_path, daemon))]) == 2
    assert capsys.readouterr().err.startswith("linewatch: error: ")

"""Daemons scoring on a real ``linewatch serve``: three lines through one server match local scoring of the
same frames; the server killed mid-run and restarted (local fallback, or frames waiting) loses and
duplicates nothing; a version switch loads the version on the server and lands between batches."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest

from linewatch.anople.backbone import load_random_backbone
from linewatch.anople.files import model_version
from linewatch.config import Config, load_config
from linewatch.daemon.app import App
from linewatch.daemon.cameras import make_source
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.pipeline.scorer import Scorer
from linewatch.retrain.versions import RegistryError
from tests.conftest import TINY_MODEL, quick_artifact
from tests.daemon.test_app import (
    HEIGHT,
    OFFLINE_OUTPUTS,
    PRODUCT,
    WIDTH,
    _assert_no_frame_lost,
    _wait_for,
    daemon_model,
    journal_records,
    write_config,
)
from tests.services.scoring_server import ScoringServer, serve_copy

__all__ = ["daemon_model"]  # the fixture, shared with test_app


def _remote_config(
    root: Path, model: Path, server: ScoringServer, fallback: str = "local", seed: int = 0, extra: str = ""
) -> Config:
    triton = f"""
[triton]
url = "{server.url}"
fallback = "{fallback}"
deadline_ms = 1000
hold_s = 0.5
retry_s = 0.5
{extra}"""
    root.mkdir(parents=True, exist_ok=True)
    path = write_config(root, model, cameras=1, fps=20.0, outputs=OFFLINE_OUTPUTS + triton)
    text = path.read_text().replace("[scoring]\n", '[scoring]\nruntime = "triton"\n')
    path.write_text(text.replace("seed = 0", f"seed = {seed}"))
    return load_config(path)


def _verdicts(config: Config) -> list[dict[str, object]]:
    return [record.payload for record in journal_records(config.journal_path, "verdict")]


def _assert_scores_match_local_scoring(config: Config, model: Path, tolerance: float = 1e-5) -> None:
    """Replay the camera's frames (a seeded synthetic stream) and score them here: same scores, same labels."""
    verdicts = _verdicts(config)
    camera = config.cameras[0]
    source = make_source(camera, lambda _name, _reason: None)
    source.open()
    frames = [source.read() for _ in verdicts]
    local = Scorer.from_artifact(model, config.model.models_dir).score(frames, [PRODUCT] * len(frames))
    for verdict, expected in zip(verdicts, local, strict=True):
        assert abs(float(verdict["score"]) - expected.score) < tolerance, verdict["seq"]
        assert verdict["label"] == expected.verdict


def test_three_lines_score_through_one_server_as_they_would_locally(
    daemon_model: Path, scoring_server: ScoringServer, tmp_path: Path
) -> None:
    served = serve_copy(scoring_server, daemon_model, "three-lines")
    configs = [_remote_config(tmp_path / f"line{index}", served, scoring_server, seed=index) for index in range(3)]
    apps = [App(config) for config in configs]
    try:
        for app in apps:
            app.start()
        for config in configs:
            _wait_for(lambda config=config: len(_verdicts(config)) >= 12, timeout_s=60)
        states = [app.model_state() for app in apps]
    finally:
        for app in apps:
            app.stop()
    assert {state["runtime"] for state in states} == {"triton fp32"}
    for app, config in zip(apps, configs, strict=True):
        assert app.remote is not None and app.remote.stats.fallback_batches == 0 and not app.remote.stats.errors
        verdicts = journal_records(config.journal_path, "verdict")
        _assert_no_frame_lost(verdicts, cameras=1)
        assert {record.payload["model_version"] for record in verdicts} == {model_version(served)}
        _assert_scores_match_local_scoring(config, served)


def test_a_killed_server_falls_back_to_local_scoring_and_is_used_again_when_back(
    daemon_model: Path, own_scoring_server: ScoringServer, tmp_path: Path
) -> None:
    server = own_scoring_server
    served = serve_copy(server, daemon_model, "line")
    server.start()
    config = _remote_config(tmp_path, served, server, fallback="local")
    app = App(config)
    app.start()
    try:
        assert app.remote is not None
        stats = app.remote.stats
        _wait_for(lambda: len(_verdicts(config)) >= 10, timeout_s=60)
        server.kill()
        _wait_for(lambda: stats.fallback_batches >= 3, timeout_s=30)
        assert "scoring server unreachable" in app.health().document["problems"]
        assert app.model_state()["runtime"] == "torch fp32"  # what scores now, said where HMIs read it
        server.start()
        remote_calls = stats.calls
        _wait_for(lambda: stats.reachable and stats.calls > remote_calls + 3, timeout_s=60)
        fallback_batches = stats.fallback_batches
        count = len(_verdicts(config))
        _wait_for(lambda: len(_verdicts(config)) >= count + 8, timeout_s=30)
        assert stats.fallback_batches == fallback_batches  # back on the server
        assert "scoring server unreachable" not in app.health().document["problems"]
    finally:
        app.stop()
    verdicts = journal_records(config.journal_path, "verdict")
    _assert_no_frame_lost(verdicts, cameras=1)  # nothing lost, nothing journaled twice
    _assert_scores_match_local_scoring(config, served)  # the fallback scored like the server


def test_without_a_fallback_frames_wait_for_the_server_and_none_is_lost(
    daemon_model: Path, own_scoring_server: ScoringServer, tmp_path: Path
) -> None:
    server = own_scoring_server
    served = serve_copy(server, daemon_model, "line")
    server.start()
    config = _remote_config(tmp_path, served, server, fallback="none")
    app = App(config)
    app.start()
    try:
        assert app.remote is not None
        _wait_for(lambda: len(_verdicts(config)) >= 8, timeout_s=60)
        server.kill()
        _wait_for(lambda: not app.remote.stats.reachable, timeout_s=30)  # type: ignore[union-attr]
        time.sleep(1.0)
        held = len(_verdicts(config))
        time.sleep(1.0)
        assert len(_verdicts(config)) == held  # nothing scored while the server is away
        assert app.batcher is not None and app.batcher.pending() > 0
        assert not app.work_pending()  # waiting for the server is not a stuck scorer: the watchdog keeps pinging
        assert "scoring server unreachable" in app.health().document["problems"]
        server.start()
        _wait_for(lambda: len(_verdicts(config)) >= held + 20, timeout_s=60)
        assert app.remote.stats.fallback_batches == 0
    finally:
        app.stop()
    verdicts = journal_records(config.journal_path, "verdict")
    _assert_no_frame_lost(verdicts, cameras=1)  # the queue (256 frames) held everything that waited
    _assert_scores_match_local_scoring(config, served)


def test_a_version_switch_loads_the_version_on_the_server_and_lands_between_batches(
    daemon_model: Path, scoring_server: ScoringServer, tmp_path: Path
) -> None:
    first = serve_copy(scoring_server, daemon_model, "switch/initial")
    rng = np.random.default_rng(3)
    images = [SyntheticProduct(style_seed=0, width=WIDTH, height=HEIGHT).normal(rng).image for _ in range(4)]
    versions_dir = scoring_server.models / "switch" / "l1"
    second = quick_artifact(
        versions_dir / "20261204T000000Z", load_random_backbone(TINY_MODEL, seed=0), images, PRODUCT, 3, 0.1
    )
    config = _remote_config(tmp_path, first, scoring_server, extra=f'\n[retrain]\nversions_dir = "{versions_dir}"\n')
    app = App(config)
    app.start()
    try:
        _wait_for(lambda: len(_verdicts(config)) >= 6, timeout_s=60)
        outcome = app.rollback(model_version(second), by="test")
        assert outcome.status == "rolled_back", outcome.reason
        _wait_for(lambda: _verdicts(config)[-1]["model_version"] == model_version(second), timeout_s=30)
        count = len(_verdicts(config))
        _wait_for(lambda: len(_verdicts(config)) >= count + 4, timeout_s=30)
        with pytest.raises(RegistryError, match="already the active model"):
            app.rollback(model_version(second), by="test")
    finally:
        app.stop()
    verdicts = journal_records(config.journal_path, "verdict")
    _assert_no_frame_lost(verdicts, cameras=1)
    versions = [record.payload["model_version"] for record in verdicts]
    assert [pair for pair in itertools.pairwise(versions) if pair[0] != pair[1]] == [
        (model_version(first), model_version(second))
    ]
    assert app.remote is not None and app.remote.stats.fallback_batches == 0

"""Remote scoring against a real ``linewatch serve`` (Triton through PyTriton): the same scores and maps as
local scoring, versions the server cannot serve refused with the reason, and the failure policy (hold, then
the local fallback; or wait) against a port where nothing answers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from linewatch.anople.artifact import load_artifact, read_artifact
from linewatch.anople.backbone import Backbone
from linewatch.anople.files import model_version
from linewatch.config import TritonSection
from linewatch.model.export import current_export, export_dir
from linewatch.model.weights import backbone_loader
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.pipeline.remote import (
    FailoverEngine,
    RemoteEngine,
    RemoteScoringError,
    RemoteStats,
    ScoringStopped,
    TritonConnection,
)
from linewatch.pipeline.scorer import Scorer
from tests.conftest import quick_artifact
from tests.services.ports import free_port
from tests.services.scoring_server import ScoringServer, serve_copy

PRODUCTS = ("plate", "screw")


@pytest.fixture(scope="module")
def artifact(tiny_backbone: Backbone, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(21)
    images = [SyntheticProduct(style_seed=5, width=96, height=80).normal(rng).image for _ in range(6)]
    return quick_artifact(tmp_path_factory.mktemp("remote") / "plate-v1", tiny_backbone, images, "plate", 3, 0.2)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    product, rng = SyntheticProduct(style_seed=5, width=96, height=80), np.random.default_rng(22)
    normals = [product.normal(rng).image for _ in range(3)]
    return normals + [product.defective(rng, kind).image for kind in ("scratch", "spot", "missing_corner")]


def _remote_scorer(url: str, artifact: Path, local: Scorer | None = None, **policy: float) -> Scorer:
    settings = TritonSection(url=url, deadline_ms=policy.get("deadline_ms", 2000.0))
    summary = read_artifact(artifact)
    remote = RemoteEngine(
        TritonConnection(settings),
        model_version(artifact),
        summary,
        artifact,
        lambda: load_artifact(artifact, backbone_loader(artifact.parent)),
    )
    engine = FailoverEngine(
        remote,
        local.engine if local is not None else None,
        policy.get("hold_s", 0.0),
        policy.get("retry_s", 0.2),
        threading.Event(),
        RemoteStats(),
    )
    return Scorer(engine, summary.info, summary.products, summary.backbone, summary.input_size)


def test_remote_scores_equal_local_scores(
    scoring_server: ScoringServer, artifact: Path, frames: list[np.ndarray], tmp_path: Path
) -> None:
    served = serve_copy(scoring_server, artifact, "equal-scores")
    local = Scorer.from_artifact(artifact, tmp_path)
    remote = _remote_scorer(scoring_server.url, served)
    remote.engine.remote.activate(30.0)  # type: ignore[attr-defined]
    expected = local.score(frames, ["plate"] * len(frames))
    got = remote.score(frames, ["plate"] * len(frames))
    assert remote.runtime == "triton" and remote.precision == "fp32"
    for ours, theirs in zip(expected, got, strict=True):
        assert abs(ours.score - theirs.score) < 1e-5
        assert abs(ours.global_probability - theirs.global_probability) < 1e-5
        assert theirs.pixel_map.shape == ours.pixel_map.shape == (local.input_size, local.input_size)
        assert np.abs(ours.pixel_map - theirs.pixel_map).max() < 1e-5
        assert (theirs.verdict, theirs.threshold, theirs.pixel_threshold) == (
            ours.verdict,
            ours.threshold,
            ours.pixel_threshold,
        )


def test_a_version_the_server_lacks_is_refused_with_where_it_looked(
    scoring_server: ScoringServer, tiny_backbone: Backbone, tmp_path: Path
) -> None:
    rng = np.random.default_rng(5)
    images = [SyntheticProduct(style_seed=9, width=96, height=80).normal(rng).image for _ in range(4)]
    never_copied = quick_artifact(tmp_path / "line" / "never-served", tiny_backbone, images, "plate", 2, 0.2)
    missing = _remote_scorer(scoring_server.url, never_copied).engine.remote  # type: ignore[attr-defined]
    with pytest.raises(RemoteScoringError, match="copy the line's models/<line>/never-served") as refused:
        missing.activate(30.0)
    assert not refused.value.unreachable
    # Another model under the same folder name is never served under this id.
    served = quick_artifact(tmp_path / "other" / "impostor", tiny_backbone, images, "plate", 2, 0.2)
    serve_copy(scoring_server, served, "impostor-line")
    mine = quick_artifact(tmp_path / "mine" / "impostor", tiny_backbone, images[:3], "plate", 2, 0.2)
    assert model_version(mine) != model_version(served)
    engine = _remote_scorer(scoring_server.url, mine).engine.remote  # type: ignore[attr-defined]
    with pytest.raises(RemoteScoringError, match="a different model of that name"):
        engine.activate(30.0)


def test_an_unreachable_server_holds_then_falls_back_then_is_tried_again(
    artifact: Path, frames: list[np.ndarray], tmp_path: Path
) -> None:
    local = Scorer.from_artifact(artifact, tmp_path)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens
    scorer = _remote_scorer(dead, artifact, local, hold_s=0.6, retry_s=0.3, deadline_ms=200.0)
    engine = scorer.engine
    assert isinstance(engine, FailoverEngine)
    started = time.monotonic()
    first = scorer.score(frames[:2], ["plate", "plate"])
    held = time.monotonic() - started
    assert held >= 0.6  # the first failure waits hold_s for the server before the fallback
    assert not engine.stats.reachable and engine.stats.fallback_batches == 1 and scorer.runtime == "torch"
    assert [r.score for r in first] == [r.score for r in local.score(frames[:2], ["plate", "plate"])]
    started = time.monotonic()
    scorer.score(frames[:1], ["plate"])
    assert time.monotonic() - started < 0.3  # known unreachable: straight to the fallback
    tries = engine.stats.calls
    time.sleep(0.35)
    scorer.score(frames[:1], ["plate"])
    assert engine.stats.calls == tries + 1  # retry_s later the server is asked again, once
    assert engine.stats.errors["unreachable"] == engine.stats.calls and engine.stats.fallback_batches == 3


def test_without_a_fallback_a_batch_waits_until_the_daemon_stops(artifact: Path, frames: list[np.ndarray]) -> None:
    scorer = _remote_scorer(f"127.0.0.1:{free_port()}", artifact, retry_s=0.1, deadline_ms=100.0)
    engine = scorer.engine
    assert isinstance(engine, FailoverEngine)
    threading.Timer(0.5, engine.stop.set).start()
    with pytest.raises(ScoringStopped, match="unreachable"):
        scorer.score(frames[:1], ["plate"])
    assert engine.waiting and engine.stats.calls >= 3 and engine.stats.fallback_batches == 0


def test_a_stop_during_the_hold_scores_the_batch_locally_rather_than_dropping_it(
    artifact: Path, frames: list[np.ndarray], tmp_path: Path
) -> None:
    local = Scorer.from_artifact(artifact, tmp_path)
    scorer = _remote_scorer(f"127.0.0.1:{free_port()}", artifact, local, hold_s=10.0, retry_s=0.1, deadline_ms=100.0)
    engine = scorer.engine
    assert isinstance(engine, FailoverEngine)
    engine.stats.reachable = True  # the server was up: the first failure holds up to hold_s
    threading.Timer(0.4, engine.stop.set).start()
    started = time.monotonic()
    results = scorer.score(frames[:2], ["plate", "plate"])
    assert time.monotonic() - started < 5.0  # the stop ended the hold
    assert [r.score for r in results] == [r.score for r in local.score(frames[:2], ["plate", "plate"])]
    assert engine.stats.fallback_batches == 1


def test_a_refusal_goes_to_the_fallback_at_once_and_the_server_stays_up(
    scoring_server: ScoringServer, tiny_backbone: Backbone, frames: list[np.ndarray], tmp_path: Path
) -> None:
    """A version the server cannot load is no outage: no hold, no "unreachable", asked again after retry_s."""
    rng = np.random.default_rng(6)
    images = [SyntheticProduct(style_seed=9, width=96, height=80).normal(rng).image for _ in range(4)]
    never_copied = quick_artifact(tmp_path / "line" / "not-there", tiny_backbone, images, "plate", 2, 0.2)
    local = Scorer.from_artifact(never_copied, tmp_path / "local")
    scorer = _remote_scorer(scoring_server.url, never_copied, local, hold_s=10.0, retry_s=0.5)
    engine = scorer.engine
    assert isinstance(engine, FailoverEngine)
    engine.stats.reachable = True
    started = time.monotonic()
    scorer.score(frames[:1], ["plate"])
    scorer.score(frames[:1], ["plate"])
    assert time.monotonic() - started < 5.0  # no hold_s
    assert engine.stats.reachable and engine.stats.errors == {"refused": 1}  # the second batch did not ask
    assert engine.stats.fallback_batches == 2 and scorer.runtime == "torch"
    time.sleep(0.55)
    scorer.score(frames[:1], ["plate"])
    assert engine.stats.errors == {"refused": 2}


def test_a_batch_larger_than_the_servers_max_batch_goes_in_several_requests(
    scoring_server: ScoringServer, artifact: Path, frames: list[np.ndarray], tmp_path: Path
) -> None:
    served = serve_copy(scoring_server, artifact, "large-batches")
    local = Scorer.from_artifact(artifact, tmp_path)
    remote = _remote_scorer(scoring_server.url, served, local)  # a refusal would show as a local fallback
    many = (frames * 11)[:65]  # the server takes 64 (linewatch serve's default --max-batch): two requests
    got = remote.score(many, ["plate"] * len(many))
    expected = local.score(many, ["plate"] * len(many))
    assert max(abs(a.score - b.score) for a, b in zip(expected, got, strict=True)) < 1e-5
    assert remote.engine.stats.errors == {} and remote.runtime == "triton"  # type: ignore[attr-defined]


def test_a_bf16_server_gets_thresholds_calibrated_on_its_own_scores_once(
    own_scoring_server: ScoringServer, exportable_artifact: Path, artifact: Path, tmp_path: Path
) -> None:
    server = own_scoring_server
    server.extra_args = ("--precision", "bf16")  # after the fixture's fp32: the last one counts
    served = serve_copy(server, exportable_artifact, "bf16-line")
    squeezed = serve_copy(server, artifact, "bf16-line")
    server.start()
    engine = _remote_scorer(server.url, served).engine.remote  # type: ignore[attr-defined]
    engine.activate(60.0)
    record = current_export(served, "triton", "bf16")
    assert record is not None and engine.precision == "bf16" and record.parity.passed
    product = next(iter(record.calibrations))
    assert engine.calibration(product) == record.calibrations[product]
    assert record.calibrations[product].source.endswith("scored at bf16")
    written = (export_dir(served, "triton", "bf16") / "export.json").stat().st_mtime_ns
    again = _remote_scorer(server.url, served).engine.remote  # type: ignore[attr-defined]
    again.activate(60.0)  # the same files: the thresholds are reused, not calibrated again
    assert (export_dir(served, "triton", "bf16") / "export.json").stat().st_mtime_ns == written
    assert again.calibration(product) == record.calibrations[product]
    # A model trained three steps bunches its scores up: bf16 reorders them and the gate refuses it.
    refused = _remote_scorer(server.url, squeezed).engine.remote  # type: ignore[attr-defined]
    with pytest.raises(RemoteScoringError, match="export refused, bf16 vs PyTorch fp32"):
        refused.activate(60.0)
    assert current_export(squeezed, "triton", "bf16") is None

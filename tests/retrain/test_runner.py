"""Retraining end to end on the tiny model: confirmed normals reach the store through the feedback path,
a real training process runs, the gate decides, the registry and the store record it.

Synthetic line: a product whose lighting drifts (frames come out darker) after the first version was
trained, so the first version false-alarms on good parts.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from linewatch.anople.artifact import read_manifest
from linewatch.anople.backbone import Backbone, file_sha256
from linewatch.anople.settings import AnoPLeSettings
from linewatch.clock import SystemClock
from linewatch.config import Config
from linewatch.daemon.feedback import submit
from linewatch.feedback import FeedbackRequest
from linewatch.images import write_image
from linewatch.model.training import ProductSource, train_artifact
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.scorer import Scorer
from linewatch.retrain.launch import child_command
from linewatch.retrain.runner import Retrainer
from linewatch.retrain.store import list_runs, list_versions
from linewatch.retrain.version_files import recorded_images
from linewatch.retrain.versions import ModelRegistry, model_version
from linewatch.sinks.db import make_engine
from linewatch.sinks.db_forwarder import DbForwarder
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.db_schema import Inspection
from linewatch.types import LabelTarget, Verdict, VerdictLabel
from tests.conftest import image_folder

PRODUCT = "bracket"
CAMERA = "cam1"
DARKER = 0.6  # the drift: the line's lighting drops to 60 %


def darker(image: np.ndarray) -> np.ndarray:
    return np.clip(image.astype(np.float32) * DARKER, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def product() -> SyntheticProduct:
    return SyntheticProduct(style_seed=5, width=160, height=120)


@pytest.fixture(scope="module")
def first_version(tmp_path_factory: pytest.TempPathFactory, tiny_backbone: Backbone, product: SyntheticProduct) -> Path:
    """Version 1: trained like the daemon's demo model, on 12 normals under the original lighting."""
    root = tmp_path_factory.mktemp("first")
    rng = np.random.default_rng(1)
    folder = image_folder(root / "normals", [product.normal(rng).image for _ in range(12)])
    train_artifact(
        [ProductSource(PRODUCT, sorted(folder.glob("*.png")))],
        tiny_backbone,
        AnoPLeSettings(steps=200),
        root / "v1",
        shots=4,
        seed=0,
        target_frr=0.01,
        log=lambda _line: None,
    )
    return root / "v1"


@dataclass
class Line:
    """The store side of a line: verdicts and labels go journal -> DB forwarder, snapshots to evidence."""

    config: Config
    journal: Journal
    engine: Any
    news: list[dict[str, Any]] = field(default_factory=list)
    swaps: list[tuple[Path, str]] = field(default_factory=list)
    count: int = 0

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.config.versions_dir, self.config.model.path)

    def inspect(self, images: list[np.ndarray], verdict: VerdictLabel) -> list[str]:
        start = datetime(2026, 11, 28, 8, tzinfo=UTC)
        verdicts = []
        for image in images:
            self.count += 1
            inspection_id = f"{CAMERA}-test-{self.count}"
            snapshot = f"{CAMERA}/2026-11-28/{inspection_id}-{verdict}.jpg"
            write_image(self.config.evidence_dir / snapshot, image, jpeg_quality=85)  # as the evidence writer does
            verdicts.append(
                Verdict(
                    inspection_id=inspection_id,
                    camera=CAMERA,
                    product=PRODUCT,
                    seq=self.count,
                    frame_ts=start + timedelta(seconds=self.count),
                    captured_mono=float(self.count),
                    score=0.5,
                    threshold=0.4,
                    label=verdict,
                    model_version="v1",
                    snapshot=snapshot,
                    heatmap=snapshot.replace(".jpg", "-heatmap.jpg"),
                )
            )
        self.journal.append_batch(verdicts, [])
        self.forward()
        return [verdict.inspection_id for verdict in verdicts]

    def confirm(self, ids: list[str], label: VerdictLabel) -> None:
        for inspection_id in ids:
            request = FeedbackRequest(LabelTarget.INSPECTION, inspection_id, label, "op")
            submit(self.journal, SystemClock(), request, "http")
        self.forward()

    def forward(self) -> None:
        records = self.journal.read_after("db", 100_000)
        if records:
            DbForwarder(self.engine).send(records)
            self.journal.mark_done("db", records[-1].position)

    def retrainer(
        self, command: Any = child_command, stop: threading.Event | None = None, load: Any = None
    ) -> Retrainer:
        def load_scorer(path: Path) -> Scorer:
            return Scorer.from_artifact(path, self.config.model.models_dir)

        def thresholds() -> dict[str, float]:
            manifest = read_manifest(self.registry.active())
            return {entry["name"]: entry["calibration"]["threshold"] for entry in manifest["products"]}

        return Retrainer(
            self.config,
            self.registry,
            self.engine,
            SystemClock(),
            load or load_scorer,
            lambda _scorer, path, version: self.swaps.append((path, version)),
            self.news.append,
            thresholds,
            stop or threading.Event(),
            command,
        )

    def trained_into(self) -> dict[str, str | None]:
        with self.engine.connect() as conn:
            return dict(conn.execute(select(Inspection.id, Inspection.trained_into)).all())


def line_config(root: Path, model: Path, **retrain: Any) -> Config:
    return Config.model_validate(
        {
            "site": {"data_dir": str(root / "data"), "line": "line1"},
            "model": {"path": str(model), "models_dir": str(root / "models"), "target_frr": 0.01},
            "retrain": {"schedule": "", "min_new_normals": 8, "steps": 100, "time_limit_s": 300, **retrain},
        }
    )


@pytest.fixture
def make_line(tmp_path: Path, first_version: Path) -> Iterator[Any]:
    opened: list[Line] = []

    def make(**retrain: Any) -> Line:
        model = tmp_path / "models" / "v1"
        shutil.copytree(first_version, model)
        config = line_config(tmp_path, model, **retrain)
        upgrade_database(config.store_url, config.backup_dir)
        journal = Journal(config.journal_path, SystemClock())
        journal.register_forwarder("db")
        line = Line(config, journal, make_engine(config.store_url))
        opened.append(line)
        return line

    yield make
    for line in opened:
        line.journal.close()
        line.engine.dispose()


def false_alarm_rate(model: Path, models_dir: Path, images: list[np.ndarray]) -> float:
    results = Scorer.from_artifact(model, models_dir).score(images, [PRODUCT] * len(images))
    return float(np.mean([result.verdict == "defect" for result in results]))


def test_confirmed_normals_of_a_drift_make_a_version_that_stops_the_false_alarms(
    make_line: Any, product: SyntheticProduct
) -> None:
    line = make_line()
    rng = np.random.default_rng(20)
    original = [product.normal(rng).image for _ in range(30)]  # good parts as the line looked until now
    stream = [darker(image) for image in original]  # the same parts under the new lighting
    models_dir = line.config.model.models_dir
    before = false_alarm_rate(line.config.model.path, models_dir, stream)
    assert before >= 0.5, f"the drift should make version 1 false-alarm, got {before:.2f}"
    before_original = false_alarm_rate(line.config.model.path, models_dir, original)

    confirmed = line.inspect([darker(product.normal(rng).image) for _ in range(10)], VerdictLabel.DEFECT)
    line.confirm(confirmed, VerdictLabel.NORMAL)  # the operator: "these alarms were good parts"
    started = time.monotonic()
    outcome = line.retrainer().run("test")
    took = time.monotonic() - started

    assert outcome.status == "accepted", outcome.reason
    registry = line.registry
    active = registry.active()
    assert active.parent == line.config.versions_dir and outcome.version == model_version(active)
    after = false_alarm_rate(active, models_dir, stream)
    after_original = false_alarm_rate(active, models_dir, original)
    print(
        f"\nfalse alarms: drifted {before:.2f} -> {after:.2f}, original {before_original:.2f} -> {after_original:.2f};"
        f" retrain took {took:.1f} s"
    )
    assert after <= before / 2
    # calibrated on version 1's calibration normals too: fitting the new lighting did not forget the old one
    assert after_original <= before_original + 0.15
    calibration = read_manifest(active)["products"][0]["calibration_images"]
    assert len(calibration) == outcome.metrics["gate"]["n_normals"]  # version 1's 8 and the new held-out ones
    assert outcome.metrics["gate"]["n_normals"] > 8
    assert all((active / image["path"]).is_file() for image in calibration)
    assert line.swaps == [(active, outcome.version)]
    # the new version carries its shots: 4 of version 1 plus the confirmed normals it trained on
    shots = read_manifest(active)["products"][0]["shots"]
    assert len(shots) == outcome.metrics["shots"][PRODUCT] > 4
    assert all((active / shot["path"]).is_file() for shot in shots)
    # the store: the new version active, version 1 retired, the run accepted, the normals marked used
    versions = {row["version"]: row for row in list_versions(line.engine)}
    assert versions[outcome.version]["status"] == "active"
    assert [row["status"] for row in versions.values()].count("active") == 1
    runs = list_runs(line.engine)
    assert [(run["trigger"], run["status"]) for run in runs] == [("test", "accepted")]
    assert runs[0]["metrics"]["gate"]["accepted"] is True
    assert set(line.trained_into().values()) == {outcome.version}
    assert [news["status"] for news in line.news] == ["running", "training", "accepted"]

    # rollback: version 1 is back, scoring exactly as before
    original = Scorer.from_artifact(line.config.model.path, models_dir).score(stream, [PRODUCT] * len(stream))
    rolled = line.retrainer().rollback(None, "web: ana")
    assert rolled.status == "rolled_back" and rolled.reason.endswith("is active again (rolled back by web: ana)")
    assert line.news[-1]["trigger"] == "rollback: web: ana"  # on model/state: who asked
    assert ModelRegistry(line.config.versions_dir, line.config.model.path).active() == line.config.model.path
    restored = Scorer.from_artifact(line.registry.active(), models_dir).score(stream, [PRODUCT] * len(stream))
    assert [r.score for r in restored] == [r.score for r in original]
    assert [r.threshold for r in restored] == [r.threshold for r in original]
    statuses = {row["version"]: row["status"] for row in list_versions(line.engine)}
    assert statuses[model_version(line.config.model.path)] == "active"
    assert statuses[outcome.version] == "retired"


def test_a_poisoned_retrain_is_rejected_and_the_active_version_keeps_serving(
    make_line: Any, product: SyntheticProduct
) -> None:
    line = make_line()
    rng = np.random.default_rng(30)
    # confirmed defects are alarms an operator confirmed: parts version 1 flagged
    candidates = [product.defective(rng).image for _ in range(40)]
    scorer = Scorer.from_artifact(line.config.model.path, line.config.model.models_dir)
    results = scorer.score(candidates, [PRODUCT] * len(candidates))
    flagged = [image for image, result in zip(candidates, results, strict=True) if result.verdict == "defect"]
    assert len(flagged) >= 6
    defects = line.inspect(flagged[:6], VerdictLabel.DEFECT)
    line.confirm(defects, VerdictLabel.DEFECT)
    poisoned = line.inspect([product.defective(rng).image for _ in range(10)], VerdictLabel.DEFECT)
    line.confirm(poisoned, VerdictLabel.NORMAL)  # mislabelled: defects confirmed as good

    outcome = line.retrainer().run("test")

    assert outcome.status == "rejected", outcome.reason
    assert "confirmed defects" in outcome.reason
    assert line.registry.active() == line.config.model.path
    assert line.swaps == []
    assert not [p for p in line.config.versions_dir.iterdir() if p.is_dir()]  # the candidate was deleted
    versions = {row["version"]: row for row in list_versions(line.engine)}
    assert versions[outcome.version]["status"] == "failed" and versions[outcome.version]["reason"] == outcome.reason
    assert list_runs(line.engine)[0]["status"] == "rejected"
    marked = line.trained_into()
    assert {marked[i] for i in poisoned} == {outcome.version}  # not retried every night
    assert {marked[i] for i in defects} == {None}


def _confirm_drifted_normals(line: Line, product: SyntheticProduct, count: int = 10) -> list[str]:
    rng = np.random.default_rng(40)
    ids = line.inspect([darker(product.normal(rng).image) for _ in range(count)], VerdictLabel.DEFECT)
    line.confirm(ids, VerdictLabel.NORMAL)
    return ids


@pytest.mark.parametrize(
    ("command", "limit", "reason"),
    [
        ([sys.executable, "-c", "import sys; print('CUDA error: boom'); sys.exit(3)"], 300, "exited with status 3"),
        ([sys.executable, "-c", "import time; time.sleep(120)"], 1, "time limit of 1 s"),
        ([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], 300, "killed by signal 9"),
        ([sys.executable, "-c", "pass"], 300, "no readable report"),
    ],
    ids=["crash", "timeout", "killed", "no-report"],
)
def test_a_failed_training_is_recorded_and_changes_nothing(
    make_line: Any, product: SyntheticProduct, command: list[str], limit: int, reason: str
) -> None:
    line = make_line(time_limit_s=limit)
    ids = _confirm_drifted_normals(line, product)
    started = time.monotonic()
    outcome = line.retrainer(command=lambda _spec: command).run("test")
    assert time.monotonic() - started < 30
    assert outcome.status == "failed" and reason in outcome.reason
    if "status 3" in reason:
        assert "CUDA error: boom" in outcome.reason  # the log's tail says why
    assert line.registry.active() == line.config.model.path and line.swaps == []
    assert [p.name for p in line.config.versions_dir.iterdir() if not p.name.startswith(".retrain.lock")] == []
    assert list_runs(line.engine)[0]["status"] == "failed"
    assert {line.trained_into()[i] for i in ids} == {None}  # the same normals are tried again next time


def test_two_triggers_at_once_never_train_twice(make_line: Any, product: SyntheticProduct) -> None:
    line = make_line()
    _confirm_drifted_normals(line, product)
    slow = [sys.executable, "-c", "import time; time.sleep(3); raise SystemExit(1)"]
    outcomes: list[str] = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(line.retrainer(lambda _s: slow).run("test").status))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["busy", "failed"]
    assert len(list_runs(line.engine)) == 1  # the busy trigger did not even open a run


def test_daemon_stop_abandons_a_running_training(make_line: Any, product: SyntheticProduct) -> None:
    line = make_line()
    _confirm_drifted_normals(line, product)
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    started = time.monotonic()
    outcome = line.retrainer(lambda _s: [sys.executable, "-c", "import time; time.sleep(120)"], stop).run("test")
    assert outcome.status == "failed" and "stopping" in outcome.reason
    assert time.monotonic() - started < 15


def test_too_few_normals_recalibrate_the_threshold_a_bounded_step(make_line: Any, product: SyntheticProduct) -> None:
    line = make_line(min_new_normals=8, min_recalibration_normals=4, max_threshold_step=0.1)
    _confirm_drifted_normals(line, product, count=5)  # 5 < 8: not enough to train
    before = read_manifest(line.config.model.path)["products"][0]["calibration"]["threshold"]

    outcome = line.retrainer().run("test")

    assert outcome.status == "recalibrated", outcome.reason
    active = line.registry.active()
    after = read_manifest(active)["products"][0]["calibration"]
    assert after["threshold"] == pytest.approx(before * 1.1)  # the drift asks for far more; one step is allowed
    assert "recalibrated from 5 confirmed normals" in after["source"]
    # the tensors are the parent's, bit for bit
    for name in ("learned.safetensors", "memory.safetensors"):
        assert (active / name).read_bytes() == (line.config.model.path / name).read_bytes()
    assert list_runs(line.engine)[0]["status"] == "recalibrated"
    assert line.swaps and line.swaps[-1][0] == active


def test_nothing_confirmed_skips_and_says_why(make_line: Any) -> None:
    line = make_line()
    outcome = line.retrainer().run("schedule")
    assert outcome.status == "skipped"
    assert "too few new confirmed normals" in outcome.reason and "'bracket' 0" in outcome.reason
    assert list_runs(line.engine)[0]["status"] == "skipped"
    assert line.registry.active() == line.config.model.path


def test_a_version_that_does_not_load_is_never_activated(make_line: Any, product: SyntheticProduct) -> None:
    line = make_line(min_recalibration_normals=4)
    _confirm_drifted_normals(line, product, count=5)

    def broken(path: Path) -> None:
        raise RuntimeError("CUDA out of memory")

    outcome = line.retrainer(load=broken).run("test")
    assert outcome.status == "failed" and "does not load: CUDA out of memory" in outcome.reason
    assert line.registry.active() == line.config.model.path and line.swaps == []
    assert [p for p in line.config.versions_dir.iterdir() if p.is_dir()] == []


def test_recorded_images_are_found_inside_the_version_or_where_training_ran(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    artifact = tmp_path / "models" / "v3"
    inside = artifact / "shots" / "0" / "000.png"
    elsewhere = tmp_path / "data" / "bootstrap" / "001.png"
    changed = tmp_path / "data" / "bootstrap" / "002.png"
    for path, value in ((inside, 10), (elsewhere, 20), (changed, 30)):
        write_image(path, np.full((8, 8, 3), value, np.uint8))
    manifest = {
        "products": [
            {
                "name": PRODUCT,
                "shots": [
                    {"path": "shots/0/000.png", "sha256": file_sha256(inside)},
                    {"path": "data/bootstrap/001.png", "sha256": file_sha256(elsewhere)},  # relative to cwd
                    {"path": str(changed), "sha256": "0" * 64},  # overwritten since: not a shot any more
                    {"path": "data/bootstrap/gone.png", "sha256": "1" * 64},
                ],
            }
        ]
    }
    monkeypatch.chdir(tmp_path)
    assert recorded_images(artifact, manifest, "shots") == {PRODUCT: [inside, Path("data/bootstrap/001.png")]}


def test_a_product_without_shots_or_normals_keeps_its_threshold(
    tmp_path: Path, tiny_backbone: Backbone, product: SyntheticProduct
) -> None:
    """Two products; the second's shot files are gone and nobody confirmed any of its parts: the run still
    trains the first, and the second keeps its calibration instead of crashing the run."""
    rng = np.random.default_rng(50)
    other = SyntheticProduct(style_seed=9, width=160, height=120)
    sources = []
    for name, maker in ((PRODUCT, product), ("hinge", other)):
        folder = image_folder(tmp_path / "normals" / name, [maker.normal(rng).image for _ in range(4)])
        sources.append(ProductSource(name, sorted(folder.glob("*.png"))))
    model = tmp_path / "models" / "two"
    train_artifact(sources, tiny_backbone, AnoPLeSettings(steps=3), model, 2, 0, 0.01, log=lambda _line: None)
    shutil.rmtree(tmp_path / "normals" / "hinge")
    config = line_config(tmp_path, model, steps=5)
    upgrade_database(config.store_url, config.backup_dir)
    journal = Journal(config.journal_path, SystemClock())
    journal.register_forwarder("db")
    line = Line(config, journal, make_engine(config.store_url))
    try:
        line.confirm(
            line.inspect([product.normal(rng).image for _ in range(8)], VerdictLabel.DEFECT), VerdictLabel.NORMAL
        )
        outcome = line.retrainer().run("test")
    finally:
        journal.close()
        line.engine.dispose()
    assert outcome.status in {"accepted", "rejected"}, outcome.reason
    before = {entry["name"]: entry["calibration"]["threshold"] for entry in read_manifest(model)["products"]}
    assert outcome.metrics["thresholds"]["hinge"] == before["hinge"]
    assert outcome.metrics["shots"] == {PRODUCT: 2 + 6, "hinge": 0}  # 2 old shots + 8 confirmed minus 2 held out

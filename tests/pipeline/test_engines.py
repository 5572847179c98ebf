"""The scorer on the OpenVINO engine: same results as PyTorch in fp32, its export's thresholds, the compiled
cache, and clear refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from linewatch.anople.artifact import read_artifact
from linewatch.model.export import CACHE_DIR, current_export, export_dir
from linewatch.pipeline.scorer import Scorer
from tests.conftest import PRODUCT


@pytest.fixture(scope="module")
def artifact(exportable_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("engines") / "model"
    shutil.copytree(exportable_artifact, copy, ignore=shutil.ignore_patterns("exports"))
    return copy


def test_openvino_fp32_scores_like_pytorch_with_its_exports_thresholds(
    artifact: Path, normal_images: list[np.ndarray], defect_images: list[np.ndarray], tmp_path: Path
) -> None:
    images = [*normal_images[4:10], *defect_images[:6]]
    reference = Scorer.from_artifact(artifact, tmp_path).score(images, [PRODUCT] * len(images))
    # No export yet: the scorer makes one (the backbone comes from models_dir, random here), then compiles it.
    scorer = Scorer.from_artifact(artifact, tmp_path, runtime="openvino", precision="fp32")
    record = current_export(artifact, "openvino", "fp32")
    assert record is not None and scorer.runtime == "openvino" and scorer.precision == "fp32"
    assert scorer.products == [PRODUCT] and scorer.input_size == 224 and scorer.backbone_spec.is_random
    results = scorer.score(images, [PRODUCT] * len(images))
    for ours, theirs in zip(results, reference, strict=True):
        assert ours.score == pytest.approx(theirs.score, abs=1e-5)
        assert ours.threshold == record.calibrations[PRODUCT].threshold
        assert ours.pixel_threshold == record.calibrations[PRODUCT].pixel_threshold
        assert ours.verdict == theirs.verdict
        np.testing.assert_allclose(ours.pixel_map, theirs.pixel_map, atol=1e-5)


def test_the_compiled_model_is_cached_per_cpu_and_reused(artifact: Path, tmp_path: Path) -> None:
    Scorer.from_artifact(artifact, tmp_path, runtime="openvino", precision="fp32")
    cache = export_dir(artifact, "openvino", "fp32") / CACHE_DIR
    (cpu_folder,) = cache.iterdir()
    blobs = {path.name: path.stat().st_mtime_ns for path in cpu_folder.iterdir()}
    assert blobs
    Scorer.from_artifact(artifact, tmp_path, runtime="openvino", precision="fp32")
    assert {path.name: path.stat().st_mtime_ns for path in cpu_folder.iterdir()} == blobs


def test_retrainings_gate_judges_in_pytorch_units_what_the_export_serves_in_its_own(
    artifact: Path, tmp_path: Path
) -> None:
    scorer = Scorer.from_artifact(artifact, tmp_path, runtime="openvino", precision="fp32")
    record = current_export(artifact, "openvino", "fp32")
    assert record is not None
    assert scorer.threshold(PRODUCT) == record.calibrations[PRODUCT].threshold
    assert scorer.gate_threshold(PRODUCT) == read_artifact(artifact).info.threshold(PRODUCT)
    scorer.set_threshold_overrides({PRODUCT: 0.25})
    assert scorer.threshold(PRODUCT) == scorer.gate_threshold(PRODUCT) == 0.25


def test_openvino_threshold_overrides_still_win(
    artifact: Path, tmp_path: Path, normal_images: list[np.ndarray]
) -> None:
    scorer = Scorer.from_artifact(artifact, tmp_path, runtime="openvino", precision="fp32")
    scorer.set_threshold_overrides({PRODUCT: 0.0})
    assert all(r.verdict == "defect" and r.threshold == 0.0 for r in scorer.score(normal_images[:2], [PRODUCT] * 2))


def test_openvino_on_a_gpu_device_and_unknown_runtimes_are_refused(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scores on the CPU"):
        Scorer.from_artifact(artifact, tmp_path, device="cuda", runtime="openvino")
    with pytest.raises(ValueError, match="runtime must be torch or openvino"):
        Scorer.from_artifact(artifact, tmp_path, runtime="tensorrt")
    with pytest.raises(ValueError, match="OpenVINO precision must be one of"):
        Scorer.from_artifact(artifact, tmp_path, runtime="openvino", precision="fp16")

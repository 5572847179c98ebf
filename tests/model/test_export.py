"""OpenVINO export: parity with PyTorch fp32, thresholds of its own, the gate that refuses, staleness."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from linewatch.anople.artifact import load_artifact, read_manifest
from linewatch.anople.backbone import Backbone
from linewatch.anople.files import MANIFEST
from linewatch.model.export import (
    EXPORTS_DIR,
    IR_FILE,
    MIN_AGREEMENT,
    MIN_SPEARMAN,
    RECORD,
    ExportError,
    ExportRecord,
    current_export,
    export_dir,
    export_openvino,
)
from tests.conftest import PRODUCT, quick_artifact, synthetic_normals


@pytest.fixture(scope="module")
def exports(exportable_artifact: Path, tiny_backbone: Backbone) -> dict[str, ExportRecord]:
    model, info = load_artifact(exportable_artifact, lambda _spec: tiny_backbone)
    return {p: export_openvino(exportable_artifact, model, info, p, log=lambda _line: None) for p in ("fp32", "int8")}


def _threshold(artifact: Path) -> float:
    return read_manifest(artifact)["products"][0]["calibration"]["threshold"]


def test_fp32_export_matches_pytorch_and_keeps_its_threshold(
    exports: dict[str, ExportRecord], exportable_artifact: Path
) -> None:
    record = exports["fp32"]
    assert record.parity.passed and record.parity.max_abs_error < 1e-5
    assert record.parity.n_images >= 200 and record.parity.verdict_agreement == 1.0
    assert record.calibrations[PRODUCT].threshold == pytest.approx(_threshold(exportable_artifact), abs=1e-6)
    assert abs(record.threshold_shifts[PRODUCT]) < 1e-6
    folder = export_dir(exportable_artifact, "openvino", "fp32")
    assert (folder / IR_FILE).is_file() and (folder / IR_FILE).with_suffix(".bin").is_file()
    assert current_export(exportable_artifact, "openvino", "fp32") == record  # reloaded from export.json


def test_int8_keeps_the_ranking_and_calibrates_its_own_threshold(
    exports: dict[str, ExportRecord], exportable_artifact: Path
) -> None:
    record = exports["int8"]
    assert record.parity.spearman >= MIN_SPEARMAN and record.parity.verdict_agreement >= MIN_AGREEMENT
    assert record.parity.max_abs_error > 1e-4  # it is quantised: the numbers differ, the order holds
    calibration = record.calibrations[PRODUCT]
    assert calibration.threshold != _threshold(exportable_artifact)
    assert calibration.source == "held-out normals, scored at int8" and calibration.n_normals == 20
    assert calibration.achieved_frr <= 0.05
    assert (
        "nncf" in record.versions
        and json.loads((export_dir(exportable_artifact, "openvino", "int8") / RECORD).read_text())["precision"]
        == "int8"
    )


def test_an_export_that_loses_the_ranking_is_refused_and_nothing_is_written(
    tiny_backbone: Backbone, tmp_path: Path
) -> None:
    # Three training steps: normals and simulated anomalies score almost alike, so INT8 noise reorders them.
    artifact = quick_artifact(tmp_path / "weak", tiny_backbone, synthetic_normals(3, 12, 0), PRODUCT, 4, 0.05)
    model, info = load_artifact(artifact, lambda _spec: tiny_backbone)
    with pytest.raises(ExportError) as refused:
        export_openvino(artifact, model, info, "int8", log=lambda _line: None)
    message = str(refused.value)
    assert "export refused" in message and "Spearman" in message and "verdicts agree" in message
    assert not (artifact / EXPORTS_DIR).exists() or not any((artifact / EXPORTS_DIR).iterdir())


def test_a_changed_artifact_makes_its_export_stale_and_the_new_one_carries_the_threshold_move(
    exportable_artifact: Path, exports: dict[str, ExportRecord], tiny_backbone: Backbone, tmp_path: Path
) -> None:
    copy = tmp_path / "recalibrated"
    shutil.copytree(exportable_artifact, copy)
    assert current_export(copy, "openvino", "fp32") == exports["fp32"]
    manifest = json.loads((copy / MANIFEST).read_text())
    moved = manifest["products"][0]["calibration"]["threshold"] + 0.01  # as a recalibration from confirmed normals
    manifest["products"][0]["calibration"]["threshold"] = moved
    (copy / MANIFEST).write_text(json.dumps(manifest))
    assert current_export(copy, "openvino", "fp32") is None
    model, info = load_artifact(copy, lambda _spec: tiny_backbone)
    again = export_openvino(copy, model, info, "int8", log=lambda _line: None)
    assert again.threshold_shifts[PRODUCT] == pytest.approx(0.01, abs=1e-6)
    assert again.calibrations[PRODUCT].threshold == pytest.approx(
        exports["int8"].calibrations[PRODUCT].threshold + 0.01, abs=1e-6
    )


def test_a_missing_calibration_image_is_named(
    exportable_artifact: Path, tiny_backbone: Backbone, tmp_path: Path
) -> None:
    copy = tmp_path / "model"
    shutil.copytree(exportable_artifact, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    gone = tmp_path / "gone.png"
    manifest["products"][0]["calibration_images"][3]["path"] = str(gone)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    model, info = load_artifact(copy, lambda _spec: tiny_backbone)
    with pytest.raises(ExportError, match=f"{PRODUCT!r}: calibration image {gone} is gone"):
        export_openvino(copy, model, info, "fp32", log=lambda _line: None)


def test_an_unknown_precision_is_refused(exportable_artifact: Path, tiny_backbone: Backbone) -> None:
    model, info = load_artifact(exportable_artifact, lambda _spec: tiny_backbone)
    with pytest.raises(ExportError, match="precision must be one of fp32, bf16, int8"):
        export_openvino(exportable_artifact, model, info, "fp16", log=lambda _line: None)
    assert np.isfinite(_threshold(exportable_artifact))


def test_loading_openvino_sends_no_telemetry() -> None:
    """OpenVINO would send a usage event at import, from a thread pool that outlives it."""
    code = (
        "import sys, threading, linewatch.model.openvino_graph\n"
        "print(sys.modules['openvino_telemetry'], sorted(t.name for t in threading.enumerate()))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "None ['MainThread']"

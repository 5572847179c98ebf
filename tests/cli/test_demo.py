"""``linewatch demo``: trains once on synthetic parts, scores a synthetic test set, reports and draws heatmaps."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from linewatch.anople.artifact import read_manifest
from linewatch.cli.console import RANDOM_BANNER
from linewatch.cli.demo import run_demo
from linewatch.cli.main import main
from linewatch.images import read_rgb
from linewatch.pipeline.camera.synthetic import DEFECT_KINDS

TRAIN_NORMALS = 6
SHOTS = 2
STEPS = 5
TEST_NORMALS = 4
PER_KIND = 1
KINDS = ("good", *DEFECT_KINDS)


def _write_config(
    path: Path,
    model_path: Path,
    data_dir: Path,
    product: str = "demo part",
    test_normals: int = TEST_NORMALS,
) -> Path:
    path.write_text(
        f"""
[model]
models_dir = "{model_path.parent}"
backbone = "linewatch-tiny"
pretrained = "none"
target_frr = 0.25

[demo]
model_path = "{model_path}"
data_dir = "{data_dir}"
product = "{product}"
train_normals = {TRAIN_NORMALS}
shots = {SHOTS}
steps = {STEPS}
test_normals = {test_normals}
test_defects_per_kind = {PER_KIND}
seed = 0
"""
    )
    return path


def _run(config: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_demo(config)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("demo")
    model_path, data_dir = root / "models" / "demo", root / "data"
    config = _write_config(root / "config.toml", model_path, data_dir)
    code, out, err = _run(config)
    report = json.loads((data_dir / "report.json").read_text())
    return {
        "root": root,
        "config": config,
        "model": model_path,
        "data": data_dir,
        "code": code,
        "out": out,
        "err": err,
        "report": report,
    }


def test_first_run_trains_a_model_on_the_synthetic_normals(demo: dict) -> None:
    assert demo["code"] == 0
    assert RANDOM_BANNER in demo["err"]
    assert "reusing" not in demo["err"]
    assert len(list((demo["data"] / "train" / "good").glob("*.png"))) == TRAIN_NORMALS
    manifest = read_manifest(demo["model"])
    assert [entry["name"] for entry in manifest["products"]] == ["demo part"]
    calibration = manifest["products"][0]["calibration"]
    assert calibration["source"] == "held-out normals"
    assert calibration["n_normals"] == TRAIN_NORMALS - SHOTS
    assert calibration["target_frr"] == 0.25
    assert manifest["training"]["steps"] == STEPS and manifest["training"]["shots"] == SHOTS
    assert manifest["backbone"]["random_weights"] is True


def test_report_counts_agree_with_the_test_images_written(demo: dict) -> None:
    report, test_dir = demo["report"], demo["data"] / "test"
    written = {kind: sorted((test_dir / kind).glob("*.png")) for kind in KINDS}
    assert {kind: len(files) for kind, files in written.items()} == {
        "good": TEST_NORMALS,
        **dict.fromkeys(DEFECT_KINDS, PER_KIND),
    }
    summary, rows = report["summary"], report["images"]
    assert list(summary["per_kind"]) == list(KINDS)
    for kind in KINDS:
        assert summary["per_kind"][kind]["images"] == len(written[kind])
        assert summary["per_kind"][kind]["flagged"] == sum(r["verdict"] == "defect" for r in rows if r["kind"] == kind)
    assert sorted(row["path"] for row in rows) == sorted(str(p) for files in written.values() for p in files)

    threshold = read_manifest(demo["model"])["products"][0]["calibration"]["threshold"]
    assert summary["threshold"] == threshold
    for row in rows:
        assert row["verdict"] == ("defect" if row["score"] > threshold else "normal")
    good = [r for r in rows if r["kind"] == "good"]
    defects = [r for r in rows if r["kind"] != "good"]
    assert summary["false_reject_rate"] == sum(r["verdict"] == "defect" for r in good) / len(good)
    assert summary["defect_recall"] == sum(r["verdict"] == "defect" for r in defects) / len(defects)
    labels = [r["kind"] != "good" for r in rows]
    assert summary["image_auroc"] == pytest.approx(roc_auc_score(labels, [r["score"] for r in rows]))


def test_summary_table_matches_the_report(demo: dict) -> None:
    lines = demo["out"].strip().splitlines()
    assert lines[0].split() == ["kind", "images", "flagged", "mean", "score"]
    per_kind = demo["report"]["summary"]["per_kind"]
    table = {line.split()[0]: line.split()[1:] for line in lines[1 : 1 + len(KINDS)]}
    assert list(table) == list(KINDS)
    for kind, (images, flagged, mean) in table.items():
        assert int(images) == per_kind[kind]["images"]
        assert int(flagged) == per_kind[kind]["flagged"]
        assert float(mean) == pytest.approx(per_kind[kind]["mean_score"], abs=1e-5)
    summary = demo["report"]["summary"]
    assert lines[1 + len(KINDS)].startswith(f"threshold {summary['threshold']:.5f}  false-reject rate")
    assert lines[-1] == f"heatmaps in {demo['data'] / 'heatmaps'}, report in {demo['data'] / 'report.json'}"


def test_a_heatmap_per_test_image_at_its_size(demo: dict) -> None:
    heatmaps = demo["data"] / "heatmaps"
    rows = demo["report"]["images"]
    written = sorted(p.relative_to(heatmaps) for p in heatmaps.rglob("*.png"))
    assert written == sorted(Path(row["kind"]) / Path(row["path"]).name for row in rows)
    for row in rows:
        overlay = read_rgb(heatmaps / row["kind"] / Path(row["path"]).name)
        assert overlay.shape == read_rgb(Path(row["path"])).shape


def test_second_run_reuses_the_model_and_reports_the_same(demo: dict) -> None:
    manifest_before = (demo["model"] / "anople.json").read_bytes()
    learned_before = (demo["model"] / "learned.safetensors").read_bytes()
    code, out, err = _run(demo["config"])
    assert code == 0
    assert f"reusing the model in {demo['model']}" in err
    assert "training" not in err.replace("retrain", "")
    assert (demo["model"] / "anople.json").read_bytes() == manifest_before
    assert (demo["model"] / "learned.safetensors").read_bytes() == learned_before
    assert json.loads((demo["data"] / "report.json").read_text()) == demo["report"]
    assert out == demo["out"]


def test_a_product_missing_from_the_reused_model_is_a_usage_error(
    demo: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_config(tmp_path / "config.toml", demo["model"], tmp_path / "data", product="gearbox")
    assert main(["demo", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "linewatch: error: " in err and "'gearbox'" in err and "demo part" in err
    assert not (tmp_path / "data").exists()


def test_rerun_with_fewer_test_images_reports_only_the_new_set(demo: dict, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(demo["data"], data_dir)
    config = _write_config(tmp_path / "config.toml", demo["model"], data_dir, test_normals=TEST_NORMALS - 2)
    code, _, _ = _run(config)
    assert code == 0
    report = json.loads((data_dir / "report.json").read_text())
    assert report["summary"]["per_kind"]["good"]["images"] == TEST_NORMALS - 2

"""The whole eval on a generated mini MVTec-AD tree with the tiny model: files agree, reruns hit the cache."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from linewatch.cli.main import main
from linewatch.images import read_rgb, write_image
from linewatch.pipeline.camera.synthetic import SyntheticProduct

CLASSES = {"metal_nut": 1, "screw": 5}
DEFECTS = ("scratch", "spot")
TINY = ["--backbone", "linewatch-tiny", "--pretrained", "none", "--steps", "4", "--eval-size", "64"]


def _mvtec_tree(root: Path) -> Path:
    for offset, (name, style) in enumerate(CLASSES.items()):
        product = SyntheticProduct(style_seed=style, width=96, height=96)
        rng = np.random.default_rng(offset)
        for index in range(5):
            write_image(root / name / "train" / "good" / f"{index:03d}.png", product.normal(rng).image)
        for index in range(3):
            write_image(root / name / "test" / "good" / f"{index:03d}.png", product.normal(rng).image)
        for kind in DEFECTS:
            for index in range(2):
                sample = product.defective(rng, kind)
                write_image(root / name / "test" / kind / f"{index:03d}.png", sample.image)
                mask = np.repeat(sample.mask[:, :, None], 3, axis=2)
                write_image(root / name / "ground_truth" / kind / f"{index:03d}_mask.png", mask)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mvtec_tree(tmp_path_factory.mktemp("mvtec"))


def _eval(dataset: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["eval", "--dataset", "mvtec", "--root", str(dataset), "--out", str(out), *TINY, *extra])
    return code, stdout.getvalue(), stderr.getvalue()


def test_per_class_eval_writes_consistent_outputs_and_reruns_from_cache(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = _eval(dataset, out, "--shots", "1", "2", "--seeds", "0", "1")
    assert code == 0, stderr
    assert "RANDOM BACKBONE WEIGHTS" in stderr
    document = json.loads((out / "results.json").read_text())
    cells = document["cells"]
    assert len(cells) == len(CLASSES) * 2 * 2
    assert {(c["class_name"], c["shots"], c["seed"]) for c in cells} == {
        (name, k, seed) for name in CLASSES for k in (1, 2) for seed in (0, 1)
    }
    for cell in cells:
        assert cell["n_test"] == 3 + 2 * len(DEFECTS) and cell["n_anomalous"] == 4
        assert len(cell["shot_files"]) == cell["shots"]
        for metric in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
            assert 0.0 <= cell[metric] <= 1.0
    # The summary's class row is the mean over seeds of the cells; the mean row the mean over classes.
    for name in CLASSES:
        values = [c["image_auroc"] for c in cells if c["class_name"] == name and c["shots"] == 2]
        assert document["summary"]["2"][name]["image_auroc"]["mean"] == pytest.approx(np.mean(values))
        assert document["summary"]["2"][name]["image_auroc"]["std"] == pytest.approx(np.std(values, ddof=1))
    per_seed = [np.mean([c["aupro"] for c in cells if c["shots"] == 1 and c["seed"] == s]) for s in (0, 1)]
    assert document["summary"]["1"]["mean"]["aupro"]["mean"] == pytest.approx(np.mean(per_seed))
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(cells)
    assert {float(r["image_auroc"]) for r in rows} == {c["image_auroc"] for c in cells}
    markdown = (out / "results.md").read_text()
    assert "### k = 1" in markdown and "### k = 2" in markdown and "**mean**" in markdown
    assert "k = 2" in stdout and "metal_nut" in stdout and "0 cell(s) from the cache" in stdout
    heatmaps = sorted((out / "heatmaps" / "metal_nut").glob("*.png"))
    assert {p.name.split("-")[0] for p in heatmaps} == {"detected", "missed", "false_alarm"}
    assert read_rgb(heatmaps[0]).shape == (96, 96, 3)

    code, stdout, _ = _eval(dataset, out, "--shots", "1", "2", "--seeds", "0", "1")
    assert code == 0
    assert f"{len(cells)} cell(s) from the cache" in stdout
    assert json.loads((out / "results.json").read_text())["cells"] == cells

    code, stdout, _ = _eval(dataset, out, "--shots", "1", "2", "--seeds", "0", "1", "--steps", "5")
    assert code == 0 and "0 cell(s) from the cache" in stdout  # a changed setting invalidates the cache


def test_same_seed_gives_the_same_numbers(dataset: Path, tmp_path: Path) -> None:
    first = _eval(dataset, tmp_path / "a", "--shots", "1", "--seeds", "3", "--classes", "screw")
    second = _eval(dataset, tmp_path / "b", "--shots", "1", "--seeds", "3", "--classes", "screw")
    assert first[0] == second[0] == 0
    cells_a = json.loads((tmp_path / "a" / "results.json").read_text())["cells"]
    cells_b = json.loads((tmp_path / "b" / "results.json").read_text())["cells"]
    for a, b in zip(cells_a, cells_b, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}


def test_multi_class_trains_one_model_per_cell_and_limit_test(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "multi"
    code, _, stderr = _eval(dataset, out, "--shots", "1", "--seeds", "0", "--multi-class", "--limit-test", "4")
    assert code == 0, stderr
    assert [p.name for p in (out / "cells").iterdir()] == ["multi__k1__s0.json"]
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert sorted(c["class_name"] for c in cells) == sorted(CLASSES)
    assert all(c["n_test"] == 4 and 0 < c["n_anomalous"] < 4 for c in cells)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--root", "/nonexistent/mvtec"], "dataset root not found"),
        (["--classes", "bagel"], "bagel"),
        (["--shots", "9"], "fewer than k=9"),
        (["--name", "metal_nut"], "--name expects CLASS=WORDS"),
    ],
)
def test_bad_eval_input_is_a_clear_error(dataset: Path, tmp_path: Path, args: list[str], message: str) -> None:
    code, _, stderr = _eval(dataset, tmp_path / "o", *args)  # a later --root overrides the fixture's
    assert code == 2
    assert "linewatch: error:" in stderr and message in stderr


def test_eval_on_openvino_reports_per_runtime_and_precision(dataset: Path, tmp_path: Path) -> None:
    cell = ["--shots", "2", "--seeds", "0", "--classes", "screw"]
    results = {}
    for runtime, precision in (("torch", "fp32"), ("openvino", "fp32"), ("openvino", "int8")):
        out = tmp_path / f"{runtime}-{precision}"
        code, stdout, stderr = _eval(dataset, out, *cell, "--runtime", runtime, "--precision", precision)
        assert code == 0, stderr
        assert f"runtime {runtime} {precision}" in stdout
        document = json.loads((out / "results.json").read_text())
        assert document["run"]["eval"]["runtime"] == runtime and document["run"]["eval"]["precision"] == precision
        (results[runtime, precision],) = document["cells"]
    torch_cell, fp32_cell, int8_cell = results.values()
    # PyTorch scores each fusion term alone too, so a user sees which part carries the result
    terms = torch_cell["terms"]
    assert list(terms) == ["global probability", "decoder map", "memory map", "fusion"]
    assert terms["fusion"] == {"image_auroc": torch_cell["image_auroc"], "pixel_auroc": torch_cell["pixel_auroc"]}
    assert terms["global probability"]["pixel_auroc"] is None  # one number per image: no map
    assert all(0.0 <= value <= 1.0 for term in terms.values() for value in term.values() if value is not None)
    assert fp32_cell["terms"] == {}  # the compiled graph gives the fused outputs only
    assert fp32_cell["image_auroc"] == torch_cell["image_auroc"]  # the same scores up to float rounding
    assert fp32_cell["pixel_auroc"] == pytest.approx(torch_cell["pixel_auroc"], abs=1e-3)
    assert all(0.0 <= int8_cell[key] <= 1.0 for key in ("image_auroc", "pixel_auroc", "aupro"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--runtime", "torch", "--precision", "int8"], "runtime 'torch' scores in"),
        (["--runtime", "openvino", "--precision", "fp16"], "runtime 'openvino' scores in"),
        (["--runtime", "openvino", "--device", "cuda"], "runtime openvino scores on the CPU"),
        (["--precision", "bf16"], "on the CPU needs runtime openvino"),
    ],
)
def test_runtime_and_precision_must_fit(dataset: Path, tmp_path: Path, args: list[str], message: str) -> None:
    code, _, stderr = _eval(dataset, tmp_path / "o", "--shots", "1", "--seeds", "0", *args)
    assert code == 2 and message in stderr

"""The ``linewatch`` command line, run in-process: train, score, model list/info/import, and its exit codes."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import open_clip
import pytest
import torch

from linewatch.anople.artifact import read_manifest
from linewatch.anople.files import LEARNED, MANIFEST, MEMORY
from linewatch.anople.model import FUSION_SCALES
from linewatch.cli.console import RANDOM_BANNER
from linewatch.cli.main import main
from linewatch.images import read_rgb
from linewatch.pipeline.scorer import Scorer
from tests.conftest import image_folder, sha256_of, synthetic_normals

TINY = ["--pretrained", "none", "--backbone", "linewatch-tiny", "--steps", "3"]
TAG = "testtag"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    image_folder(root / "normals", synthetic_normals(3, 6, seed=1))
    # Test images of three different sizes, so heatmaps can be checked against each original size.
    test = root / "test"
    image_folder(test, synthetic_normals(3, 1, seed=2))
    cv2.imwrite(
        str(test / "tall.png"),
        cv2.cvtColor(synthetic_normals(3, 1, seed=3, width=50, height=120)[0], cv2.COLOR_RGB2BGR),
    )
    cv2.imwrite(
        str(test / "wide.jpg"),
        cv2.cvtColor(synthetic_normals(3, 1, seed=4, width=130, height=70)[0], cv2.COLOR_RGB2BGR),
    )
    return root


@pytest.fixture(scope="module")
def models_dir(workspace: Path) -> Path:
    return workspace / "models"


@pytest.fixture(scope="module")
def model(workspace: Path, models_dir: Path) -> Path:
    out = models_dir / "plate"
    args = ["train", "--normals", str(workspace / "normals"), "--product", "plate", "--out", str(out), *TINY]
    assert main([*args, "--shots", "4", "--frr", "0.2", "--models-dir", str(models_dir)]) == 0
    return out


@pytest.fixture(scope="module")
def imported_weights(workspace: Path, models_dir: Path) -> Path:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        clip = open_clip.create_model("linewatch-tiny", pretrained=None)
    checkpoint = workspace / "checkpoint.pt"
    torch.save(clip.state_dict(), checkpoint)
    assert main(["model", "import", "linewatch-tiny", TAG, str(checkpoint), "--models-dir", str(models_dir)]) == 0
    return models_dir / "backbones" / "linewatch-tiny" / f"{TAG}.safetensors"


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(*argv: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main([str(arg) for arg in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def _usage_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert err.startswith("linewatch: error: ") or "\nlinewatch: error: " in err, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ---- train -----------------------------------------------------------------------------------------


def test_train_saves_a_model_and_announces_the_random_backbone(run: Run, workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "models" / "plate"
    code, stdout, stderr = run(
        "train", "--normals", workspace / "normals", "--product", "plate", "--out", out, *TINY, "--shots", "2"
    )
    assert code == 0
    assert stdout.strip() == f"saved model to {out}"
    assert RANDOM_BANNER in stderr
    assert "plate: 2 shot(s), 4 held out for calibration" in stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, LEARNED, MEMORY])
    manifest = read_manifest(out)
    assert manifest["training"]["steps"] == 3 and manifest["training"]["shots"] == 2
    assert manifest["backbone"]["model_name"] == "linewatch-tiny" and manifest["backbone"]["random_weights"]


def test_train_missing_folder_names_it(run: Run, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    code, _, err = run("train", "--normals", missing, "--product", "p", "--out", tmp_path / "m", *TINY)
    _usage_error(code, err, str(missing))
    assert not (tmp_path / "m").exists()


def test_train_non_image_file_names_it(run: Run, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("shift log")
    code, _, err = run("train", "--normals", notes, "--product", "p", "--out", tmp_path / "m", *TINY)
    _usage_error(code, err, str(notes), "not an image file")


def test_train_undecodable_image_names_it_and_writes_nothing(run: Run, tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "normals", synthetic_normals(3, 4, seed=9))
    (folder / "002.png").write_text("not a png")
    code, _, err = run("train", "--normals", folder, "--product", "p", "--out", tmp_path / "m", *TINY, "--shots", "4")
    _usage_error(code, err, str(folder / "002.png"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["normals"]


def test_train_needs_one_product_per_normals(run: Run, workspace: Path, tmp_path: Path) -> None:
    normals = workspace / "normals"
    code, _, err = run(
        "train", "--normals", normals, "--normals", normals, "--product", "p", "--out", tmp_path / "m", *TINY
    )
    _usage_error(code, err, "got 2 --normals and 1 --product")
    code, _, err = run(
        "train", "--normals", normals, "--product", "a", "--product", "b", "--out", tmp_path / "m", *TINY
    )
    _usage_error(code, err, "got 1 --normals and 2 --product")
    assert not (tmp_path / "m").exists()


def test_train_with_too_few_images_names_product_and_counts(run: Run, workspace: Path, tmp_path: Path) -> None:
    code, _, err = run(
        "train", "--normals", workspace / "normals", "--product", "bolt", "--out", tmp_path / "m", *TINY, "--shots", "7"
    )
    _usage_error(code, err, "'bolt'", "6 normal image(s)", "--shots 7")


def test_train_refuses_an_existing_out_unless_overwrite(run: Run, workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep").write_text("x")
    base = ["train", "--normals", workspace / "normals", "--product", "p", "--out", out, *TINY]
    code, _, err = run(*base)
    _usage_error(code, err, str(out), "already exists", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["keep"]
    code, _, _ = run(*base, "--overwrite")
    assert code == 0 and sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, LEARNED, MEMORY])


def test_train_without_pulled_weights_says_how_to_get_them(run: Run, workspace: Path, tmp_path: Path) -> None:
    code, _, err = run(
        "train",
        "--normals",
        workspace / "normals",
        "--product",
        "p",
        "--out",
        tmp_path / "m",
        "--backbone",
        "linewatch-tiny",
        "--models-dir",
        tmp_path / "models",
    )
    _usage_error(code, err, "linewatch model pull linewatch-tiny laion400m_e32")


def test_train_shots_below_one_is_refused(run: Run, workspace: Path, tmp_path: Path) -> None:
    code, _, err = run(
        "train", "--normals", workspace / "normals", "--product", "p", "--out", tmp_path / "m", *TINY, "--shots", "0"
    )
    _usage_error(code, err, "--shots: must be at least 1")


def test_train_with_zero_steps_is_refused(run: Run, workspace: Path, tmp_path: Path) -> None:
    args = ["train", "--normals", workspace / "normals", "--product", "p", "--out", tmp_path / "m"]
    code, _, err = run(*args, "--pretrained", "none", "--backbone", "linewatch-tiny", "--steps", "0")
    _usage_error(code, err, "--steps")
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_on_cuda_without_cuda_is_a_usage_error(run: Run, workspace: Path, tmp_path: Path) -> None:
    code, _, err = run(
        "train",
        "--normals",
        workspace / "normals",
        "--product",
        "p",
        "--out",
        tmp_path / "m",
        *TINY,
        "--device",
        "cuda",
    )
    _usage_error(code, err, "cuda")


# ---- score -----------------------------------------------------------------------------------------


def test_score_json_has_one_result_per_image(run: Run, model: Path, workspace: Path, models_dir: Path) -> None:
    code, out, err = run("score", workspace / "test", "--model", model, "--json", "--models-dir", models_dir)
    assert code == 0
    assert RANDOM_BANNER in err
    report = json.loads(out)
    assert report["model"] == str(model) and report["random_backbone"] is True
    files = sorted(p for p in (workspace / "test").iterdir())
    assert [entry["path"] for entry in report["results"]] == [str(p) for p in files]
    threshold = read_manifest(model)["products"][0]["calibration"]["threshold"]
    scorer = Scorer.from_artifact(model, models_dir)
    expected = scorer.score([read_rgb(p) for p in files], ["plate"] * len(files))
    for entry, result in zip(report["results"], expected, strict=True):
        assert entry["product"] == "plate"
        assert entry["threshold"] == round(threshold, 6)
        assert entry["score"] == pytest.approx(result.score, abs=1e-6)
        assert entry["verdict"] == ("defect" if result.score > threshold else "normal")
        assert "heatmap" not in entry


def test_score_table_lists_every_image_and_a_summary(run: Run, model: Path, workspace: Path, models_dir: Path) -> None:
    code, out, _ = run("score", workspace / "test", "--model", model, "--json", "--models-dir", models_dir)
    assert code == 0
    expected = json.loads(out)["results"]
    code, out, _ = run("score", workspace / "test", "--model", model, "--models-dir", models_dir)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split() == ["image", "score", "threshold", "verdict"]
    rows = [line.split() for line in lines[1:-1]]
    assert [row[0] for row in rows] == [entry["path"] for entry in expected]
    assert [row[3] for row in rows] == [entry["verdict"] for entry in expected]
    assert [float(row[1]) for row in rows] == pytest.approx([entry["score"] for entry in expected], abs=1e-5)
    defects = sum(entry["verdict"] == "defect" for entry in expected)
    assert lines[-1] == f"{len(expected)} scored, {defects} defect(s), 0 unreadable"


def test_score_heatmaps_one_png_per_image_at_the_original_size(
    run: Run, model: Path, workspace: Path, models_dir: Path, tmp_path: Path
) -> None:
    heatmaps = tmp_path / "heatmaps"
    code, out, _ = run(
        "score", workspace / "test", "--model", model, "--json", "--heatmaps", heatmaps, "--models-dir", models_dir
    )
    assert code == 0
    results = json.loads(out)["results"]
    written = sorted(p.name for p in heatmaps.iterdir())
    assert written == sorted(f"{Path(r['path']).stem}.heatmap.png" for r in results)
    for entry in results:
        original = read_rgb(Path(entry["path"]))
        overlay = read_rgb(Path(entry["heatmap"]))
        assert Path(entry["heatmap"]).parent == heatmaps
        assert overlay.shape == original.shape


def test_score_skips_an_unreadable_file_names_it_and_exits_1(
    run: Run, model: Path, workspace: Path, models_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(workspace / "test", folder)
    (folder / "broken.png").write_text("this is a text file wearing a .png suffix")
    code, out, err = run("score", folder, "--model", model, "--json", "--models-dir", models_dir)
    assert code == 1
    assert "skipped" in err and str(folder / "broken.png") in err
    paths = [entry["path"] for entry in json.loads(out)["results"]]
    assert len(paths) == 3 and str(folder / "broken.png") not in paths

    code, out, _ = run("score", folder, "--model", model, "--models-dir", models_dir, "--batch-size", "1")
    assert code == 1
    assert re.search(r"^3 scored, \d+ defect\(s\), 1 unreadable$", out, re.MULTILINE)


def test_score_empty_folder_is_a_usage_error(run: Run, model: Path, models_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run("score", empty, "--model", model, "--models-dir", models_dir)
    _usage_error(code, err, str(empty), "no images")
    assert out == ""


def test_score_bf16_on_the_cpu_is_a_usage_error(run: Run, model: Path, workspace: Path, models_dir: Path) -> None:
    code, _, err = run("score", workspace / "test", "--model", model, "--precision", "bf16", "--models-dir", models_dir)
    _usage_error(code, err, "needs runtime openvino")


@pytest.mark.parametrize("batch_size", ["0", "-1"])
def test_score_batch_size_below_one_is_refused(
    run: Run, model: Path, workspace: Path, models_dir: Path, batch_size: str
) -> None:
    code, _, err = run(
        "score", workspace / "test", "--model", model, "--batch-size", batch_size, "--models-dir", models_dir
    )
    _usage_error(code, err, "--batch-size")


def test_score_needs_a_model_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "somewhere"]) == 2
    assert "linewatch: error: the following arguments are required: --model" in capsys.readouterr().err


def _rewrite_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(directory: Path) -> None:
        manifest = json.loads((directory / MANIFEST).read_text())
        change(manifest)
        (directory / MANIFEST).write_text(json.dumps(manifest))

    return apply


def _truncate(directory: Path) -> None:
    data = (directory / LEARNED).read_bytes()
    (directory / LEARNED).write_bytes(data[: len(data) // 2])


BROKEN_MODELS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing directory": (lambda d: shutil.rmtree(d), "model directory not found"),
    "no manifest": (lambda d: (d / MANIFEST).unlink(), "not a linewatch model (no anople.json)"),
    "corrupt json": (lambda d: (d / MANIFEST).write_text('{"format": "linewatch-anople", '), "corrupt JSON"),
    "wrong format": (_rewrite_manifest(lambda m: m.update(format="something-else")), "not a linewatch-anople manifest"),
    "wrong format version": (
        _rewrite_manifest(lambda m: m.update(format_version=99)),
        "format version 99 is not supported",
    ),
    "missing training": (_rewrite_manifest(lambda m: m.pop("training")), "missing key 'training'"),
    "unknown setting": (
        _rewrite_manifest(lambda m: m["settings"].update(turbo=True)),
        "malformed settings or products",
    ),
    "settings that do not fit": (
        _rewrite_manifest(lambda m: m["settings"].update(n_text_ctx=7)),
        "does not fit the recorded settings",
    ),
    "deleted learned": (lambda d: (d / LEARNED).unlink(), "learned.safetensors: missing from the model directory"),
    "truncated learned": (_truncate, "learned.safetensors: corrupt safetensors file"),
    "deleted memory": (lambda d: (d / MEMORY).unlink(), "memory.safetensors: missing from the model directory"),
    "other backbone seed": (_rewrite_manifest(lambda m: m["backbone"].update(init_seed=1)), "backbone mismatch"),
}


@pytest.mark.parametrize("case", list(BROKEN_MODELS))
def test_score_with_a_broken_model_is_a_clear_usage_error(
    case: str, run: Run, model: Path, workspace: Path, models_dir: Path, tmp_path: Path
) -> None:
    damage, message = BROKEN_MODELS[case]
    broken = tmp_path / "broken-model"
    shutil.copytree(model, broken)
    damage(broken)
    code, out, err = run("score", workspace / "test", "--model", broken, "--json", "--models-dir", models_dir)
    _usage_error(code, err, str(broken), message)
    assert out == ""


def test_score_with_a_manifest_missing_a_backbone_key_names_the_file(
    run: Run, model: Path, workspace: Path, models_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(model, broken)
    _rewrite_manifest(lambda m: m["backbone"].pop("weights_sha256"))(broken)
    code, _, err = run("score", workspace / "test", "--model", broken, "--models-dir", models_dir)
    _usage_error(code, err, str(broken / MANIFEST), "weights_sha256")


def test_multi_product_model_needs_product_choice(run: Run, workspace: Path, models_dir: Path, tmp_path: Path) -> None:
    washers = image_folder(tmp_path / "washers", synthetic_normals(11, 4, seed=6))
    out = tmp_path / "line"
    code, _, _ = run(
        "train",
        "--normals",
        workspace / "normals",
        "--product",
        "plate",
        "--normals",
        washers,
        "--product",
        "washer",
        "--out",
        out,
        *TINY,
        "--shots",
        "2",
    )
    assert code == 0
    assert [entry["name"] for entry in read_manifest(out)["products"]] == ["plate", "washer"]
    code, _, err = run("score", washers, "--model", out, "--models-dir", models_dir)
    _usage_error(code, err, "several products", "--product")
    code, _, err = run("score", washers, "--model", out, "--product", "bolt", "--models-dir", models_dir)
    _usage_error(code, err, "unknown product 'bolt'")
    code, stdout, _ = run("score", washers, "--model", out, "--product", "washer", "--json", "--models-dir", models_dir)
    assert code == 0
    results = json.loads(stdout)["results"]
    washer_threshold = read_manifest(out)["products"][1]["calibration"]["threshold"]
    assert len(results) == 4 and all(r["product"] == "washer" for r in results)
    assert all(r["threshold"] == round(washer_threshold, 6) for r in results)


# ---- model list / info / import ---------------------------------------------------------------------


def test_model_import_prints_the_weights_description(run: Run, tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(6)
        state = open_clip.create_model("linewatch-tiny", pretrained=None).state_dict()
    checkpoint = tmp_path / "ck.pt"
    torch.save(state, checkpoint)
    code, out, _ = run("model", "import", "linewatch-tiny", "site", checkpoint, "--models-dir", tmp_path / "models")
    assert code == 0
    described = json.loads(out)
    target = tmp_path / "models" / "backbones" / "linewatch-tiny" / "site.safetensors"
    assert described["path"] == str(target)
    assert described["sha256"] == sha256_of(target) and described["size_bytes"] == target.stat().st_size
    assert described["source"] == "file:ck.pt"


def test_model_import_of_a_corrupt_checkpoint_is_a_usage_error(run: Run, tmp_path: Path) -> None:
    checkpoint = tmp_path / "broken.pt"
    checkpoint.write_bytes(b"\x00garbage" * 64)
    code, _, err = run("model", "import", "linewatch-tiny", "site", checkpoint, "--models-dir", tmp_path / "models")
    _usage_error(code, err, str(checkpoint))


def test_model_list_shows_weights_and_models(run: Run, model: Path, imported_weights: Path, models_dir: Path) -> None:
    code, out, _ = run("model", "list", "--models-dir", models_dir)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"backbone weights in {models_dir / 'backbones'}:"
    assert f"  linewatch-tiny {TAG}  sha256 {sha256_of(imported_weights)[:12]}" in lines
    index = lines.index(f"models in {models_dir}:")
    assert f"  {model}  linewatch-tiny/none  products ['plate']  RANDOM BACKBONE" in lines[index + 1 :]
    assert "(none" not in out


def test_model_list_of_an_empty_folder_says_so(run: Run, tmp_path: Path) -> None:
    code, out, _ = run("model", "list", "--models-dir", tmp_path)
    assert code == 0
    assert "(none; 'linewatch model pull NAME TAG'" in out and "(none; 'linewatch train' makes one)" in out


def test_model_info_on_a_trained_model(run: Run, model: Path, models_dir: Path) -> None:
    code, out, _ = run("model", "info", model, "--models-dir", models_dir)
    assert code == 0
    info = json.loads(out)
    manifest = read_manifest(model)
    calibration = manifest["products"][0]["calibration"]
    assert info["path"] == str(model)
    assert info["backbone"] == manifest["backbone"]
    assert info["fusion"] == "scaled_mean"
    assert info["products"] == {
        "plate": {
            "threshold": calibration["threshold"],
            "target_frr": 0.2,
            "calibration_source": "held-out normals",
            "shots": 4,
            "fusion_scales": manifest["products"][0]["fusion_scales"],
        }
    }
    assert set(info["products"]["plate"]["fusion_scales"]) == set(FUSION_SCALES)
    assert info["training"]["steps"] == 3


def test_model_info_on_weights_by_file_and_by_tag(run: Run, imported_weights: Path, models_dir: Path) -> None:
    code, by_file, _ = run("model", "info", imported_weights, "--models-dir", models_dir)
    assert code == 0
    code, by_tag, _ = run("model", "info", f"linewatch-tiny/{TAG}", "--models-dir", models_dir)
    assert code == 0
    assert json.loads(by_file) == json.loads(by_tag)
    described = json.loads(by_file)
    assert described["sha256"] == sha256_of(imported_weights)
    assert described["size_bytes"] == imported_weights.stat().st_size
    assert described["model_name"] == "linewatch-tiny" and described["pretrained"] == TAG


def test_model_info_on_something_else_is_a_usage_error(run: Run, models_dir: Path, tmp_path: Path) -> None:
    code, _, err = run("model", "info", tmp_path / "nothing-here", "--models-dir", models_dir)
    _usage_error(code, err, str(tmp_path / "nothing-here"), "neither a model directory")
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    code, _, err = run("model", "info", empty, "--models-dir", models_dir)
    _usage_error(code, err, "not a linewatch model")

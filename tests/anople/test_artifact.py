"""Artifacts: exact round trip against the reloaded object, atomic writes, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from linewatch.anople.artifact import (
    ArtifactError,
    ArtifactInfo,
    ProductRecord,
    load_artifact,
    save_artifact,
)
from linewatch.anople.backbone import Backbone, BackboneSpec, load_random_backbone
from linewatch.anople.calibrate import Calibration
from linewatch.anople.files import LEARNED, MANIFEST, MEMORY
from linewatch.anople.model import FUSION_SCALES, AnoPLe, harmonic_mean
from linewatch.model.preprocess import to_model_tensor
from tests.conftest import PRODUCT

CALIBRATION = Calibration(0.4, 0.3, 0.05, 0.05, 20, "held-out normals", 0.9, 20)


def _info() -> ArtifactInfo:
    return ArtifactInfo(
        products={PRODUCT: ProductRecord(PRODUCT, CALIBRATION, [{"file": "000.png", "sha256": "ab" * 32}])},
        training={"steps": 200, "seed": 0},
        created_at="2026-11-28T00:00:00+00:00",
        linewatch_version="test",
    )


def _loader(backbone: Backbone):
    def load(spec: BackboneSpec) -> Backbone:
        return backbone

    return load


@pytest.fixture
def saved(tmp_path: Path, trained_model: AnoPLe) -> Path:
    directory = tmp_path / "models" / "plate"
    save_artifact(trained_model, _info(), directory)
    return directory


def test_round_trip_gives_identical_scores_and_state(
    saved: Path,
    trained_model: AnoPLe,
    tiny_backbone: Backbone,
    normal_images: list[np.ndarray],
    defect_images: list[np.ndarray],
) -> None:
    reloaded, info = load_artifact(saved, _loader(tiny_backbone))
    assert reloaded is not trained_model
    images = to_model_tensor([*normal_images[4:8], *defect_images[:4]], reloaded.input_size)
    ids = torch.zeros(8, dtype=torch.long)
    original, again = trained_model.predict(images, ids), reloaded.predict(images, ids)
    assert torch.equal(original.image_score, again.image_score)
    assert torch.equal(original.pixel_map, again.pixel_map)
    for name, tensor in trained_model.learned_parameters().items():
        assert torch.equal(tensor, reloaded.learned_parameters()[name]), name
    for layer, bank in trained_model.memory[PRODUCT].items():
        assert torch.equal(bank, reloaded.memory[PRODUCT][layer])
    assert torch.equal(reloaded.fusion_scales[PRODUCT], trained_model.fusion_scales[PRODUCT])
    assert reloaded.settings == trained_model.settings
    assert info.products[PRODUCT].calibration == CALIBRATION
    assert info.products[PRODUCT].shots == _info().products[PRODUCT].shots
    assert info.training == {"steps": 200, "seed": 0}
    assert reloaded.prompt_words == trained_model.prompt_words == {PRODUCT: PRODUCT}


def test_manifest_describes_the_model(saved: Path, trained_model: AnoPLe) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    assert manifest["format_version"] == 1
    assert manifest["backbone"]["model_name"] == "linewatch-tiny"
    assert manifest["backbone"]["random_weights"] is True
    assert manifest["backbone"]["weights_sha256"] == trained_model.backbone_spec.weights_sha256
    assert manifest["backbone"]["input_size"] == 224
    assert manifest["products"][0]["calibration"]["threshold"] == 0.4
    assert manifest["settings"]["n_text_ctx"] == 4
    assert sorted(p.name for p in saved.iterdir()) == sorted([MANIFEST, LEARNED, MEMORY])


def test_existing_directory_is_kept_unless_overwrite(
    saved: Path, trained_model: AnoPLe, tiny_backbone: Backbone
) -> None:
    before = (saved / MANIFEST).read_text()
    with pytest.raises(ArtifactError, match="already exists"):
        save_artifact(trained_model, _info(), saved)
    assert (saved / MANIFEST).read_text() == before
    save_artifact(trained_model, _info(), saved, overwrite=True)
    load_artifact(saved, _loader(tiny_backbone))
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no staging or retired leftovers


def test_failed_save_leaves_nothing_behind(tmp_path: Path, trained_model: AnoPLe) -> None:
    info = _info()
    info.products.clear()
    with pytest.raises(ArtifactError, match="lack a calibration"):
        save_artifact(trained_model, info, tmp_path / "broken")
    assert list(tmp_path.iterdir()) == []


def test_an_artifact_from_before_the_fusion_setting_keeps_scoring_with_the_harmonic_mean(
    saved: Path, tiny_backbone: Backbone, normal_images: list[np.ndarray], defect_images: list[np.ndarray]
) -> None:
    """Its settings have no ``fusion`` and its products no scales: it must score as it did when it was made."""
    manifest = json.loads((saved / MANIFEST).read_text())
    del manifest["settings"]["fusion"]
    del manifest["products"][0]["fusion_scales"]
    (saved / MANIFEST).write_text(json.dumps(manifest))
    old, _ = load_artifact(saved, _loader(tiny_backbone))
    assert old.settings.fusion == "harmonic" and old.fusion_scales == {}
    images = to_model_tensor([*normal_images[4:6], *defect_images[:2]], old.input_size)
    prediction = old.predict(images, torch.zeros(4, dtype=torch.long))
    eps = old.settings.harmonic_eps
    pixel = old.spread(harmonic_mean(prediction.decoder_map, prediction.memory_map, eps), old.input_size)
    torch.testing.assert_close(prediction.pixel_map, pixel)
    torch.testing.assert_close(
        prediction.image_score, harmonic_mean(prediction.global_probability, pixel.flatten(1).amax(dim=1), eps)
    )


@pytest.mark.parametrize(
    ("scales", "message"),
    [
        (None, "has no fusion_scales, which the scaled_mean fusion needs"),
        ({"global": 0.1}, "fusion_scales must be an object with exactly global, decoder_image"),
        ({**dict.fromkeys(FUSION_SCALES, 0.1), "memory_patch": 0}, "fusion_scales.memory_patch must be a finite"),
        ({**dict.fromkeys(FUSION_SCALES, 0.1), "global": float("nan")}, "fusion_scales.global must be a finite"),
    ],
)
def test_missing_or_lying_fusion_scales_are_refused(
    saved: Path, tiny_backbone: Backbone, scales: object, message: str
) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["products"][0]["fusion_scales"] = scales
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"product '{PRODUCT}'.*{message}"):
        load_artifact(saved, _loader(tiny_backbone))


def test_backbone_mismatch_is_named(saved: Path) -> None:
    other = load_random_backbone("linewatch-tiny", seed=1)
    with pytest.raises(ArtifactError, match=r"backbone mismatch.*linewatch-tiny"):
        load_artifact(saved, _loader(other))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / MANIFEST).unlink(), "not a linewatch model"),
        (lambda d: (d / MANIFEST).write_text("{not json"), "corrupt JSON"),
        (lambda d: _edit_manifest(d, format_version=99), "format version 99 is not supported"),
        (lambda d: _edit_manifest(d, format="something-else"), "not a linewatch-anople manifest"),
        (lambda d: (d / LEARNED).unlink(), "learned.safetensors: missing"),
        (lambda d: (d / LEARNED).write_bytes((d / LEARNED).read_bytes()[:100]), "learned.safetensors: corrupt"),
        (lambda d: (d / MEMORY).write_bytes(b"\x00" * 10), "memory.safetensors: corrupt"),
        (lambda d: _edit_settings(d, n_text_ctx=6), "does not fit the recorded settings"),
        (lambda d: _edit_settings(d, unknown_knob=1), "unknown AnoPLe settings"),
    ],
)
def test_damaged_artifacts_are_refused_with_the_cause(
    saved: Path, tiny_backbone: Backbone, damage, message: str
) -> None:
    damage(saved)
    with pytest.raises(ArtifactError, match=message):
        load_artifact(saved, _loader(tiny_backbone))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("threshold", float("nan"), "calibration.threshold must be a finite number, got nan"),
        ("threshold", "0.5", "calibration.threshold must be a finite number, got '0.5'"),
        ("threshold", None, "calibration.threshold must be a finite number, got None"),
        ("threshold", -5, r"calibration.threshold must be in \[0, 1.001\], got -5"),
        ("threshold", 1e308, r"calibration.threshold must be in \[0, 1.001\], got 1e\+308"),
        ("pixel_threshold", float("inf"), "calibration.pixel_threshold must be a finite number, got inf"),
        ("target_frr", 2.0, r"calibration.target_frr must be in \[0, 1\]"),
        ("n_normals", True, "calibration.n_normals must be a whole number"),
        ("simulated_recall", "high", "calibration.simulated_recall must be a finite number"),
    ],
)
def test_a_lying_calibration_is_refused_naming_file_product_and_key(
    saved: Path, tiny_backbone: Backbone, key: str, value: object, message: str
) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    manifest["products"][0]["calibration"][key] = value
    (saved / MANIFEST).write_text(json.dumps(manifest))  # Python writes NaN and Infinity as bare words
    with pytest.raises(ArtifactError, match=f"anople.json: product '{PRODUCT}': {message}"):
        load_artifact(saved, _loader(tiny_backbone))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(products=[]), "products must be a non-empty list"),
        (lambda m: m["products"][0].update(name=""), r"products\[0\].name must be a unique non-empty string"),
        (lambda m: m["products"].append(dict(m["products"][0])), r"products\[1\].name must be a unique"),
        (lambda m: m["products"][0].update(prompt_words=7), "prompt_words must be a non-empty string"),
        (lambda m: m["products"][0].update(shots="000.png"), "shots must be a list of objects"),
        (lambda m: m["products"][0]["calibration"].pop("threshold"), r"missing \['threshold'\]"),
    ],
)
def test_malformed_products_are_named(saved: Path, tiny_backbone: Backbone, edit, message: str) -> None:
    manifest = json.loads((saved / MANIFEST).read_text())
    edit(manifest)
    (saved / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(saved, _loader(tiny_backbone))


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        (MEMORY, lambda t: t[:, :-1].contiguous(), r"must be finite with shape \(patches, \d+\), got"),
        (MEMORY, lambda t: torch.full_like(t, float("nan")), "must be finite"),
        (LEARNED, lambda t: torch.full_like(t, float("nan")), "non-finite values in"),
    ],
)
def test_tensors_of_the_wrong_shape_or_not_finite_are_refused(
    saved: Path, tiny_backbone: Backbone, file: str, change, message: str
) -> None:
    tensors = load_file(str(saved / file))
    first = sorted(tensors)[0]
    tensors[first] = change(tensors[first])
    save_file(tensors, str(saved / file))
    with pytest.raises(ArtifactError, match=f"{file}: .*{message}"):
        load_artifact(saved, _loader(tiny_backbone))


def test_missing_directory_is_named(tmp_path: Path, tiny_backbone: Backbone) -> None:
    with pytest.raises(ArtifactError, match="model directory not found"):
        load_artifact(tmp_path / "nope", _loader(tiny_backbone))


def _edit_manifest(directory: Path, **changes: object) -> None:
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest.update(changes)
    (directory / MANIFEST).write_text(json.dumps(manifest))


def _edit_settings(directory: Path, **changes: object) -> None:
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["settings"].update(changes)
    (directory / MANIFEST).write_text(json.dumps(manifest))

"""Scorer: per-image results, verdict rule, input formats and sizes, argument errors, determinism."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from linewatch.anople.artifact import read_manifest
from linewatch.anople.backbone import Backbone
from linewatch.images import read_rgb, to_rgb_uint8
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.pipeline.scorer import DEFECT, NORMAL, Scorer
from tests.conftest import quick_artifact

PRODUCT = "plate"


@pytest.fixture(scope="module")
def product() -> SyntheticProduct:
    return SyntheticProduct(style_seed=3, width=96, height=80)


@pytest.fixture(scope="module")
def artifact(tiny_backbone: Backbone, product: SyntheticProduct, tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(11)
    images = [product.normal(rng).image for _ in range(8)]
    return quick_artifact(tmp_path_factory.mktemp("models") / "plate", tiny_backbone, images, PRODUCT, 4, 0.25)


@pytest.fixture(scope="module")
def scorer(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Scorer:
    return Scorer.from_artifact(artifact, tmp_path_factory.mktemp("no-weights-needed"))


@pytest.fixture(scope="module")
def images(product: SyntheticProduct) -> list[np.ndarray]:
    rng = np.random.default_rng(12)
    normals = [product.normal(rng).image for _ in range(3)]
    defects = [product.defective(rng, kind).image for kind in ("scratch", "spot", "missing_corner")]
    return normals + defects


def test_one_result_per_image_with_the_recorded_calibration(scorer: Scorer, artifact: Path, images) -> None:
    results = scorer.score(images, [PRODUCT] * len(images))
    calibration = read_manifest(artifact)["products"][0]["calibration"]
    size = scorer.input_size
    assert len(results) == len(images)
    for result in results:
        assert result.product == PRODUCT
        assert result.threshold == calibration["threshold"]
        assert result.pixel_threshold == calibration["pixel_threshold"]
        assert result.verdict == (DEFECT if result.score > result.threshold else NORMAL)
        assert result.pixel_map.shape == (size, size) and result.pixel_map.dtype == np.float32
        assert np.isfinite(result.pixel_map).all() and (result.pixel_map >= 0).all()
        assert 0.0 <= result.global_probability <= 1.0
        assert 0.0 <= result.score <= 1.0


def test_verdict_is_defect_exactly_when_the_score_exceeds_the_threshold(scorer: Scorer, images) -> None:
    scores = [result.score for result in scorer.score(images, [PRODUCT] * len(images))]
    middle = sorted(scores)[len(scores) // 2]
    calibration = dataclasses.replace(scorer.info.products[PRODUCT].calibration, threshold=middle)
    info = dataclasses.replace(
        scorer.info, products={PRODUCT: dataclasses.replace(scorer.info.products[PRODUCT], calibration=calibration)}
    )
    results = Scorer.for_model(scorer.engine.model, info).score(images, [PRODUCT] * len(images))
    assert [r.score for r in results] == scores
    assert [r.verdict for r in results] == [DEFECT if s > middle else NORMAL for s in scores]
    assert {r.verdict for r in results} == {DEFECT, NORMAL}
    assert results[scores.index(middle)].verdict == NORMAL  # a score equal to the threshold is accepted


def test_images_of_different_sizes_score_like_each_alone(scorer: Scorer, product: SyntheticProduct) -> None:
    rng = np.random.default_rng(13)
    shapes = [(80, 96), (300, 200), (224, 224), (17, 500), (8, 8)]
    batch = [cv2.resize(product.normal(rng).image, (w, h), interpolation=cv2.INTER_AREA) for h, w in shapes]
    together = scorer.score(batch, [PRODUCT] * len(batch))
    assert len(together) == len(shapes)
    size = scorer.input_size
    for image, result in zip(batch, together, strict=True):
        alone = scorer.score([image], [PRODUCT])[0]
        assert result.pixel_map.shape == (size, size)
        assert alone.score == pytest.approx(result.score, abs=1e-5)
        np.testing.assert_allclose(alone.pixel_map, result.pixel_map, atol=1e-5)


def test_non_contiguous_views_score_like_copies(scorer: Scorer, images) -> None:
    flipped, strided = images[0][:, ::-1], images[1][::2, ::2]
    views = scorer.score([flipped, strided], [PRODUCT] * 2)
    copies = scorer.score([np.ascontiguousarray(flipped), np.ascontiguousarray(strided)], [PRODUCT] * 2)
    assert [r.score for r in views] == [r.score for r in copies]


def _write(path: Path, array: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), array)
    return path


def test_grayscale_rgba_and_16_bit_files_score_like_their_rgb(scorer: Scorer, images, tmp_path: Path) -> None:
    rgb = images[0]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    alpha = np.random.default_rng(14).integers(0, 256, size=rgb.shape[:2], dtype=np.uint8)
    files = {
        "rgb": _write(tmp_path / "rgb.png", bgr),
        "gray": _write(tmp_path / "gray.png", gray),
        "rgba": _write(tmp_path / "rgba.png", np.dstack([bgr, alpha])),
        "rgb16": _write(tmp_path / "rgb16.png", bgr.astype(np.uint16) * 257),
        "gray16": _write(tmp_path / "gray16.png", gray.astype(np.uint16) * 257),
    }
    decoded = {name: read_rgb(path) for name, path in files.items()}
    for name, image in decoded.items():
        assert image.dtype == np.uint8 and image.shape == (*rgb.shape[:2], 3), name
    np.testing.assert_array_equal(decoded["rgb"], rgb)
    np.testing.assert_array_equal(decoded["rgba"], rgb)
    np.testing.assert_array_equal(decoded["rgb16"], rgb)
    np.testing.assert_array_equal(decoded["gray16"], decoded["gray"])

    names = list(decoded)
    results = dict(zip(names, scorer.score([decoded[n] for n in names], [PRODUCT] * len(names)), strict=True))
    for name in ("rgba", "rgb16"):
        assert results[name].score == pytest.approx(results["rgb"].score, abs=1e-6)
    assert results["gray16"].score == pytest.approx(results["gray"].score, abs=1e-6)
    # The same arrays converted in memory (BGR order as OpenCV hands them over) score the same.
    in_memory = [to_rgb_uint8(gray, "gray"), to_rgb_uint8(np.dstack([bgr, alpha]), "rgba")]
    direct = scorer.score(in_memory, [PRODUCT] * 2)
    assert direct[0].score == pytest.approx(results["gray"].score, abs=1e-6)
    assert direct[1].score == pytest.approx(results["rgb"].score, abs=1e-6)


def test_mismatched_list_lengths_are_refused(scorer: Scorer, images) -> None:
    with pytest.raises(ValueError, match="2 images but 1 product names"):
        scorer.score(images[:2], [PRODUCT])
    with pytest.raises(ValueError, match="0 images but 1 product names"):
        scorer.score([], [PRODUCT])


def test_unknown_product_is_named(scorer: Scorer, images) -> None:
    with pytest.raises(KeyError) as caught:
        scorer.score(images[:2], [PRODUCT, "gearbox"])
    assert "'gearbox'" in caught.value.args[0] and PRODUCT in caught.value.args[0]


def test_empty_list_returns_no_results(scorer: Scorer) -> None:
    assert scorer.score([], []) == []


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_on_the_cpu_is_refused(artifact: Path, tmp_path: Path, precision: str) -> None:
    with pytest.raises(ValueError, match="needs runtime openvino"):
        Scorer.from_artifact(artifact, tmp_path, device="cpu", precision=precision)


def test_unknown_precision_is_refused(scorer: Scorer) -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        Scorer.for_model(scorer.engine.model, scorer.info, precision="fp64")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_refused(scorer: Scorer) -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        Scorer.for_model(scorer.engine.model, scorer.info, device="cuda")


def test_scoring_is_deterministic(scorer: Scorer, artifact: Path, images, tmp_path: Path) -> None:
    first = scorer.score(images, [PRODUCT] * len(images))
    second = scorer.score(images, [PRODUCT] * len(images))
    fresh = Scorer.from_artifact(artifact, tmp_path).score(images, [PRODUCT] * len(images))
    for a, b, c in zip(first, second, fresh, strict=True):
        assert a.score == b.score == c.score
        assert a.global_probability == b.global_probability == c.global_probability
        assert np.array_equal(a.pixel_map, b.pixel_map) and np.array_equal(a.pixel_map, c.pixel_map)


def test_scoring_does_not_modify_the_input(scorer: Scorer, images) -> None:
    copies = [image.copy() for image in images]
    scorer.score(images, [PRODUCT] * len(images))
    assert all(np.array_equal(a, b) for a, b in zip(images, copies, strict=True))


def test_scorer_knows_its_products_and_caches_the_text(scorer: Scorer) -> None:
    assert scorer.products == [PRODUCT]
    assert scorer.engine.model.text_cache is not None and scorer.engine.model.text_cache.shape[:2] == (1, 2)
    assert scorer.engine.device == torch.device("cpu") and scorer.precision == "fp32"

"""Scoring: shapes, batch independence, cached text, memory bank, training signal."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from linewatch.anople.backbone import Backbone
from linewatch.anople.model import AnoPLe, harmonic_mean, upsample_blur_matrix
from linewatch.anople.settings import AnoPLeSettings
from linewatch.model.preprocess import to_model_tensor
from linewatch.pipeline.camera.synthetic import SyntheticSample
from tests.conftest import PRODUCT, TRAINED_STEPS


def test_prediction_shapes_and_ranges(trained_model: AnoPLe, normal_images: list[np.ndarray]) -> None:
    images = to_model_tensor(normal_images[4:9], trained_model.input_size)
    prediction = trained_model.predict(images, torch.zeros(5, dtype=torch.long), out_size=100)
    grid = trained_model.grid
    assert prediction.image_score.shape == prediction.global_probability.shape == (5,)
    assert prediction.pixel_map.shape == (5, 100, 100)
    assert prediction.decoder_map.shape == prediction.memory_map.shape == (5, grid, grid)
    for tensor in (prediction.image_score, prediction.global_probability, prediction.pixel_map):
        assert torch.isfinite(tensor).all() and (tensor >= 0).all() and (tensor <= 1).all()


def test_batch_of_n_equals_n_batches_of_one(
    trained_model: AnoPLe, normal_images: list[np.ndarray], defect_images: list[np.ndarray]
) -> None:
    images = to_model_tensor([*normal_images[4:8], *defect_images[:4]], trained_model.input_size)
    ids = torch.zeros(8, dtype=torch.long)
    batched = trained_model.predict(images, ids)
    for index in range(8):
        single = trained_model.predict(images[index : index + 1], ids[:1])
        torch.testing.assert_close(single.image_score[0], batched.image_score[index], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(single.pixel_map[0], batched.pixel_map[index], atol=1e-5, rtol=1e-4)


def test_prediction_is_deterministic(trained_model: AnoPLe, defect_images: list[np.ndarray]) -> None:
    images = to_model_tensor(defect_images[:4], trained_model.input_size)
    ids = torch.zeros(4, dtype=torch.long)
    first, second = trained_model.predict(images, ids), trained_model.predict(images, ids)
    assert torch.equal(first.image_score, second.image_score)
    assert torch.equal(first.pixel_map, second.pixel_map)


def test_cached_text_embeddings_equal_a_fresh_recompute(trained_model: AnoPLe) -> None:
    cached = trained_model.text_cache
    assert cached is not None
    with torch.no_grad():
        fresh = trained_model.text(trained_model.learner)
    torch.testing.assert_close(cached, fresh, atol=0, rtol=0)


def test_memory_map_is_zero_on_the_shots_themselves(trained_model: AnoPLe, normal_images: list[np.ndarray]) -> None:
    shots = to_model_tensor(normal_images[:4], trained_model.input_size)
    held_out = to_model_tensor(normal_images[4:8], trained_model.input_size)
    ids = torch.zeros(4, dtype=torch.long)
    on_shots = trained_model.predict(shots, ids).memory_map
    assert on_shots.abs().max() < 1e-5
    assert trained_model.predict(held_out, ids).memory_map.mean() > on_shots.mean()


def test_products_select_their_own_text_and_memory(untrained_model: AnoPLe) -> None:
    size = untrained_model.input_size
    generator = torch.Generator().manual_seed(0)
    untrained_model.build_memory(PRODUCT, torch.rand(2, 3, size, size, generator=generator))
    untrained_model.build_memory("screw", torch.rand(2, 3, size, size, generator=generator))
    untrained_model.refresh_text_cache()
    calibration = torch.rand(2, 3, size, size, generator=generator)
    for index, product in enumerate(untrained_model.products):
        untrained_model.fit_fusion_scales(product, untrained_model.terms(calibration, torch.full((2,), index)))
    assert not torch.allclose(untrained_model.fusion_scales[PRODUCT], untrained_model.fusion_scales["screw"])
    images = torch.rand(2, 3, size, size, generator=generator)
    as_plate = untrained_model.predict(images, torch.tensor([0, 0]))
    as_screw = untrained_model.predict(images, torch.tensor([1, 1]))
    mixed = untrained_model.predict(images, torch.tensor([0, 1]))
    assert not torch.allclose(as_plate.global_probability, as_screw.global_probability)
    torch.testing.assert_close(mixed.image_score, torch.stack([as_plate.image_score[0], as_screw.image_score[1]]))


def test_wrong_input_shape_and_unknown_product_are_named(untrained_model: AnoPLe) -> None:
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 224, 224\), got \(1, 3, 100, 100\)"):
        untrained_model.predict(torch.rand(1, 3, 100, 100), torch.zeros(1, dtype=torch.long))
    with pytest.raises(KeyError, match="unknown product 'bolt'"):
        untrained_model.product_index("bolt")
    with pytest.raises(KeyError, match="no memory bank for product"):
        untrained_model.predict(torch.rand(1, 3, 224, 224), torch.zeros(1, dtype=torch.long))


def _interpolate_then_blur(maps: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """The reference the matrix form must equal: 2-D bilinear resize, then a replicate-padded separable
    Gaussian, written the direct way (as anople.md states it)."""
    up = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=maps.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(up, (radius, radius, radius, radius), mode="replicate")
    blurred = F.conv2d(F.conv2d(padded, kernel.view(1, 1, 1, -1)), kernel.view(1, 1, -1, 1))
    return blurred[:, 0]


@pytest.mark.parametrize(("grid", "size", "sigma"), [(14, 224, 2.24), (15, 240, 2.4), (14, 256, 2.56), (4, 9, 1.0)])
def test_upsample_blur_matrix_equals_interpolate_then_blur(grid: int, size: int, sigma: float) -> None:
    maps = torch.rand(3, grid, grid, generator=torch.Generator().manual_seed(grid), dtype=torch.float64)
    matrix = upsample_blur_matrix(grid, size, sigma)
    assert matrix.shape == (size, grid)
    torch.testing.assert_close(matrix @ maps @ matrix.T, _interpolate_then_blur(maps, size, sigma), atol=1e-12, rtol=0)
    torch.testing.assert_close(matrix.sum(dim=1), torch.ones(size, dtype=torch.float64))  # a weighted average


def test_harmonic_mean_basics() -> None:
    a, b = torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.0, 0.5, 0.25])
    torch.testing.assert_close(harmonic_mean(a, b, 1e-6), torch.tensor([0.0, 0.5, 0.4]), atol=1e-5, rtol=0)


def _pixel_auroc(maps: torch.Tensor, samples: list[SyntheticSample]) -> float:
    size = maps.shape[-1]
    masks = np.stack([cv2.resize(s.mask, (size, size), interpolation=cv2.INTER_NEAREST) > 0 for s in samples])
    return float(roc_auc_score(masks.ravel(), maps.numpy().ravel()))


def _upsampled(grid_maps: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(grid_maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def test_training_teaches_the_decoder_and_separates_defects_from_held_out_normals(
    trained_model: AnoPLe,
    tiny_backbone: Backbone,
    normal_images: list[np.ndarray],
    defect_samples: list[SyntheticSample],
) -> None:
    """Seed 0, 4 shots, TRAINED_STEPS steps, tiny random backbone. Measured here (closing note of issue 2):
    decoder pixel AUROC 0.34 untrained -> 0.78 trained, fused pixel AUROC 0.91, image AUROC 0.69.
    Bounds leave margin for platform differences and stay far above chance (0.5).
    """
    size = trained_model.input_size
    torch.manual_seed(0)  # the same initial prompts and decoder as the trained fixture
    untrained = AnoPLe(tiny_backbone, trained_model.settings, trained_model.products).eval()
    untrained.build_memory(PRODUCT, to_model_tensor(normal_images[:4], size))
    defects = to_model_tensor([sample.image for sample in defect_samples], size)
    ids = torch.zeros(len(defect_samples), dtype=torch.long)
    trained_prediction = trained_model.predict(defects, ids)
    untrained_prediction = untrained.terms(defects, ids)
    decoder_before = _pixel_auroc(_upsampled(untrained_prediction.decoder_map, size), defect_samples)
    decoder_after = _pixel_auroc(_upsampled(trained_prediction.decoder_map, size), defect_samples)
    fused_after = _pixel_auroc(trained_prediction.pixel_map, defect_samples)
    print(f"decoder pixel AUROC {decoder_before:.3f} -> {decoder_after:.3f}, fused {fused_after:.3f}")
    assert decoder_after >= 0.7 and decoder_after - decoder_before >= 0.2
    assert fused_after >= 0.85

    normals = to_model_tensor(normal_images[4:], size)
    scores = torch.cat(
        [
            trained_model.predict(normals, torch.zeros(len(normals), dtype=torch.long)).image_score,
            trained_prediction.image_score,
        ]
    ).numpy()
    labels = np.r_[np.zeros(len(normals)), np.ones(len(defects))]
    image_auroc = roc_auc_score(labels, scores)
    print(f"image AUROC after {TRAINED_STEPS} steps: {image_auroc:.3f}")
    assert image_auroc >= 0.65


def test_products_can_share_prompt_words_but_keep_their_own_memory(tiny_backbone: Backbone) -> None:
    torch.manual_seed(0)
    words = {"pcb1": "printed circuit board", "pcb2": "printed circuit board", "fryum": "pipe fryum"}
    model = AnoPLe(tiny_backbone, AnoPLeSettings(steps=1), list(words), words)
    text = model.refresh_text_cache()
    torch.testing.assert_close(text[0], text[1], atol=0, rtol=0)
    assert not torch.allclose(text[0], text[2])
    size = model.input_size
    generator = torch.Generator().manual_seed(1)
    for name in words:
        model.build_memory(name, torch.rand(1, 3, size, size, generator=generator))
    images = torch.rand(2, 3, size, size, generator=generator)
    first, second = model.terms(images, torch.tensor([0, 0])), model.terms(images, torch.tensor([1, 1]))
    assert not torch.allclose(first.memory_map, second.memory_map)


def test_cosines_stay_in_fp32_under_bf16_autocast(trained_model: AnoPLe, normal_images: list[np.ndarray]) -> None:
    """Only the towers run in bf16: with the memory-bank cosine in bf16 too, the memory map was off by 4e-3 (its
    values near 0 are all rounding), against thresholds calibrated in fp32."""
    images = to_model_tensor(normal_images[4:12], trained_model.input_size)
    ids = torch.zeros(8, dtype=torch.long)
    exact = trained_model.predict(images, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reduced = trained_model.predict(images, ids)
    assert (reduced.memory_map - exact.memory_map).abs().max() < 1.5e-3
    assert reduced.image_score.dtype == reduced.global_probability.dtype == torch.float32


def test_plain_memory_features_come_from_the_tower_without_prompts(
    tiny_backbone: Backbone, normal_images: list[np.ndarray]
) -> None:
    """The bank holds the plain tower's patch tokens, and a query is compared in the same space: a shot scored
    against a bank holding itself is at memory distance ~0 in both settings, while the banks differ."""
    shots = to_model_tensor(normal_images[:2], 224)
    banks, distances = {}, {}
    for features in ("prompted", "plain"):
        torch.manual_seed(0)
        model = AnoPLe(tiny_backbone, AnoPLeSettings(steps=1, memory_features=features), [PRODUCT]).eval()
        model.build_memory(PRODUCT, shots)
        banks[features] = model.memory[PRODUCT]
        distances[features] = model.terms(shots, torch.zeros(2, dtype=torch.long)).memory_map
    for features in banks:
        assert distances[features].abs().max() < 1e-5
    layer = next(iter(banks["plain"]))
    assert not torch.allclose(banks["plain"][layer], banks["prompted"][layer])
    with pytest.raises(ValueError, match="memory_features must be one of prompted, plain"):
        AnoPLeSettings(memory_features="both")

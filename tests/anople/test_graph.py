"""ScoringGraph: the exportable scoring module equals AnoPLe.predict, and its left-out shot equals a memory
bank rebuilt without that shot (leave-one-out calibration at the exported precision rests on it)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from linewatch.anople.backbone import Backbone
from linewatch.anople.graph import NO_SHOT_LEFT_OUT, RemoteGraph, ScoringGraph
from linewatch.anople.model import AnoPLe, pixel_map_from_grid
from linewatch.anople.settings import AnoPLeSettings
from linewatch.model.preprocess import to_model_tensor
from tests.conftest import PRODUCT

VARIANTS = [("prompted", "scaled_mean"), ("plain", "scaled_mean"), ("prompted", "harmonic")]


@pytest.fixture(scope="module", params=VARIANTS)
def two_products(tiny_backbone: Backbone, normal_images: list[np.ndarray], request: pytest.FixtureRequest) -> AnoPLe:
    """Two products with banks of 4 and 2 shots, so the stacked bank pads the second, and their own fusion
    scales; memory features from the prompted and from the plain tower; both fusions."""
    torch.manual_seed(1)
    memory_features, fusion = request.param
    settings = AnoPLeSettings(steps=1, memory_features=memory_features, fusion=fusion)
    model = AnoPLe(tiny_backbone, settings, ["plate", "screw"]).eval()
    size = model.input_size
    model.build_memory("plate", to_model_tensor(normal_images[:4], size))
    model.build_memory("screw", to_model_tensor(normal_images[4:6], size).flip(-1))
    calibration = to_model_tensor(normal_images[12:16], size)
    for index, product in enumerate(model.products):
        model.fit_fusion_scales(product, model.terms(calibration, torch.full((4,), index)))
    return model


def test_graph_equals_predict_on_a_batch_of_mixed_products(
    two_products: AnoPLe, normal_images: list[np.ndarray], defect_images: list[np.ndarray]
) -> None:
    images = to_model_tensor([*normal_images[8:12], *defect_images[:4]], two_products.input_size)
    ids = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    graph = ScoringGraph(two_products).eval()
    with torch.inference_mode():
        expected = two_products.predict(images, ids)
        score, probability, pixel_map = graph(images, ids, torch.full((8,), NO_SHOT_LEFT_OUT))
    assert graph.shots == [4, 2] and graph.max_shots == 4
    assert pixel_map.shape == expected.pixel_map.shape == (8, two_products.input_size, two_products.input_size)
    torch.testing.assert_close(score, expected.image_score, rtol=0, atol=1e-6)
    torch.testing.assert_close(probability, expected.global_probability, rtol=0, atol=1e-6)
    torch.testing.assert_close(pixel_map, expected.pixel_map, rtol=0, atol=1e-6)


def test_remote_graph_sends_a_grid_that_rebuilds_the_local_map(
    two_products: AnoPLe, normal_images: list[np.ndarray], defect_images: list[np.ndarray]
) -> None:
    """What a scoring server answers (score, probability, g x g grid from uint8 frames) rebuilds, with the
    line PC's own upsample+blur matrix, the map and scores that local scoring gives on the same frames."""
    size = two_products.input_size
    frames = [*normal_images[8:12], *defect_images[:4]]
    ids = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    resized = np.stack([cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA) for frame in frames])
    remote = RemoteGraph(ScoringGraph(two_products)).eval()
    with torch.inference_mode():
        expected = two_products.predict(to_model_tensor(list(resized), size), ids)
        score, probability, grid = remote(
            torch.from_numpy(resized), ids[:, None], torch.full((8, 1), NO_SHOT_LEFT_OUT)
        )
    assert score.shape == probability.shape == (8, 1)
    assert grid.shape == (8, two_products.grid, two_products.grid) and grid.dtype == torch.float32
    rebuilt = pixel_map_from_grid(grid, two_products._upsample_blur(size), two_products.settings.fusion)
    torch.testing.assert_close(score[:, 0], expected.image_score, rtol=0, atol=1e-6)
    torch.testing.assert_close(probability[:, 0], expected.global_probability, rtol=0, atol=1e-6)
    torch.testing.assert_close(rebuilt, expected.pixel_map, rtol=0, atol=1e-6)


def test_left_out_shot_equals_a_bank_without_it(trained_model: AnoPLe, normal_images: list[np.ndarray]) -> None:
    size = trained_model.input_size
    shots = to_model_tensor(normal_images[:4], size)
    graph = ScoringGraph(trained_model).eval()
    ids = torch.zeros(4, dtype=torch.long)
    with torch.inference_mode():
        left_out = graph(shots, ids, torch.arange(4))[0]
        kept = graph(shots, ids, torch.full((4,), NO_SHOT_LEFT_OUT))[0]
    bank = trained_model.memory[PRODUCT]
    try:
        for index in range(4):
            trained_model.build_memory(PRODUCT, torch.cat([shots[:index], shots[index + 1 :]]))
            alone = trained_model.predict(shots[index : index + 1], ids[:1]).image_score
            torch.testing.assert_close(left_out[index : index + 1], alone, rtol=0, atol=1e-6)
    finally:
        trained_model.memory[PRODUCT] = bank
    # A shot scored against a bank holding itself has memory distance ~0, so leaving it out raises its score.
    assert (left_out > kept).all()


def test_graph_needs_every_products_memory_bank(untrained_model: AnoPLe, normal_images: list[np.ndarray]) -> None:
    untrained_model.build_memory(PRODUCT, to_model_tensor(normal_images[:2], untrained_model.input_size))
    with pytest.raises(KeyError, match="screw"):
        ScoringGraph(untrained_model)

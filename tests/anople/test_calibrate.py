"""Threshold calibration: the requested false-reject rate, never the minimum score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linewatch.anople.calibrate import calibrate, threshold_for_frr
from linewatch.anople.model import AnoPLe
from linewatch.model.preprocess import to_model_tensor


@pytest.mark.parametrize(
    ("scores", "target", "expected"),
    [
        ([0.1, 0.2, 0.3, 0.4], 0.0, 0.4 + 1e-6),  # nothing may be rejected: just above the maximum
        ([0.1, 0.2, 0.3, 0.4], 0.25, 0.35),  # one of four: midway between 0.3 and 0.4
        ([0.4, 0.1, 0.3, 0.2], 0.5, 0.25),  # order does not matter
        ([0.1, 0.2, 0.3, 0.4], 0.2, 0.4 + 1e-6),  # floor(0.8) = 0 allowed rejections
        ([0.5], 0.1, 0.5 + 1e-6),
    ],
)
def test_threshold_table(scores: list[float], target: float, expected: float) -> None:
    assert threshold_for_frr(np.array(scores), target) == pytest.approx(expected, rel=0, abs=1e-9)


@pytest.mark.parametrize("target", [0.01, 0.05, 0.1, 0.2])
def test_achieved_rate_matches_target_on_many_scores(target: float) -> None:
    scores = np.random.default_rng(0).normal(size=1000)
    threshold = threshold_for_frr(scores, target)
    assert (scores > threshold).mean() == pytest.approx(target, abs=1e-9)
    assert threshold > scores.min()


@pytest.mark.parametrize(("scores", "target"), [([], 0.1), ([0.1, float("nan")], 0.1), ([0.1], 1.0), ([0.1], -0.1)])
def test_bad_calibration_input_is_refused(scores: list[float], target: float) -> None:
    with pytest.raises(ValueError):
        threshold_for_frr(np.array(scores), target)


def test_calibration_on_held_out_normals_gives_the_requested_rate(
    trained_model: AnoPLe, normal_images: list[np.ndarray], defect_images: list[np.ndarray]
) -> None:
    held_out = to_model_tensor(normal_images[4:], trained_model.input_size)  # 20 images
    prediction = trained_model.predict(held_out, torch.zeros(len(held_out), dtype=torch.long))
    scores = prediction.image_score.numpy()
    maxima = prediction.pixel_map.flatten(1).amax(dim=1).numpy()
    defects = to_model_tensor(defect_images, trained_model.input_size)
    defect_scores = trained_model.predict(defects, torch.zeros(len(defects), dtype=torch.long)).image_score.numpy()
    result = calibrate(scores, maxima, 0.1, "held-out normals", defect_scores)
    assert result.achieved_frr == pytest.approx(0.1)
    assert (scores > result.threshold).sum() == 2
    assert (maxima > result.pixel_threshold).sum() == 2
    assert result.n_normals == 20 and result.n_simulated == 20
    assert result.simulated_recall == pytest.approx((defect_scores > result.threshold).mean())

"""Metrics: known values (perfect, inverted, constant, random, hand-worked), cross-checks, brute force, bad inputs."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from linewatch.eval.metrics import MetricError, aupro, f1_max, image_auroc, pixel_auroc, summarise


def _masks_and_maps(seed: int, n: int = 3, size: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Random rectangles (some images normal), scores rounded to one decimal so that ties are common."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for index in range(n - 1):
        for _ in range(2):
            top, left = rng.integers(0, size - 3, 2)
            height, width = rng.integers(1, 4, 2)
            masks[index, top : top + height, left : left + width] = True
    maps = np.round(rng.random(masks.shape) * 0.8 + 0.4 * masks, 1)
    return masks, maps


def _brute_force_aupro(masks: np.ndarray, maps: np.ndarray) -> float:
    """AUPRO up to FPR 1 by thresholding at every distinct score, straight from the definition."""
    regions = []
    for index, mask in enumerate(masks):
        count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        regions += [(index, labels == region) for region in range(1, count)]
    negative = ~masks
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        detected = maps >= threshold
        pros.append(np.mean([detected[index][region].mean() for index, region in regions]))
        fprs.append((detected & negative).sum() / negative.sum())
    return float(np.trapezoid(pros, fprs))


# ---------------------------------------------------------------- image_auroc


def test_image_auroc_known_values() -> None:
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert image_auroc(labels, scores) == 1.0
    assert image_auroc(labels, -scores) == 0.0
    assert image_auroc(labels, np.full(6, 0.4)) == 0.5


def test_image_auroc_random_scores_near_half_and_equal_to_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 20_000)
    scores = rng.random(20_000)
    assert image_auroc(labels, scores) == pytest.approx(0.5, abs=0.05)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    skewed = scores + 0.3 * labels
    assert image_auroc(labels.astype(bool), skewed) == pytest.approx(roc_auc_score(labels, skewed), abs=1e-12)


@pytest.mark.parametrize("metric", [image_auroc, f1_max])
@pytest.mark.parametrize(
    ("labels", "scores", "why"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "both normal and anomalous"),
        ([0, 0, 0], [0.1, 0.2, 0.3], "both normal and anomalous"),
        ([0, 1, 1], [0.1, 0.2], "3 labels but 2 scores"),
        ([0, 1], [0.1, np.nan], "non-finite"),
        ([0, 1], [0.1, np.inf], "non-finite"),
        ([0, 2], [0.1, 0.2], "0/1"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_image_metrics_reject_bad_inputs(metric, labels, scores, why: str) -> None:
    with pytest.raises(MetricError, match=rf"^{metric.__name__}: .*{why}"):
        metric(np.array(labels), np.array(scores))


# ---------------------------------------------------------------- f1_max


def test_f1_max_hand_worked() -> None:
    # Sorted by score: 0.9(+) 0.8(+) 0.7(-) 0.4(-) 0.35(+) 0.1(-); 3 positives.
    # t=0.9: P=1 R=1/3 F1=0.5 | t=0.8: P=1 R=2/3 F1=0.8 | t=0.7: P=2/3 R=2/3 F1=2/3
    # t=0.4: P=1/2 R=2/3 F1=4/7 | t=0.35: P=3/5 R=1 F1=0.75 | t=0.1: P=1/2 R=1 F1=2/3  -> max 0.8
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9])
    assert f1_max(labels, scores) == pytest.approx(0.8)


def test_f1_max_perfect_constant_and_zero_over_zero() -> None:
    labels = np.array([0, 0, 1, 1])
    assert f1_max(labels, np.array([0.1, 0.2, 0.8, 0.9])) == pytest.approx(1.0)
    # Constant scores: the only threshold flags everything, P = 1/2, R = 1 -> F1 = 2/3.
    assert f1_max(labels, np.full(4, 0.5)) == pytest.approx(2 / 3)
    # Inverted: at t=0.9 the only detection is false, P = R = 0 (F1 0, not 0/0); at t=0.1, P=1/2, R=1 -> 2/3.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f1_max(np.array([0, 1]), np.array([0.9, 0.1])) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- pixel_auroc


def test_pixel_auroc_known_values_and_sklearn() -> None:
    masks, maps = _masks_and_maps(seed=1)
    assert pixel_auroc(masks, masks.astype(np.float32)) == 1.0
    assert pixel_auroc(masks, 1.0 - masks) == 0.0
    assert pixel_auroc(masks, np.zeros(masks.shape)) == 0.5
    assert pixel_auroc(masks.astype(np.uint8), maps) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    rng = np.random.default_rng(2)
    random_masks = rng.random((5, 64, 64)) < 0.1
    assert pixel_auroc(random_masks, rng.random(random_masks.shape)) == pytest.approx(0.5, abs=0.05)


@pytest.mark.parametrize("metric", [pixel_auroc, aupro])
def test_pixel_metrics_reject_bad_inputs(metric) -> None:
    masks, maps = _masks_and_maps(seed=3)
    name = metric.__name__
    with pytest.raises(MetricError, match=rf"^{name}: masks and maps must both be \(N, H, W\)"):
        metric(masks, maps[:, :-1])
    with pytest.raises(MetricError, match=rf"^{name}: masks and maps must both be \(N, H, W\)"):
        metric(masks[0], maps[0])
    with pytest.raises(MetricError, match=rf"^{name}: .*anomalous"):
        metric(np.zeros_like(masks), maps)
    with pytest.raises(MetricError, match=rf"^{name}: .*normal pixel"):
        metric(np.ones_like(masks), maps)
    with pytest.raises(MetricError, match=rf"^{name}: maps contain non-finite"):
        metric(masks, np.where(masks, np.nan, maps))
    with pytest.raises(MetricError, match=rf"^{name}: masks must be 0/1"):
        metric(masks.astype(np.uint8) * 255, maps)


# ---------------------------------------------------------------- aupro


def test_aupro_perfect_inverted_constant() -> None:
    masks, _ = _masks_and_maps(seed=4)
    # Perfect: (0,0) -> (0,1) -> (1,1); area up to 0.3 is 0.3 -> normalised 1.
    assert aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    # Inverted: every negative outranks every positive, (0,0) -> (1,0) -> (1,1); nothing below FPR 1.
    assert aupro(masks, 1.0 - masks) == 0.0
    # Constant: one threshold, (0,0) -> (1,1); PRO interpolated at 0.3 is 0.3, area 0.3*0.3/2 = 0.045 -> 0.045/0.3.
    assert aupro(masks, np.full(masks.shape, 0.2)) == pytest.approx(0.15)
    assert aupro(masks, np.full(masks.shape, 0.2), max_fpr=1.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("max_fpr", "expected"),
    [
        # Area 0.25/13 + 0.875/13 + (0.3 - 2/13) * 1 = 0.3 - 0.875/13; / 0.3 = 1 - 0.875/3.9.
        (0.3, 1 - 0.875 / 3.9),
        # Area 0.25/13 + 0.875/13 + (1 - 2/13) = 12.125/13.
        (1.0, 12.125 / 13),
        # Interpolated on the sloped segment (1/13, 0.75)-(2/13, 1): PRO(1.5/13) = 0.875.
        # Area 0.25/13 + (0.5/13) * (0.75 + 0.875)/2 = 0.65625/13; / (1.5/13) = 0.4375.
        (1.5 / 13, 0.4375),
    ],
)
def test_aupro_hand_worked(max_fpr: float, expected: float) -> None:
    # One 4x4 image: region A = (0,0),(0,1) scored 0.9 and 0.5; region B = (3,3) scored 0.7; 13 negatives:
    # (2,0) at 0.8, (1,3) at 0.5 (tied with A's second pixel), the other 11 at 0.1.
    # Per pixel: A adds 1/(2*2) = 0.25 to PRO, B adds 1/(1*2) = 0.5, a negative adds 1/13 to FPR.
    # Points (FPR, PRO): (0,0) | t=0.9 (0,0.25) | t=0.8 (1/13,0.25) | t=0.7 (1/13,0.75) | t=0.5 (2/13,1) | t=0.1 (1,1)
    masks = np.zeros((1, 4, 4), dtype=bool)
    masks[0, 0, 0] = masks[0, 0, 1] = masks[0, 3, 3] = True
    maps = np.full((1, 4, 4), 0.1)
    maps[0, 0, 0], maps[0, 0, 1], maps[0, 3, 3] = 0.9, 0.5, 0.7
    maps[0, 2, 0], maps[0, 1, 3] = 0.8, 0.5
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-12)


def test_aupro_averages_regions_not_pixels() -> None:
    # Image 0: a 4x4 region fully detected (score 1); image 1: a one-pixel region scored below every negative.
    # Points: (0,0) -> (0, 0.5) -> (1, 0.5) -> (1, 1): AUPRO = 0.5, whereas the pixel fraction would be 16/17.
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0, 2:6, 2:6] = True
    masks[1, 4, 4] = True
    maps = np.full(masks.shape, 0.5)
    maps[0][masks[0]] = 1.0
    maps[1, 4, 4] = 0.0
    assert aupro(masks, maps) == pytest.approx(0.5)
    assert aupro(masks, maps, max_fpr=1.0) == pytest.approx(0.5)


def test_aupro_regions_are_8_connected() -> None:
    # The diagonal pair is one region (half detected), (3,3) another (detected): PRO = (0.5 + 1)/2 = 0.75 below FPR 1.
    # With 4-connectivity it would be three regions and 2/3.
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 3, 3] = True
    maps = np.full(masks.shape, 0.5)
    maps[0, 0, 0] = maps[0, 3, 3] = 1.0
    maps[0, 1, 1] = 0.0
    assert aupro(masks, maps) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_aupro_matches_brute_force_at_fpr_one(seed: int) -> None:
    masks, maps = _masks_and_maps(seed)
    assert len(np.unique(maps)) < maps.size  # ties are exercised
    assert aupro(masks, maps, max_fpr=1.0) == pytest.approx(_brute_force_aupro(masks, maps), abs=1e-12)


def test_aupro_depends_only_on_score_order() -> None:
    masks, maps = _masks_and_maps(seed=8)
    assert aupro(masks, np.exp(3 * maps).astype(np.float32)) == pytest.approx(aupro(masks, maps), abs=1e-12)


@pytest.mark.parametrize("max_fpr", [0.0, -0.1, 1.5])
def test_aupro_rejects_max_fpr_outside_unit_interval(max_fpr: float) -> None:
    masks, maps = _masks_and_maps(seed=9)
    with pytest.raises(MetricError, match=r"^aupro: max_fpr must be in \(0, 1\]"):
        aupro(masks, maps, max_fpr=max_fpr)


# ---------------------------------------------------------------- summarise


def test_summarise() -> None:
    mean, std = summarise([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9)
    assert std == pytest.approx(0.1)  # sample std: sqrt((0.01 + 0 + 0.01) / 2)
    assert summarise([0.7]) == (0.7, 0.0)
    with pytest.raises(MetricError, match=r"^summarise: no values"):
        summarise([])

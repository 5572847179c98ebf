"""Standard anomaly-detection metrics (image AUROC, F1-max, pixel AUROC, AUPRO) as reported in the AnoPLe tables.

Every metric validates its inputs and raises MetricError instead of letting scikit-learn warn and return NaN: a NaN
in a reproduced table hides which class and which metric went wrong, the message here names both the metric and why.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score


class MetricError(ValueError):
    """Inputs a metric cannot be computed on; the message says which metric and why."""


def _binary(metric: str, what: str, values: np.ndarray) -> np.ndarray:
    """Labels and masks must be bool or 0/1: a 0/255 mask or a float map passed by mistake must not pass silently."""
    values = np.asarray(values)
    if values.dtype != bool and not np.all((values == 0) | (values == 1)):
        raise MetricError(f"{metric}: {what} must be 0/1 or bool")
    return values.astype(bool)


def _finite(metric: str, what: str, values: np.ndarray) -> np.ndarray:
    """Scores as float64, rejecting NaN/inf, which would otherwise sort arbitrarily and give a meaningless curve."""
    values = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise MetricError(f"{metric}: {what} contain non-finite values")
    return values


def _image_inputs(metric: str, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both classes are required: with one class the ROC is undefined and F1-max is a degenerate constant."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.ndim != 1 or scores.ndim != 1:
        raise MetricError(f"{metric}: labels and scores must be 1-D, got shapes {labels.shape} and {scores.shape}")
    if labels.shape != scores.shape:
        raise MetricError(f"{metric}: {labels.size} labels but {scores.size} scores")
    labels = _binary(metric, "labels", labels)
    scores = _finite(metric, "scores", scores)
    if labels.all() or not labels.any():
        found = f"got {int(labels.sum())} anomalous of {labels.size}"
        raise MetricError(f"{metric}: needs both normal and anomalous images, {found}")
    return labels, scores


def _pixel_inputs(metric: str, masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) masks and maps of one shape: regions are found per image, so the image axis must be explicit."""
    masks, maps = np.asarray(masks), np.asarray(maps)
    if masks.ndim != 3 or masks.shape != maps.shape:
        raise MetricError(f"{metric}: masks and maps must both be (N, H, W), got {masks.shape} and {maps.shape}")
    return _binary(metric, "masks", masks), _finite(metric, "maps", maps)


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of image-level scores against 0/1 labels (1 = anomalous)."""
    labels, scores = _image_inputs("image_auroc", labels, scores)
    return float(roc_auc_score(labels, scores))


def f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 over all thresholds: the paper's threshold-free summary of how separable the image scores are."""
    labels, scores = _image_inputs("f1_max", labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    denominator = precision + recall
    # A threshold whose detections are all false has P = R = 0; its F1 is 0, not 0/0.
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(f1.max())


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """ROC AUC over every pixel of every image, anomalous pixels being those inside the ground-truth masks."""
    masks, maps = _pixel_inputs("pixel_auroc", masks, maps)
    if masks.all() or not masks.any():
        raise MetricError("pixel_auroc: needs both anomalous and normal pixels in the masks")
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def _region_labels(masks: np.ndarray) -> np.ndarray:
    """Global ids of the 8-connected ground-truth regions per pixel (0 = outside every mask), unique across images."""
    labels = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for index, mask in enumerate(masks):
        count, image_labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        labels[index] = np.where(image_labels > 0, image_labels + offset, 0)
        offset += count - 1
    return labels


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Normalised area under the per-region-overlap curve up to max_fpr (Bergmann et al., IJCV 2021).

    Unlike pixel AUROC, every defect region weighs the same however large it is, so a missed scratch costs as much as
    a missed stain. The curve is exact: pixels are sorted by score once, and lowering the threshold past a pixel adds
    1 / (|region| * n_regions) to PRO (positive pixel) or 1 / n_negative to FPR (negative pixel). Equal scores are
    one threshold, so only the last pixel of each tie group is a curve point. (0, 0) is prepended, the PRO at exactly
    max_fpr is interpolated linearly, and the trapezoid area is divided by max_fpr so that a perfect map scores 1.0.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise MetricError(f"aupro: max_fpr must be in (0, 1], got {max_fpr}")
    masks, maps = _pixel_inputs("aupro", masks, maps)
    regions = _region_labels(masks).ravel()
    sizes = np.bincount(regions)
    n_regions, n_negative = sizes.size - 1, int(sizes[0])
    if n_regions == 0:
        raise MetricError("aupro: the masks contain no anomalous region")
    if n_negative == 0:
        raise MetricError("aupro: the masks contain no normal pixel")

    pro_weight = np.zeros(sizes.size, dtype=np.float64)
    pro_weight[1:] = 1.0 / (sizes[1:] * n_regions)
    order = np.argsort(maps.ravel())[::-1]
    sorted_regions = regions[order]
    sorted_scores = maps.ravel()[order]
    pro = np.cumsum(pro_weight[sorted_regions])
    # Counting negatives in integers makes the last FPR exactly 1.0, so max_fpr=1.0 needs no interpolation.
    fpr = np.cumsum(sorted_regions == 0) / n_negative
    last_of_tie = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    # Float sums of many 1/|r| terms can overshoot 1 by an ulp; PRO is a mean of overlaps, so it cannot exceed 1.
    pro = np.concatenate([[0.0], np.minimum(pro[last_of_tie], 1.0)])
    fpr = np.concatenate([[0.0], fpr[last_of_tie]])

    inside = int(np.searchsorted(fpr, max_fpr, side="right"))  # points [0, inside) have FPR <= max_fpr; inside >= 1
    x, y = fpr[:inside], pro[:inside]
    if inside < fpr.size:  # the curve continues past max_fpr: close it with the interpolated point at max_fpr
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        x = np.append(x, max_fpr)
        y = np.append(y, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0))
    return float(np.trapezoid(y, x) / max_fpr)


def summarise(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) over seeds or classes; a single value has no spread, so 0.0."""
    if len(values) == 0:
        raise MetricError("summarise: no values")
    array = np.asarray(values, dtype=np.float64)
    spread = float(array.std(ddof=1)) if array.size > 1 else 0.0
    return float(array.mean()), spread

"""Threshold calibration to an expected false-reject rate on held-out normal images.

AnoPLe scores are not probabilities, so a threshold only means something relative to the scores of
normal parts of this product. The threshold is set so that at most ``target_frr`` of the held-out
normals would be rejected; simulated anomalies made from the same normals report how much the
threshold still catches. The minimum normal score is never used (it would flag every part).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

_NOTHING_REJECTED_MARGIN = 1e-6
# Image scores and pixel values are harmonic means of values in [0, 1]; a threshold sits at most a small
# margin above the highest normal score, so anything past this bound is not a calibration.
SCORE_MAX = 1.0 + 1e-3


@dataclass(frozen=True)
class Calibration:
    threshold: float  # image score above this -> defect
    pixel_threshold: float  # pixel-map value above this -> drawn as defective region
    target_frr: float
    achieved_frr: float  # share of the calibration normals above the threshold
    n_normals: int
    source: str  # "held-out normals"; without any "leave-one-out shots", or "augmented shots" for a single shot
    simulated_recall: float | None  # share of simulated anomalies above the threshold
    n_simulated: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Calibration:
        """Rebuild from an artifact, which a user may have edited: every value is checked, and a ValueError
        names the key. A threshold outside the score range (NaN, infinite, negative, above 1) would either
        flag every part or none, and NaN cannot even be written to the journal or MQTT."""
        if not isinstance(data, dict):
            raise ValueError(f"calibration must be an object, got {type(data).__name__}")
        names = [field.name for field in fields(cls)]
        missing, unknown = sorted(set(names) - set(data)), sorted(set(data) - set(names))
        if missing or unknown:
            raise ValueError(f"calibration keys: missing {missing}, unknown {unknown}")
        recall = data["simulated_recall"]
        return cls(
            threshold=_number(data, "threshold", 0.0, SCORE_MAX),
            pixel_threshold=_number(data, "pixel_threshold", 0.0, SCORE_MAX),
            target_frr=_number(data, "target_frr", 0.0, 1.0),
            achieved_frr=_number(data, "achieved_frr", 0.0, 1.0),
            n_normals=_count(data, "n_normals"),
            source=_text(data, "source"),
            simulated_recall=None if recall is None else _number(data, "simulated_recall", 0.0, 1.0),
            n_simulated=_count(data, "n_simulated"),
        )


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"calibration.{key} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"calibration.{key} must be in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _count(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"calibration.{key} must be a whole number >= 0, got {value!r}")
    return value


def _text(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise ValueError(f"calibration.{key} must be a string, got {value!r}")
    return value


def threshold_for_frr(scores: np.ndarray, target_frr: float) -> float:
    """Threshold rejecting at most floor(target_frr * n) of ``scores`` (reject means score > threshold).

    Placed midway between the last accepted and the first rejected score, so small score noise does
    not flip the calibration set. With nothing to reject it sits a small margin above the maximum
    normal score: the same image scored in another batch can differ by ~1e-7 in fp32.
    """
    if not 0.0 <= target_frr < 1.0:
        raise ValueError(f"target false-reject rate must be in [0, 1), got {target_frr}")
    values = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if values.size == 0 or not np.isfinite(values).all():
        raise ValueError("calibration needs at least one finite normal score")
    allowed = math.floor(target_frr * values.size + 1e-9)
    last_accepted = values[values.size - allowed - 1]
    if allowed == 0:
        return float(last_accepted + _NOTHING_REJECTED_MARGIN)
    return float((last_accepted + values[values.size - allowed]) / 2)


def calibrate(
    normal_scores: np.ndarray,
    normal_pixel_maxima: np.ndarray,
    target_frr: float,
    source: str,
    simulated_scores: np.ndarray | None = None,
) -> Calibration:
    threshold = threshold_for_frr(normal_scores, target_frr)
    pixel_threshold = threshold_for_frr(normal_pixel_maxima, target_frr)
    normal_scores = np.asarray(normal_scores, dtype=np.float64)
    recall = None
    n_simulated = 0
    if simulated_scores is not None and len(simulated_scores):
        simulated = np.asarray(simulated_scores, dtype=np.float64)
        recall = float((simulated > threshold).mean())
        n_simulated = int(simulated.size)
    return Calibration(
        threshold=threshold,
        pixel_threshold=pixel_threshold,
        target_frr=target_frr,
        achieved_frr=float((normal_scores > threshold).mean()),
        n_normals=int(normal_scores.size),
        source=source,
        simulated_recall=recall,
        n_simulated=n_simulated,
    )

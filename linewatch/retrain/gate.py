"""Retraining decisions as pure functions: which normals train and which judge, whether a candidate may
replace the active version, and how far a threshold may move in one recalibration.

Why the gate looks the way it does: the candidate's threshold is recalibrated on the held-out confirmed
normals themselves (there are too few of them to split again), so its false-reject rate there is
optimistic by about 1/(n+1); the margin absorbs that. The check that carries the weight is the other
one: at that threshold the candidate must flag at least as many confirmed defects as the active
version does. A retrain fed defects as "normals" raises its threshold over them and fails there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import numpy as np

from linewatch.anople.calibrate import threshold_for_frr

T = TypeVar("T")


def split_holdout(items: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """(train, held out): a seeded shuffle, at least one of each, original order kept within each part."""
    if len(items) < 2:
        raise ValueError(f"a train/held-out split needs at least 2 items, got {len(items)}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction must be in (0, 1), got {fraction}")
    held = min(len(items) - 1, max(1, round(fraction * len(items))))
    order = np.random.default_rng(seed).permutation(len(items))
    held_ids = set(order[:held].tolist())
    train = [item for index, item in enumerate(items) if index not in held_ids]
    held_out = [item for index, item in enumerate(items) if index in held_ids]
    return train, held_out


def choose_shots(previous: Sequence[T], new: Sequence[T], max_shots: int) -> list[T]:
    """The shots of a new version: the newest confirmed normals, and of the previous shots the most recent,
    at least half of ``max_shots`` when there are that many, so one batch of drift does not erase what the
    line looked like before. Previous first, then new, each in its own order."""
    if max_shots < 1:
        raise ValueError(f"max_shots must be at least 1, got {max_shots}")
    keep_previous = min(len(previous), max(max_shots - len(new), max_shots // 2))
    take_new = min(len(new), max_shots - keep_previous)
    kept = list(previous[len(previous) - keep_previous :]) if keep_previous else []
    return kept + (list(new[len(new) - take_new :]) if take_new else [])


@dataclass(frozen=True)
class GateEvidence:
    """One version's scores on the gate set, each image with the threshold of its own product."""

    normal_scores: np.ndarray  # (N,) held-out confirmed normals
    normal_thresholds: np.ndarray  # (N,)
    defect_scores: np.ndarray  # (D,) every confirmed defect with a snapshot
    defect_thresholds: np.ndarray  # (D,)

    def false_reject_rate(self) -> float:
        return float((self.normal_scores > self.normal_thresholds).mean()) if self.normal_scores.size else 0.0

    def flagged(self) -> int:
        return int((self.defect_scores > self.defect_thresholds).sum())


@dataclass(frozen=True)
class GateResult:
    accepted: bool
    reason: str
    n_normals: int
    n_defects: int
    active_frr: float
    candidate_frr: float
    active_flagged: int
    candidate_flagged: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate(active: GateEvidence, candidate: GateEvidence, frr_margin: float) -> GateResult:
    """Accept the candidate only if its false-reject rate on the held-out normals is no worse than the
    active one's plus ``frr_margin`` and it flags at least as many confirmed defects."""
    n_normals, n_defects = int(active.normal_scores.size), int(active.defect_scores.size)
    if candidate.normal_scores.size != n_normals or candidate.defect_scores.size != n_defects:
        raise ValueError("both versions must be scored on the same gate images")
    active_frr, candidate_frr = active.false_reject_rate(), candidate.false_reject_rate()
    active_flagged, candidate_flagged = active.flagged(), candidate.flagged()
    problems = []
    if n_normals == 0:
        problems.append("no held-out confirmed normals to judge it on")
    elif candidate_frr > active_frr + frr_margin + 1e-12:
        problems.append(
            f"false-reject rate {candidate_frr:.3f} on {n_normals} held-out normals is worse than the active "
            f"version's {active_frr:.3f} (margin {frr_margin:g})"
        )
    if candidate_flagged < active_flagged:
        problems.append(
            f"flags {candidate_flagged} of {n_defects} confirmed defects, the active version flags {active_flagged}"
        )
    if problems:
        reason = "; ".join(problems)
    else:
        separation = (
            f"flags {candidate_flagged} of {n_defects} confirmed defects (active {active_flagged})"
            if n_defects
            else "no confirmed defects yet, separation not checked"
        )
        reason = (
            f"false-reject rate {candidate_frr:.3f} on {n_normals} held-out normals (active {active_frr:.3f}); "
            f"{separation}"
        )
    return GateResult(
        accepted=not problems,
        reason=reason,
        n_normals=n_normals,
        n_defects=n_defects,
        active_frr=active_frr,
        candidate_frr=candidate_frr,
        active_flagged=active_flagged,
        candidate_flagged=candidate_flagged,
    )


@dataclass(frozen=True)
class Recalibration:
    threshold: float  # the threshold to use from now on (== current when unchanged)
    proposed: float  # what the confirmed normals alone ask for
    changed: bool
    reason: str


def recalibrated_threshold(
    current: float,
    normal_scores: np.ndarray,
    defect_scores: np.ndarray,
    target_frr: float,
    max_step: float,
) -> Recalibration:
    """Move ``current`` toward the threshold that gives ``target_frr`` on the confirmed normals, by at most
    ``max_step`` of itself, so a few mislabelled images cannot swing it far in one night; never to where
    it would miss a confirmed defect that the current threshold flags."""
    if not 0.0 < max_step <= 1.0:
        raise ValueError(f"max_step must be in (0, 1], got {max_step}")
    proposed = threshold_for_frr(normal_scores, target_frr)
    low, high = current * (1.0 - max_step), current * (1.0 + max_step)
    bounded = float(min(max(proposed, min(low, high)), max(low, high)))
    defects = np.asarray(defect_scores, dtype=np.float64)
    missed = int(((defects > current) & (defects <= bounded)).sum())
    if missed:
        return Recalibration(
            current,
            proposed,
            False,
            f"kept {current:.5f}: moving to {bounded:.5f} would miss {missed} confirmed defect(s)",
        )
    if abs(bounded - current) <= 1e-9 * max(1.0, abs(current)):
        return Recalibration(current, proposed, False, f"kept {current:.5f}: the confirmed normals agree with it")
    limited = " (step limited)" if bounded != proposed else ""
    return Recalibration(
        bounded,
        proposed,
        True,
        f"moved {current:.5f} -> {bounded:.5f}{limited} from {np.asarray(normal_scores).size} confirmed normals "
        f"(target false-reject rate {target_frr:g})",
    )


def gate_evidence(
    scored: dict[str, Any],
    normal_products: Iterable[str],
    defect_products: Iterable[str],
    thresholds: dict[str, float],
) -> GateEvidence:
    """Flatten one version's per-product scores (the training process's report: ``holdout`` and
    ``defects``, product -> scores) into the gate's arrays, in a fixed product order."""
    normal_scores, normal_thresholds, defect_scores, defect_thresholds = [], [], [], []
    for product in sorted(set(normal_products)):
        values = scored["holdout"].get(product, [])
        normal_scores.extend(values)
        normal_thresholds.extend([thresholds[product]] * len(values))
    for product in sorted(set(defect_products)):
        values = scored["defects"].get(product, [])
        defect_scores.extend(values)
        defect_thresholds.extend([thresholds[product]] * len(values))
    return GateEvidence(
        np.asarray(normal_scores, dtype=np.float64),
        np.asarray(normal_thresholds, dtype=np.float64),
        np.asarray(defect_scores, dtype=np.float64),
        np.asarray(defect_thresholds, dtype=np.float64),
    )

"""Retraining decisions as tables: the held-out split, shot choice, the gate and bounded recalibration."""

from __future__ import annotations

import numpy as np
import pytest

from linewatch.retrain.gate import GateEvidence, choose_shots, gate, recalibrated_threshold, split_holdout


@pytest.mark.parametrize(
    ("count", "fraction", "held"),
    [(2, 0.3, 1), (8, 0.3, 2), (10, 0.3, 3), (10, 0.99, 9), (10, 0.01, 1), (20, 0.5, 10)],
)
def test_split_holdout_sizes_and_partition(count: int, fraction: float, held: int) -> None:
    items = list(range(count))
    train, held_out = split_holdout(items, fraction, seed=7)
    assert len(held_out) == held
    assert sorted(train + held_out) == items  # a partition: nothing lost, nothing twice
    assert train == sorted(train) and held_out == sorted(held_out)  # original order kept
    assert split_holdout(items, fraction, seed=7) == (train, held_out)  # seeded


def test_split_holdout_depends_on_seed_and_refuses_bad_input() -> None:
    items = list(range(30))
    assert split_holdout(items, 0.3, 1)[1] != split_holdout(items, 0.3, 2)[1]
    with pytest.raises(ValueError, match="at least 2"):
        split_holdout([1], 0.3, 0)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        split_holdout(items, 1.0, 0)


@pytest.mark.parametrize(
    ("previous", "new", "max_shots", "expected"),
    [
        ("abcd", "", 16, "abcd"),  # nothing new: the old shots
        ("abcd", "WXYZ", 16, "abcdWXYZ"),  # room for all
        ("abcdefgh", "STUVWXYZ", 8, "efghWXYZ"),  # full: half old (the most recent), half new (the newest)
        ("ab", "QRSTUVWXYZ", 8, "abUVWXYZ"),  # few old: all of them, the newest new fill up
        ("abcdefgh", "Z", 4, "fghZ"),  # few new: all of them, old fill up
        ("", "QRSTUVWXYZ", 4, "WXYZ"),  # no old shots on disk: the newest new
        ("abc", "XYZ", 1, "Z"),  # a single shot: max_shots // 2 == 0 old
    ],
)
def test_choose_shots(previous: str, new: str, max_shots: int, expected: str) -> None:
    assert "".join(choose_shots(list(previous), list(new), max_shots)) == expected


def _evidence(normals: list[float], defects: list[float], threshold: float) -> GateEvidence:
    return GateEvidence(
        np.array(normals, dtype=float),
        np.full(len(normals), threshold),
        np.array(defects, dtype=float),
        np.full(len(defects), threshold),
    )


@pytest.mark.parametrize(
    ("active", "candidate", "margin", "accepted", "reason"),
    [
        # drift: the active version rejects most recent normals, the candidate none, defects still caught
        (([0.6, 0.7, 0.4, 0.8], [0.9, 0.95], 0.5), ([0.2, 0.3, 0.25, 0.1], [0.9, 0.8], 0.35), 0.0, True, "0.000"),
        # poisoned: threshold raised over the "normals", the confirmed defects slip under it
        (([0.3, 0.6, 0.2, 0.3], [0.9, 0.8], 0.5), ([0.1, 0.1, 0.1, 0.1], [0.2, 0.1], 0.85), 0.0, False, "flags 0 of 2"),
        # worse on the normals than the active one, beyond the margin
        (([0.1, 0.1, 0.1, 0.1], [], 0.5), ([0.1, 0.9, 0.1, 0.1], [], 0.5), 0.2, False, "worse than the active"),
        # within the margin
        (([0.1, 0.1, 0.1, 0.1], [], 0.5), ([0.1, 0.9, 0.1, 0.1], [], 0.5), 0.25, True, "separation not checked"),
        # nothing held out: cannot be judged
        (([], [0.9], 0.5), ([], [0.9], 0.5), 0.5, False, "no held-out"),
    ],
)
def test_gate_table(
    active: tuple[list[float], list[float], float],
    candidate: tuple[list[float], list[float], float],
    margin: float,
    accepted: bool,
    reason: str,
) -> None:
    result = gate(_evidence(*active), _evidence(*candidate), margin)
    assert result.accepted is accepted
    assert reason in result.reason
    assert result.n_normals == len(active[0]) and result.n_defects == len(active[1])


def test_gate_counts_each_image_against_its_own_products_threshold() -> None:
    active = GateEvidence(np.array([0.3, 0.3]), np.array([0.2, 0.4]), np.array([]), np.array([]))
    assert active.false_reject_rate() == 0.5
    candidate = GateEvidence(np.array([0.3]), np.array([0.4]), np.array([]), np.array([]))
    with pytest.raises(ValueError, match="same gate images"):
        gate(active, candidate, 0.0)


@pytest.mark.parametrize(
    ("current", "normals", "defects", "step", "changed", "threshold"),
    [
        (0.5, [0.30, 0.31, 0.32], [], 0.1, True, 0.45),  # wants 0.32: one step of 10% down
        (0.5, [0.49, 0.50, 0.52], [], 0.1, True, 0.52 + 1e-6),  # wants just above the top normal: within a step
        (0.5, [0.7, 0.8, 0.9], [], 0.1, True, 0.55),  # wants 0.9: limited to +10%
        (0.5, [0.7, 0.8, 0.9], [0.54], 0.1, False, 0.5),  # +10% would miss a confirmed defect: kept
        (0.5, [0.7, 0.8, 0.9], [0.6], 0.1, True, 0.55),  # that defect stays above: moved
        (0.5, [0.5 - 1e-6], [], 0.1, False, 0.5),  # the normals agree with the current threshold
    ],
)
def test_recalibrated_threshold_is_bounded(
    current: float, normals: list[float], defects: list[float], step: float, changed: bool, threshold: float
) -> None:
    decision = recalibrated_threshold(current, np.array(normals), np.array(defects), 0.0, step)
    assert decision.changed is changed
    assert decision.threshold == pytest.approx(threshold, abs=1e-9)
    assert abs(decision.threshold - current) <= step * current + 1e-12
    with pytest.raises(ValueError, match="max_step"):
        recalibrated_threshold(current, np.array(normals), np.array(defects), 0.0, 0.0)

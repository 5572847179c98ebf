"""The shared retry schedule."""

from __future__ import annotations

import pytest

from linewatch.backoff import backoff_delay


@pytest.mark.parametrize(
    ("attempt", "minimum", "maximum", "expected"),
    [
        (0, 0.5, 30.0, 0.5),
        (1, 0.5, 30.0, 1.0),
        (2, 0.5, 30.0, 2.0),
        (5, 0.5, 30.0, 16.0),
        (6, 0.5, 30.0, 30.0),
        (1000, 0.5, 30.0, 30.0),  # no overflow for a camera that has been gone for days
        (0, 2.0, 2.0, 2.0),
        (3, 1.0, 5.0, 5.0),
    ],
)
def test_backoff_delay_doubles_from_minimum_and_caps(attempt: int, minimum: float, maximum: float, expected: float):
    assert backoff_delay(attempt, minimum, maximum) == pytest.approx(expected)


@pytest.mark.parametrize(("attempt", "minimum", "maximum"), [(-1, 0.5, 1.0), (0, 0.0, 1.0), (0, 2.0, 1.0)])
def test_backoff_delay_rejects_bad_arguments(attempt: int, minimum: float, maximum: float):
    with pytest.raises(ValueError):
        backoff_delay(attempt, minimum, maximum)

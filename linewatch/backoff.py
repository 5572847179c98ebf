"""Exponential backoff, the one retry schedule shared by camera reconnects and journal forwarders."""

from __future__ import annotations


def backoff_delay(attempt: int, minimum_s: float, maximum_s: float) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): minimum * 2**attempt, capped at maximum.

    The exponent is capped too, so a peer that has been gone for days never overflows the float.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if not 0 < minimum_s <= maximum_s:
        raise ValueError(f"need 0 < minimum_s <= maximum_s, got {minimum_s} and {maximum_s}")
    return min(maximum_s, minimum_s * 2.0 ** min(attempt, 64))

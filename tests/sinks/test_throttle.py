"""Wrong-token throttling per client: free tries, then lockouts that double, forgotten when quiet."""

from __future__ import annotations

import pytest

from linewatch.sinks import throttle as throttle_module
from linewatch.sinks.throttle import FREE_FAILURES, MAX_LOCK_S, AuthThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_free_tries_then_lockouts_that_double_up_to_the_cap() -> None:
    clock = Clock()
    guard = AuthThrottle(clock)
    for _ in range(FREE_FAILURES):
        assert guard.retry_after("10.0.0.9", "bearer") == 0
        guard.failed("10.0.0.9", "bearer")
    assert guard.retry_after("10.0.0.9", "bearer") == 0  # the free tries are used, no lockout yet
    locks = []
    for _ in range(12):
        guard.failed("10.0.0.9", "bearer")
        locks.append(guard.retry_after("10.0.0.9", "bearer"))
        clock.now += locks[-1]  # wait it out exactly, then fail again
    assert locks[:5] == [1.0, 2.0, 4.0, 8.0, 16.0] and locks[-1] == MAX_LOCK_S
    assert guard.retry_after("10.0.0.7", "bearer") == 0  # another address is not held back
    assert guard.failures["bearer"] == FREE_FAILURES + 12 and guard.refused["bearer"] == 12


def test_a_right_token_clears_the_record_but_not_a_running_lockout() -> None:
    clock = Clock()
    guard = AuthThrottle(clock)
    for _ in range(FREE_FAILURES + 1):
        guard.failed("a", "login")
    assert guard.retry_after("a", "login") == pytest.approx(1.0)  # the caller refuses even a right token now
    clock.now += 1.0
    guard.succeeded("a")
    for _ in range(FREE_FAILURES):
        guard.failed("a", "login")
    assert guard.retry_after("a", "login") == 0  # a fresh allowance after the success


def test_quiet_clients_are_forgotten_and_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    guard = AuthThrottle(clock)
    for _ in range(FREE_FAILURES):
        guard.failed("a", "bearer")
    clock.now += throttle_module.FORGET_S + 1
    guard.failed("a", "bearer")  # counted afresh: one failure, no lockout
    assert guard.retry_after("a", "bearer") == 0
    monkeypatch.setattr(throttle_module, "MAX_CLIENTS", 3)
    for _ in range(FREE_FAILURES + 1):
        guard.failed("locked", "bearer")
    assert guard.retry_after("locked", "bearer") > 0
    for index in range(3):  # three newer addresses push the quietest record out
        clock.now += 0.1
        guard.failed(f"spray-{index}", "bearer")
    assert guard.retry_after("locked", "bearer") == 0

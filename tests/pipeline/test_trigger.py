"""A trigger takes the next frame captured after it, in order; too many waiting are refused, stale ones expire."""

from __future__ import annotations

import pytest

from linewatch.pipeline.camera.trigger import MAX_PENDING, TriggerGate, TriggerRefused


def test_only_frames_captured_after_a_trigger_answer_it_in_trigger_order() -> None:
    gate = TriggerGate("cam0", expire_s=5.0)
    gate.trigger("P-1", now_mono=10.0)
    gate.trigger("P-2", now_mono=10.5)
    assert gate.take(captured_mono=9.9) is None  # already in flight when P-1 came: the previous part
    first = gate.take(captured_mono=10.2)
    assert first is not None and first.part_id == "P-1"
    assert gate.take(captured_mono=10.3) is None  # P-2 came later
    second = gate.take(captured_mono=10.6)
    assert second is not None and second.part_id == "P-2" and gate.pending() == 0


def test_too_many_waiting_triggers_are_refused_and_stale_ones_expire() -> None:
    gate = TriggerGate("cam0", expire_s=1.0)
    for n in range(MAX_PENDING):
        gate.trigger(f"P-{n}", now_mono=0.0)
    with pytest.raises(TriggerRefused, match=f"camera cam0 has {MAX_PENDING} triggers waiting"):
        gate.trigger("one more", now_mono=0.5)
    gate.trigger("fresh", now_mono=2.0)  # the old ones expired: room again
    assert gate.expired == MAX_PENDING and gate.pending() == 1
    taken = gate.take(captured_mono=2.1)
    assert taken is not None and taken.part_id == "fresh"
    assert not gate.wait(0.01)

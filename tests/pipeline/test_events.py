"""Episode tables: verdict sequences -> expected (type, seq, episode) messages; tick; policy validation."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta

import pytest

from linewatch.pipeline.events import EpisodePolicy, close, end_left_open, event_id_for, initial_state, step, tick
from linewatch.types import EndReason, EventType, Verdict, VerdictLabel

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
THRESHOLD = 0.5
NEW, UPDATE, END = EventType.NEW, EventType.UPDATE, EventType.END
D, N = True, False


def verdict(i: int, defect: bool, score: float, t: float, camera: str = "cam1") -> Verdict:
    return Verdict(
        inspection_id=f"{camera}-boot-{i}",
        camera=camera,
        product="plate",
        seq=i,
        frame_ts=T0 + timedelta(seconds=t),
        captured_mono=1000.0 + t,
        score=score,
        threshold=THRESHOLD,
        label=VerdictLabel.DEFECT if defect else VerdictLabel.NORMAL,
        model_version="v1",
        part_id=f"part-{i}",
    )


def run(rows, policy: EpisodePolicy) -> list[tuple[int, EventType, int, str]]:
    """Feed (defect, score, t) rows; returns (row index, type, seq, episode letter A, B, ...) per message."""
    state = initial_state()
    letters: dict[str, str] = {}
    out = []
    for i, (defect, score, t) in enumerate(rows):
        v = verdict(i, defect, score, t)
        state, events = step(state, v, policy, event_id_for)
        for e in events:
            if e.type is NEW:
                assert e.event_id == event_id_for(v)  # the id comes from the verdict that opened the episode
            letters.setdefault(e.event_id, "ABCDEFGH"[len(letters)])
            assert e.inspection_id == v.inspection_id  # every message carries the triggering verdict's data
            assert (e.score, e.label, e.frame_ts, e.part_id) == (v.score, v.label, v.frame_ts, v.part_id)
            out.append((i, e.type, e.seq, letters[e.event_id]))
    return out


DEFAULT = EpisodePolicy()  # n=2 of m=3, end after 5 s, update at most every 1 s

EPISODE_TABLE = [
    pytest.param([], DEFAULT, [], id="nothing"),
    pytest.param([(N, 0.1, 0), (N, 0.2, 1), (N, 0.1, 2)], DEFAULT, [], id="all-normal"),
    pytest.param([(D, 0.9, 0)], DEFAULT, [], id="single-defect"),
    pytest.param(
        [(D, 0.9, 0), (N, 0.1, 1), (N, 0.1, 2), (D, 0.9, 3), (N, 0.1, 4), (N, 0.1, 5), (D, 0.9, 6), (N, 0.1, 7)],
        DEFAULT,
        [],
        id="isolated-defects-never-open-2-of-3",
    ),
    pytest.param([(D, 0.8, 0), (D, 0.8, 0.1)], DEFAULT, [(1, NEW, 1, "A")], id="two-in-a-row"),
    pytest.param([(D, 0.8, 0), (N, 0.2, 0.1), (D, 0.8, 0.2)], DEFAULT, [(2, NEW, 1, "A")], id="two-of-three"),
    pytest.param([(D, 0.8, 0), (N, 0.2, 0.1), (N, 0.2, 0.2), (D, 0.8, 0.3)], DEFAULT, [], id="two-of-four-too-sparse"),
    pytest.param([(D, 0.8, 0)], EpisodePolicy(debounce_n=1, debounce_m=1), [(0, NEW, 1, "A")], id="n1-opens-at-once"),
    pytest.param(
        [(D, 0.8, 0), (D, 0.8, 0.1), (N, 0.2, 0.2), (D, 0.8, 0.3)],
        EpisodePolicy(debounce_n=3, debounce_m=3),
        [],
        id="three-of-three-broken-by-a-normal",
    ),
    pytest.param(
        [(D, 0.8, 0), (D, 0.8, 1), (N, 0.2, 2), (N, 0.2, 5.9), (N, 0.2, 6)],
        DEFAULT,
        [(1, NEW, 1, "A"), (4, END, 2, "A")],
        id="end-exactly-at-quiet-boundary",
    ),
    pytest.param(
        [(D, 0.8, 0), (D, 0.8, 1), (N, 0.2, 5.999)],
        DEFAULT,
        [(1, NEW, 1, "A")],
        id="no-end-just-before-boundary",
    ),
    pytest.param(
        [(D, 0.8, 0), (D, 0.8, 1), (N, 0.2, 3), (D, 0.7, 4), (N, 0.2, 8.5), (N, 0.2, 9)],
        DEFAULT,
        [(1, NEW, 1, "A"), (5, END, 2, "A")],
        id="a-defect-restarts-the-quiet-period",
    ),
    pytest.param(
        [
            (D, 0.6, 0),
            (D, 0.7, 0.5),  # new, peak 0.7
            (D, 0.9, 1.0),  # higher, but only 0.5 s since the last message
            (D, 0.95, 1.5),  # higher and 1 s since: update
            (D, 0.8, 3.0),  # lower: nothing
            (D, 0.95, 3.5),  # equal to the peak: nothing
            (D, 0.96, 3.6),  # higher, 2.1 s since: update
            (N, 0.2, 8.6),  # 5 s after the last defect: end
        ],
        DEFAULT,
        [(1, NEW, 1, "A"), (3, UPDATE, 2, "A"), (6, UPDATE, 3, "A"), (7, END, 4, "A")],
        id="update-only-when-worse-and-after-interval",
    ),
    pytest.param(
        [(D, 0.7, 0), (D, 0.8, 0.1), (D, 0.9, 0.2), (N, 0.95, 0.3)],
        EpisodePolicy(update_min_interval_s=0.0),
        [(1, NEW, 1, "A"), (2, UPDATE, 2, "A")],
        id="update-needs-a-defect-verdict",
    ),
    pytest.param(
        [(D, 0.8, 0), (D, 0.8, 1), (N, 0.2, 6), (D, 0.8, 7), (D, 0.9, 8)],
        DEFAULT,
        [(1, NEW, 1, "A"), (2, END, 2, "A"), (4, NEW, 1, "B")],
        id="new-episode-after-end-gets-new-id",
    ),
    pytest.param(
        [(D, 0.8, 0), (D, 0.8, 1), (N, 0.2, 6), (D, 0.8, 7)],
        DEFAULT,
        [(1, NEW, 1, "A"), (2, END, 2, "A")],
        id="after-end-debounce-again",
    ),
    pytest.param(
        [(D, 0.8, 0), (D, 0.8, 1), (D, 0.9, 10), (D, 0.9, 10.5)],
        DEFAULT,
        [(1, NEW, 1, "A"), (2, END, 2, "A"), (3, NEW, 1, "B")],
        id="defect-after-a-gap-ends-the-old-episode",
    ),
    pytest.param(
        [(D, 0.8, 0), (D, 0.9, 10)],
        EpisodePolicy(debounce_n=1, debounce_m=1),
        [(0, NEW, 1, "A"), (1, END, 2, "A"), (1, NEW, 1, "B")],
        id="gap-end-and-new-in-one-step",
    ),
]


@pytest.mark.parametrize(("rows", "policy", "expected"), EPISODE_TABLE)
def test_episode_table(rows, policy, expected) -> None:
    assert run(rows, policy) == expected


def test_replay_is_deterministic() -> None:
    rows = [(D, 0.8, 0), (D, 0.9, 1.5), (D, 0.95, 3), (N, 0.1, 9), (D, 0.8, 10), (D, 0.8, 11)]
    first, second = run(rows, DEFAULT), run(rows, DEFAULT)
    assert first == second
    assert [r[1] for r in first] == [NEW, UPDATE, END, NEW]


def test_state_is_immutable_and_tracks_the_episode() -> None:
    s0 = initial_state()
    s1, _ = step(s0, verdict(1, D, 0.8, 0), DEFAULT, event_id_for)
    assert s0 == initial_state()
    s2, events = step(s1, verdict(2, D, 0.85, 0.5), DEFAULT, event_id_for)
    assert [e.type for e in events] == [NEW]
    assert s2.event_id == event_id_for(verdict(2, D, 0.85, 0.5))
    assert (s2.seq, s2.peak_score, s2.started_at, s2.last_defect_at) == (
        1,
        0.85,
        T0 + timedelta(seconds=0.5),
        T0 + timedelta(seconds=0.5),
    )
    assert s2.recent == (True, True)
    with pytest.raises(FrozenInstanceError):
        s2.seq = 5  # type: ignore[misc]


def test_custom_event_id_factory() -> None:
    state = initial_state()
    for i, t in enumerate((0.0, 0.1)):
        state, events = step(state, verdict(i, D, 0.8, t), DEFAULT, lambda v: f"{v.camera}-{v.inspection_id}")
    assert events[0].event_id == "cam1-cam1-boot-1"


def test_event_id_for_is_stable_and_distinct() -> None:
    a = verdict(1, D, 0.8, 0)
    assert event_id_for(a) == event_id_for(verdict(1, D, 0.1, 99))  # same camera + inspection id
    assert event_id_for(a) != event_id_for(verdict(2, D, 0.8, 0))
    assert event_id_for(a) != event_id_for(verdict(1, D, 0.8, 0, camera="cam2"))
    assert len(event_id_for(a)) == 36


def test_step_refuses_another_cameras_verdict() -> None:
    state = initial_state()
    for i in range(2):
        state, _ = step(state, verdict(i, D, 0.8, i), DEFAULT, event_id_for)
    with pytest.raises(ValueError, match="camera"):
        step(state, verdict(3, D, 0.8, 2, camera="cam2"), DEFAULT, event_id_for)


def _open_episode():
    state = initial_state()
    for i, (defect, score, t) in enumerate([(D, 0.8, 0), (D, 0.9, 1), (N, 0.2, 2)]):
        state, _ = step(state, verdict(i, defect, score, t), DEFAULT, event_id_for)
    assert state.event_id is not None
    return state


def test_tick_ends_an_episode_without_verdicts() -> None:
    state = _open_episode()
    event_id = state.event_id
    same, events = tick(state, T0 + timedelta(seconds=5.999), DEFAULT)  # last defect at t=1
    assert (same, events) == (state, [])
    closed, events = tick(state, T0 + timedelta(seconds=6), DEFAULT)
    assert len(events) == 1
    end = events[0]
    assert (end.type, end.seq, end.event_id) == (END, 2, event_id)
    last = verdict(2, N, 0.2, 2)  # END copies the episode's last verdict
    assert (end.inspection_id, end.score, end.label, end.frame_ts) == (
        last.inspection_id,
        last.score,
        last.label,
        last.frame_ts,
    )
    assert closed.event_id is None and closed.seq == 0 and closed.recent == ()
    assert tick(closed, T0 + timedelta(seconds=60), DEFAULT) == (closed, [])  # ends once
    # a later episode needs the debounce again and gets a new id
    closed, events = step(closed, verdict(10, D, 0.8, 70), DEFAULT, event_id_for)
    assert events == []
    closed, events = step(closed, verdict(11, D, 0.8, 71), DEFAULT, event_id_for)
    assert [(e.type, e.seq) for e in events] == [(NEW, 1)]
    assert events[0].event_id != event_id


def test_tick_without_episode_does_nothing() -> None:
    state = initial_state()
    assert tick(state, T0 + timedelta(hours=1), DEFAULT) == (state, [])
    state, _ = step(state, verdict(1, D, 0.9, 0), DEFAULT, event_id_for)  # one defect: no episode
    assert tick(state, T0 + timedelta(hours=1), DEFAULT) == (state, [])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"debounce_n": 0}, "debounce_n"),
        ({"debounce_n": -1, "debounce_m": 3}, "debounce_n"),
        ({"debounce_n": 3, "debounce_m": 2}, "debounce_m"),
        ({"end_after_s": 0.0}, "end_after_s"),
        ({"end_after_s": -1.0}, "end_after_s"),
        ({"end_after_s": float("nan")}, "end_after_s"),
        ({"update_min_interval_s": -0.5}, "update_min_interval_s"),
    ],
)
def test_invalid_policies(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        EpisodePolicy(**kwargs)


def test_valid_edge_policies() -> None:
    assert EpisodePolicy(debounce_n=1, debounce_m=1, end_after_s=0.001, update_min_interval_s=0.0).debounce_m == 1
    assert EpisodePolicy(debounce_n=3, debounce_m=3).debounce_n == 3


def test_every_end_says_why_the_episode_ended() -> None:
    """Issue 15, item 4: quiet ends (by a verdict or a tick) say quiet; close() ends an open episode now
    (a clean stop) and end_left_open() ends one a crash left open, from its last journaled message."""
    state = _open_episode()
    _, by_tick = tick(state, T0 + timedelta(seconds=6), DEFAULT)
    _, by_verdict = step(state, verdict(3, N, 0.1, 6), DEFAULT, event_id_for)
    assert [e.end_reason for e in (*by_tick, *by_verdict)] == [EndReason.QUIET, EndReason.QUIET]

    closed, ends = close(state, EndReason.STOPPED)
    assert [(e.type, e.seq, e.event_id, e.end_reason) for e in ends] == [(END, 2, state.event_id, EndReason.STOPPED)]
    assert ends[0].inspection_id == verdict(2, N, 0.2, 2).inspection_id  # copies the episode's last verdict
    assert not closed.is_open and close(closed, EndReason.STOPPED) == (closed, [])

    _, opened = step(initial_state(), verdict(0, D, 0.8, 0), EpisodePolicy(debounce_n=1, debounce_m=1), event_id_for)
    end = end_left_open(opened[0])
    assert (end.type, end.seq, end.end_reason, end.frame_ts) == (END, 2, EndReason.RESTARTED, opened[0].frame_ts)
    assert opened[0].end_reason is None
    with pytest.raises(ValueError, match="has ended already"):
        end_left_open(end)

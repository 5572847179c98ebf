"""The journal stays bounded: delivered records age out; under disk pressure the oldest go regardless."""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from pathlib import Path

import pytest

from linewatch.clock import FakeClock
from linewatch.daemon.housekeeping import JournalKeeper, journal_watermark_bytes, undelivered_to_drop
from linewatch.pipeline.journal.outbox import Journal
from linewatch.types import EventType, Label, LabelTarget, VerdictLabel
from tests.pipeline.test_journal import make_event, make_verdict


@pytest.mark.parametrize(
    ("free", "appended", "expected"),
    [(2000, 50, 0), (1000, 50, 0), (999, 50, 50), (0, 0, 1), (10, 7, 7)],
)
def test_undelivered_records_are_dropped_only_below_the_watermark(free: int, appended: int, expected: int) -> None:
    assert undelivered_to_drop(free, 1000, appended) == expected


def test_prune_delivered_respects_age_and_the_slowest_running_forwarder(tmp_path: Path) -> None:
    clock = FakeClock()
    with Journal(tmp_path / "j.sqlite3", clock) as journal:
        for name in ("db", "mqtt", "retired"):
            journal.register_forwarder(name)
        journal.append_batch([make_verdict(i) for i in range(1, 5)], [])  # positions 1-4, old
        clock.advance(3600)
        journal.append_batch([make_verdict(5)], [])  # position 5, recent
        journal.mark_done("db", 5)
        journal.mark_done("mqtt", 3)
        cutoff = clock.now() - timedelta(minutes=30)
        assert journal.prune_delivered(cutoff, ["db", "mqtt"]) == 3  # 1-3: old and passed by both
        assert journal.prune_delivered(cutoff, ["db", "mqtt"]) == 0
        journal.mark_done("mqtt", 5)
        assert journal.prune_delivered(cutoff, ["db", "mqtt"]) == 1  # 4; 5 is too recent
        assert journal.head() == 5 and journal.count() == 1  # the head survives pruning
        assert journal.append_batch([make_verdict(6)], []) == [6]  # positions never reused
        assert journal.backlogs() == {"db": 1, "mqtt": 1, "retired": 2}  # a retired cursor pins nothing


def test_keeper_drops_the_oldest_undelivered_records_only_while_the_disk_is_low(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    free = {"bytes": 10**9}
    with Journal(tmp_path / "j.sqlite3", clock) as journal:
        journal.register_forwarder("db")  # the store is down: nothing is ever delivered
        journal.append_batch([make_verdict(i) for i in range(1, 11)], [])
        keeper = JournalKeeper(journal, clock, ["db"], 7, min_free_bytes=10**6, free_bytes=lambda: free["bytes"])
        journal.append_batch([make_verdict(i) for i in range(11, 14)], [])
        keeper.run_once()
        assert journal.count() == 13 and keeper.stats.dropped_undelivered == 0
        free["bytes"] = 10
        journal.append_batch([make_verdict(i) for i in range(14, 18)], [])
        with caplog.at_level(logging.WARNING, logger="linewatch.daemon.housekeeping"):
            keeper.run_once()
        assert keeper.stats.dropped_undelivered == 4  # as many as arrived since the last check
        assert [r.key for r in journal.read_after("db", 3)] == [f"cam1-boot-{i}" for i in (5, 6, 7)]
        assert "dropped 4 undelivered journal records {'normal_verdict': 4}" in caplog.text
        assert "'db': 13" in caplog.text
        keeper.run_once()  # still low, nothing new arrived: one more goes, so the file cannot grow
        assert keeper.stats.dropped_undelivered == 5 and journal.count() == 12


def test_keeper_survives_a_failing_journal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal(tmp_path / "j.sqlite3", FakeClock())
    keeper = JournalKeeper(journal, FakeClock(), ["nobody"], keep_days=1, min_free_bytes=0, free_bytes=lambda: 1)
    with caplog.at_level(logging.WARNING, logger="linewatch.daemon.housekeeping"):
        keeper.run_once()  # unknown forwarder: a JournalError, counted, not raised
        keeper.run_once()
    assert keeper.stats.failures == 2 and caplog.text.count("journal housekeeping failed") == 1
    journal.close()


def test_backlogs_stay_exact_through_pruning(tmp_path: Path) -> None:
    """The backlog is computed in constant time from the head and the oldest position; seeded random
    appends, deliveries and both kinds of pruning must keep it equal to counting the records."""
    rng = random.Random(7)
    clock = FakeClock()
    with Journal(tmp_path / "j.sqlite3", clock) as journal:
        for name in ("db", "mqtt"):
            journal.register_forwarder(name)
        seq = 0
        for _ in range(60):
            action = rng.choice(["append", "append", "deliver", "prune_for_space", "prune_delivered"])
            if action == "append":  # a mix of normal and defect verdicts: pruning for space leaves holes
                labels = [rng.choice([VerdictLabel.NORMAL, VerdictLabel.DEFECT]) for _ in range(rng.randint(1, 5))]
                batch = [make_verdict(seq + i + 1, label=label) for i, label in enumerate(labels)]
                seq += len(batch)
                journal.append_batch(batch, [])
            elif action == "deliver":
                name = rng.choice(["db", "mqtt"])
                journal.mark_done(name, rng.randint(journal.cursor(name), journal.head()))
            elif action == "prune_for_space":
                journal.prune_for_space(rng.randint(1, 4), ["db", "mqtt"])
            else:
                journal.prune_delivered(clock.now() + timedelta(seconds=1), ["db", "mqtt"])
            clock.advance(1)
            counted = {name: sum(1 for r in journal.read_after(name, 100_000)) for name in ("db", "mqtt")}
            assert journal.backlogs() == counted
            assert all(journal.backlog(name) == counted[name] for name in counted)


def test_pruning_for_space_keeps_what_matters_longest_and_backlogs_stay_exact(tmp_path: Path) -> None:
    """Issue 15, item 3: delivered records go first, then undelivered normal verdicts, defect verdicts,
    episode messages, and operator labels last; the holes they leave are not counted in any backlog."""
    clock = FakeClock()
    label = Label("lab-1", LabelTarget.INSPECTION, "cam1-boot-1", "cam1", VerdictLabel.NORMAL, "web", clock.now())
    with Journal(tmp_path / "j.sqlite3", clock) as journal:
        journal.register_forwarder("db")
        journal.register_forwarder("mqtt")
        journal.append_batch([make_verdict(i) for i in (1, 2)], [])  # 1-2: delivered everywhere
        journal.mark_done("db", 2)
        journal.mark_done("mqtt", 2)
        normal = [make_verdict(i) for i in (3, 4)]
        defect = [make_verdict(i, label=VerdictLabel.DEFECT) for i in (5, 6)]
        journal.append_batch([normal[0], defect[0]], [make_event("ev-1", 1)], [label])  # 3-6
        journal.append_batch([defect[1], normal[1]], [make_event("ev-1", 2, type=EventType.END)])  # 7-9
        assert journal.backlogs() == {"db": 7, "mqtt": 7}
        steps = [journal.prune_for_space(n, ["db", "mqtt"]) for n in (3, 2, 2, 1, 1)]
        assert steps == [
            {"delivered": 2, "normal_verdict": 1},
            {"normal_verdict": 1, "defect_verdict": 1},
            {"defect_verdict": 1, "event": 1},
            {"event": 1},
            {"label": 1},
        ]
        assert journal.count() == 0 and journal.backlogs() == {"db": 0, "mqtt": 0}
        journal.append_batch([make_verdict(10)], [])
        assert journal.backlogs() == {"db": 1, "mqtt": 1}
        assert [r.key for r in journal.read_after("db", 10)] == ["cam1-boot-10"]


@pytest.mark.parametrize(
    ("configured_mb", "volume", "expected"),
    [
        (None, 8 * 10**9, 160 * 10**6),  # a small card: 2 % of it, not a fixed GiB it may never have free
        (None, 2 * 10**12, 1024 * 2**20),  # a big disk: at most 1 GiB
        (64.0, 8 * 10**9, 64 * 2**20),  # configured wins
        (0.0, 8 * 10**9, 0),
    ],
)
def test_the_default_watermark_fits_the_volume(configured_mb: float | None, volume: int, expected: int) -> None:
    assert journal_watermark_bytes(configured_mb, volume) == expected

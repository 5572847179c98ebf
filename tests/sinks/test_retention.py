"""Tests for linewatch.sinks.retention: the pure plan (tables) and the sweeper on a real folder tree."""

from __future__ import annotations

import logging
import os
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from linewatch.clock import FakeClock
from linewatch.sinks.evidence import evidence_paths
from linewatch.sinks.retention import (
    EvidenceItem,
    RetentionSweeper,
    SweepResult,
    disk_free_bytes,
    plan_retention,
)
from linewatch.types import VerdictLabel

NORMAL, DEFECT = VerdictLabel.NORMAL, VerdictLabel.DEFECT
NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
DAY_S = 86400.0
HOUR = timedelta(hours=1)

# ---------------------------------------------------------------- plan_retention (pure)


def item(inspection_id: str, verdict: VerdictLabel, age_h: float, size: int = 100) -> EvidenceItem:
    files = (Path(f"{inspection_id}-{verdict}.jpg"), Path(f"{inspection_id}-{verdict}-heatmap.jpg"))
    return EvidenceItem(inspection_id, verdict, NOW - age_h * HOUR, files, size)


ITEMS = [
    item("n-old", NORMAL, 50),
    item("n-mid", NORMAL, 30),
    item("n-new", NORMAL, 1),
    item("d-old", DEFECT, 60),
    item("d-new", DEFECT, 2),
    item("p-old", NORMAL, 70),  # protected: a confirmed normal not yet used by retraining
    item("p-new", DEFECT, 3),  # protected too (an operator confirmed a false alarm as normal)
]
PROTECTED = {"p-old", "p-new"}


def ids(plan: list[EvidenceItem]) -> list[str]:
    return [i.inspection_id for i in plan]


@pytest.mark.parametrize(
    ("max_age_h", "free", "min_free", "expected"),
    [
        # age only (plenty of space): older than max age goes, oldest first, protected stay whatever their age
        (48, 10_000, 1_000, ["d-old", "n-old"]),
        (100, 10_000, 1_000, []),
        (0.5, 10_000, 1_000, ["d-old", "n-old", "n-mid", "d-new", "n-new"]),
        # watermark: normals oldest first, then defects oldest first
        (None, 950, 1_000, ["n-old"]),
        (None, 750, 1_000, ["n-old", "n-mid", "n-new"]),
        (None, 650, 1_000, ["n-old", "n-mid", "n-new", "d-old"]),
        (None, 550, 1_000, ["n-old", "n-mid", "n-new", "d-old", "d-new"]),
        # last resort: protected items go only after everything else, oldest first
        (None, 450, 1_000, ["n-old", "n-mid", "n-new", "d-old", "d-new", "p-old"]),
        (None, 0, 1_000, ["n-old", "n-mid", "n-new", "d-old", "d-new", "p-old", "p-new"]),
        # exactly at the watermark is enough
        (None, 1_000, 1_000, []),
        # age-based deletions count towards the projection: they free enough, nothing else goes
        (48, 800, 1_000, ["d-old", "n-old"]),
        # ... or not quite enough: then the watermark continues with the oldest remaining normal
        (48, 750, 1_000, ["d-old", "n-old", "n-mid"]),
    ],
)
def test_plan_table(max_age_h: float | None, free: int, min_free: int, expected: list[str]) -> None:
    max_age_s = None if max_age_h is None else max_age_h * 3600
    assert ids(plan_retention(ITEMS, NOW, max_age_s, free, min_free, PROTECTED)) == expected


def test_plan_recomputes_projection_with_real_sizes() -> None:
    items = [item("big", NORMAL, 5, size=900), item("small-old", NORMAL, 9, size=10), item("d", DEFECT, 10, size=500)]
    # oldest normal first although it frees little; the next normal is then enough
    assert ids(plan_retention(items, NOW, None, 200, 1_000, set())) == ["small-old", "big"]


def test_plan_deletes_items_whole() -> None:
    plan = plan_retention(ITEMS, NOW, None, 950, 1_000, PROTECTED)
    assert [len(i.files) for i in plan] == [2]
    assert {p.name for p in plan[0].files} == {"n-old-normal.jpg", "n-old-normal-heatmap.jpg"}


def test_plan_is_deterministic_on_ties_and_input_order() -> None:
    twins = [item("b", NORMAL, 5), item("a", NORMAL, 5), item("c", NORMAL, 5)]
    assert ids(plan_retention(twins, NOW, None, 0, 150, set())) == ["a", "b"]
    assert ids(plan_retention(reversed(twins), NOW, None, 0, 150, set())) == ["a", "b"]


@pytest.mark.parametrize(
    ("max_age_s", "min_free", "match"), [(0, 0, "max_age_s"), (-1, 0, "max_age_s"), (None, -1, "min_free")]
)
def test_plan_refuses_bad_limits(max_age_s: float | None, min_free: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_retention(ITEMS, NOW, max_age_s, 0, min_free, set())


# ---------------------------------------------------------------- sweeper on a real tree

CAPACITY = 100_000
MIN_FREE = 60_000


class Disk:
    """A fake filesystem size: capacity minus what is stored under root, so deleting files frees space."""

    def __init__(self, root: Path, capacity: int = CAPACITY) -> None:
        self.root, self.capacity = root, capacity

    def __call__(self) -> int:
        return self.capacity - sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


def put(root: Path, rel: str, size: int, mtime: datetime) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff" * size)
    os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


def put_evidence(
    root: Path, camera: str, inspection_id: str, verdict: VerdictLabel, taken: datetime, size: int = 5_000
) -> tuple[Path, Path]:
    paths = evidence_paths(camera, taken, inspection_id, verdict)
    return put(root, paths.snapshot, size, taken), put(root, paths.heatmap, size, taken)


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def make_sweeper(root: Path, disk: Disk, protected: object = frozenset(), max_age_days: float = 7) -> RetentionSweeper:
    protected_fn = protected if callable(protected) else (lambda: set(protected))  # type: ignore[arg-type]
    return RetentionSweeper(root, FakeClock(NOW), max_age_days * DAY_S, MIN_FREE, disk, protected_fn)


def test_sweep_by_age_removes_items_whole_and_tidies_folders(tmp_path: Path) -> None:
    put_evidence(tmp_path, "cam1", "cam1-b-1", NORMAL, NOW - timedelta(days=9))
    put_evidence(tmp_path, "cam1", "cam1-b-2", DEFECT, NOW - timedelta(days=8))
    keep = put_evidence(tmp_path, "cam1", "cam1-b-3", DEFECT, NOW - timedelta(days=1))
    put_evidence(tmp_path, "cam2", "cam2-b-1", DEFECT, NOW - timedelta(days=8))  # the camera's only evidence
    unknown = put(tmp_path, "cam3/2026-01-01/notes.txt", 10, NOW - timedelta(days=30))
    not_ours = put(tmp_path, "cam3/holiday/cam3-b-1-normal.jpg", 10, NOW - timedelta(days=30))
    stale_tmp = put(tmp_path, "cam1/2026-01-09/.cam1-b-3-defect.jpg.ab12cd.tmp", 77, NOW - timedelta(minutes=5))
    fresh_tmp = put(tmp_path, "cam1/2026-01-09/.cam1-b-4-defect.jpg.ef34ab.tmp", 77, NOW - timedelta(seconds=10))
    disk = Disk(tmp_path)
    free_before = disk()

    result = make_sweeper(tmp_path, disk).sweep()

    assert result == SweepResult(
        deleted_items=3,
        deleted_files=7,
        freed_bytes=6 * 5_000 + 77,
        free_after=free_before + 30_077,
        below_watermark=False,
    )
    assert tree(tmp_path) == {
        "cam1",
        "cam1/2026-01-09",
        *(p.relative_to(tmp_path).as_posix() for p in keep),
        fresh_tmp.relative_to(tmp_path).as_posix(),
        "cam3",
        "cam3/2026-01-01",
        unknown.relative_to(tmp_path).as_posix(),
        "cam3/holiday",
        not_ours.relative_to(tmp_path).as_posix(),
    }
    assert not stale_tmp.exists()


def test_sweep_enforces_the_watermark_normal_first_oldest_first(tmp_path: Path) -> None:
    # 10 items of 2 x 5 kB = 100 kB on a 100 kB + 15 kB disk: 15 kB free, the watermark wants 60 kB
    for hour in range(5):
        put_evidence(tmp_path, "cam1", f"cam1-b-n{hour}", NORMAL, NOW - (10 - hour) * HOUR)
        put_evidence(tmp_path, "cam1", f"cam1-b-d{hour}", DEFECT, NOW - (20 - hour) * HOUR)  # defects are older
    disk = Disk(tmp_path, capacity=115_000)
    assert disk() == 15_000

    result = make_sweeper(tmp_path, disk).sweep()

    # 45 kB short: 5 normals (50 kB) are enough, no defect is touched
    assert result == SweepResult(5, 10, 50_000, 65_000, below_watermark=False)
    left = {p.name for p in tmp_path.rglob("*.jpg")}
    assert left == {f"cam1-b-d{h}-defect{s}.jpg" for h in range(5) for s in ("", "-heatmap")}

    # more pressure: defects go next, oldest first
    disk.capacity = 95_000
    assert make_sweeper(tmp_path, disk).sweep() == SweepResult(2, 4, 20_000, 65_000, below_watermark=False)
    assert {p.name for p in tmp_path.rglob("*-defect.jpg")} == {f"cam1-b-d{h}-defect.jpg" for h in (2, 3, 4)}


def test_protected_evidence_survives_age_but_not_a_full_disk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    protected_files = put_evidence(tmp_path, "cam1", "cam1-b-p", NORMAL, NOW - timedelta(days=20))
    put_evidence(tmp_path, "cam1", "cam1-b-old", NORMAL, NOW - timedelta(days=20))
    put_evidence(tmp_path, "cam1", "cam1-b-d", DEFECT, NOW - timedelta(days=1))
    disk = Disk(tmp_path)

    assert make_sweeper(tmp_path, disk, {"cam1-b-p"}).sweep().deleted_items == 1  # only the unprotected old one
    assert all(p.exists() for p in protected_files)

    disk.capacity = 30_000  # 20 kB stored: 10 kB free, nothing but the protected item and the defect left
    with caplog.at_level(logging.WARNING, logger="linewatch.sinks.retention"):
        result = make_sweeper(tmp_path, disk, {"cam1-b-p"}).sweep()
    assert result == SweepResult(2, 4, 20_000, 30_000, below_watermark=True)  # the disk is full of other things
    assert not any(p.exists() for p in protected_files)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "deleted 1 protected" in messages and "still below" in messages
    assert tree(tmp_path) == set()  # empty date and camera folders removed


def test_unknown_protection_skips_age_but_keeps_the_watermark(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    put_evidence(tmp_path, "cam1", "cam1-b-old", DEFECT, NOW - timedelta(days=20))
    put_evidence(tmp_path, "cam1", "cam1-b-new", NORMAL, NOW - timedelta(days=1))

    def protected() -> set[str]:
        raise ConnectionError("store unreachable")

    disk = Disk(tmp_path)
    with caplog.at_level(logging.WARNING, logger="linewatch.sinks.retention"):
        assert make_sweeper(tmp_path, disk, protected).sweep().deleted_items == 0
    assert "store unreachable" in caplog.text and "watermark is still enforced" in caplog.text

    disk.capacity = 70_000  # 20 kB stored: 50 kB free, 10 kB short: the normal goes although it is newer
    assert make_sweeper(tmp_path, disk, protected).sweep() == SweepResult(1, 2, 10_000, 60_000, False)
    assert {p.name for p in tmp_path.rglob("*.jpg")} == {"cam1-b-old-defect.jpg", "cam1-b-old-defect-heatmap.jpg"}


def test_taken_at_is_the_mtime_clamped_to_the_date_folder(tmp_path: Path) -> None:
    # restored from a backup: mtime is now, but the folder says 20 days ago -> aged by the folder
    restored = put_evidence(tmp_path, "cam1", "cam1-b-r", NORMAL, NOW - timedelta(days=20))
    for path in restored:
        os.utime(path, (NOW.timestamp(), NOW.timestamp()))
    # written under a clock stuck in 1970, but the folder says yesterday -> kept
    skewed = put_evidence(tmp_path, "cam1", "cam1-b-s", NORMAL, NOW - timedelta(days=1))
    for path in skewed:
        os.utime(path, (0, 0))

    result = make_sweeper(tmp_path, Disk(tmp_path)).sweep()

    assert result.deleted_items == 1
    assert not any(p.exists() for p in restored) and all(p.exists() for p in skewed)


def test_missing_files_and_half_items_are_tolerated(tmp_path: Path) -> None:
    snapshot, heatmap = put_evidence(tmp_path, "cam1", "cam1-b-1", NORMAL, NOW - timedelta(days=9))
    lone = put(tmp_path, "cam1/2026-01-01/cam1-b-2-defect-heatmap.jpg", 5_000, NOW - timedelta(days=9))

    def protected() -> set[str]:  # runs between the scan and the deletions: an operator removes a file
        heatmap.unlink()
        return set()

    result = make_sweeper(tmp_path, Disk(tmp_path), protected).sweep()
    assert (result.deleted_items, result.deleted_files, result.freed_bytes) == (2, 2, 10_000)
    assert not snapshot.exists() and not lone.exists()
    assert tree(tmp_path) == set()


def test_sweep_of_a_missing_folder_does_nothing(tmp_path: Path) -> None:
    result = make_sweeper(tmp_path / "absent", Disk(tmp_path)).sweep()
    assert result == SweepResult(0, 0, 0, CAPACITY, below_watermark=False)


def test_run_sweeps_at_once_then_every_interval_and_survives_failures(tmp_path: Path) -> None:
    stop, calls = threading.Event(), []
    disk = Disk(tmp_path)

    def flaky_free_bytes() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("statvfs failed")  # the first sweep fails; the loop goes on
        if len(calls) >= 5:  # the third sweep's final reading
            stop.set()
        return disk()

    clock = FakeClock(NOW)
    sweeper = RetentionSweeper(tmp_path, clock, 7 * DAY_S, MIN_FREE, flaky_free_bytes, set)
    put_evidence(tmp_path, "cam1", "cam1-b-1", NORMAL, NOW - timedelta(days=6, hours=23, minutes=30))
    sweeper.run(stop, interval_s=3600)
    assert clock.now() == NOW + 2 * HOUR  # swept at start, after 1 h and after 2 h, then stopped
    assert not list(tmp_path.rglob("*.jpg"))  # aged out at the 1 h sweep


def test_disk_free_bytes_uses_the_nearest_existing_folder(tmp_path: Path) -> None:
    free = disk_free_bytes(tmp_path / "evidence" / "not" / "yet")
    assert free > 0
    assert abs(free - shutil.disk_usage(tmp_path).free) < 1 << 30


@pytest.mark.parametrize(("max_age_s", "min_free", "match"), [(0, 0, "max_age_s"), (1, -1, "min_free_bytes")])
def test_sweeper_refuses_bad_limits(tmp_path: Path, max_age_s: float, min_free: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetentionSweeper(tmp_path, FakeClock(NOW), max_age_s, min_free, lambda: 0, set)

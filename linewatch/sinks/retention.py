"""Evidence retention: delete by age, and by free-disk watermark so the disk never fills.

Verdict rows outlive images: only files under the evidence folder are touched, and the journal/DB keep
their (now dangling) paths. The decision is the pure :func:`plan_retention`; :class:`RetentionSweeper`
scans the layout written by linewatch/sinks/evidence.py, applies the plan and tidies up.

Policy, in order:

1. Age: every item older than ``max_age_s`` goes, except protected ones (confirmed normals that retraining
   has not used yet keep their evidence, whatever their age).
2. Watermark: while the projected free space (free bytes now + sizes of the items planned so far) is below
   ``min_free_bytes``: the oldest unprotected NORMAL evidence goes first (normals are sampled, cheap to
   replace and least interesting), then the oldest unprotected DEFECT evidence, and only as the very last
   resort protected items, oldest first. A full disk stops the journal and therefore inspection itself, so
   "the disk never fills" wins over keeping retraining material; the sweeper logs such deletions as a
   warning. If even that is not enough, the disk is filling with something else and the sweep says so
   (``below_watermark``).

An item is one inspection's snapshot and heatmap together: one without the other is of no use, so they are
planned, counted and deleted as a unit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from linewatch.clock import Clock
from linewatch.sinks.evidence import DATE_FORMAT, parse_evidence_name
from linewatch.types import VerdictLabel

logger = logging.getLogger(__name__)

STALE_TMP_S = 60.0  # write_image's temp files live milliseconds; one older than this is a crash's leftover
_DAY = timedelta(days=1)


@dataclass(frozen=True)
class EvidenceItem:
    """One inspection's evidence files. ``taken_at`` orders and ages items (see ``RetentionSweeper``)."""

    inspection_id: str
    verdict: VerdictLabel
    taken_at: datetime  # UTC, timezone-aware
    files: tuple[Path, ...]
    size_bytes: int
    camera: str = ""


def plan_retention(
    items: Iterable[EvidenceItem],
    now: datetime,
    max_age_s: float | None,
    free_bytes: int,
    min_free_bytes: int,
    protected: set[str],
) -> list[EvidenceItem]:
    """The items to delete, in deletion order (age-expired oldest first, then watermark victims in policy order).

    ``max_age_s=None`` skips age-based deletion (used when the protected set is unknown); ``protected`` holds
    inspection ids. Pure: no I/O, ``now`` and ``free_bytes`` are given.
    """
    if max_age_s is not None and not max_age_s > 0:
        raise ValueError(f"max_age_s must be > 0 or None, got {max_age_s}")
    if min_free_bytes < 0:
        raise ValueError(f"min_free_bytes must be >= 0, got {min_free_bytes}")
    remaining = sorted(items, key=lambda item: (item.taken_at, item.inspection_id))
    plan: list[EvidenceItem] = []
    if max_age_s is not None:
        cutoff = now - timedelta(seconds=max_age_s)
        plan = [item for item in remaining if item.taken_at < cutoff and item.inspection_id not in protected]
        remaining = [item for item in remaining if not (item.taken_at < cutoff and item.inspection_id not in protected)]

    projected = free_bytes + sum(item.size_bytes for item in plan)
    if projected >= min_free_bytes:
        return plan

    def rank(item: EvidenceItem) -> int:
        if item.inspection_id in protected:
            return 2
        return 0 if item.verdict is VerdictLabel.NORMAL else 1

    for item in sorted(remaining, key=rank):  # stable: oldest first within each rank
        if projected >= min_free_bytes:
            break
        plan.append(item)
        projected += item.size_bytes
    return plan


@dataclass(frozen=True)
class SweepResult:
    deleted_items: int
    deleted_files: int  # evidence files plus stale temp files
    freed_bytes: int
    free_after: int
    below_watermark: bool  # still below min_free_bytes after deleting all it could


def disk_free_bytes(path: Path) -> int:
    """Free bytes for unprivileged users on the filesystem holding ``path``, or its nearest existing parent
    (the evidence folder may not exist before the first write, yet the watermark must already apply)."""
    return disk_usage(path).free


def disk_usage(path: Path) -> Any:
    """``shutil.disk_usage`` of the filesystem holding ``path`` or its nearest existing parent."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path)


@dataclass
class _Scan:
    items: list[EvidenceItem]
    stale_tmp: list[tuple[Path, int]]
    date_dirs: list[Path]
    camera_dirs: list[Path]


class RetentionSweeper:
    """Applies :func:`plan_retention` to the evidence folder; one sweep at a time (its own thread via run).

    ``taken_at`` of an item: the latest mtime of its files (the write time, seconds after capture, gives an
    order within a day), clamped into the UTC day its date folder names. The folder date comes from the
    capture time and cannot drift, so files whose mtime was reset (restored from a backup, copied without
    preserving times) or stamped by a wrong clock are still aged within a day of the truth.
    """

    def __init__(
        self,
        root: Path,
        clock: Clock,
        max_age_s: float,
        min_free_bytes: int,
        free_bytes: Callable[[], int],
        protected: Callable[[], set[str]],
    ) -> None:
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must be >= 0, got {min_free_bytes}")
        self.root = Path(root)
        self._clock = clock
        self._max_age_s = max_age_s
        self._min_free = min_free_bytes
        self._free_bytes = free_bytes
        self._protected = protected
        self._failing = 0  # sweeps failed in a row: the first of a burst is logged with its traceback

    def sweep(self) -> SweepResult:
        now = self._clock.now()
        scan = self._scan(now)
        deleted_files = freed = 0
        for path, size in scan.stale_tmp:
            if _unlink(path):
                deleted_files += 1
                freed += size
        if scan.stale_tmp:
            logger.info("evidence: removed %d stale temp files (left by a crash)", len(scan.stale_tmp))

        max_age_s: float | None = self._max_age_s
        try:
            protected = set(self._protected())
        except Exception as exc:
            logger.warning(
                "evidence retention: cannot read the protected set (%s); skipping age-based deletion this sweep, "
                "the free-space watermark is still enforced",
                exc,
            )
            protected, max_age_s = set(), None

        plan = plan_retention(scan.items, now, max_age_s, self._free_bytes(), self._min_free, protected)
        sacrificed = 0
        for item in plan:
            for path in item.files:
                size = _size(path)
                if _unlink(path):
                    deleted_files += 1
                    freed += size
            sacrificed += item.inspection_id in protected
        if sacrificed:
            logger.warning(
                "evidence retention: disk below the watermark, deleted %d protected items (confirmed normals "
                "not yet used by retraining) as the last resort",
                sacrificed,
            )
        for folder in (*scan.date_dirs, *scan.camera_dirs):  # dates first, so their camera may become empty
            _remove_if_empty(folder)

        free_after = self._free_bytes()
        below = free_after < self._min_free
        if plan:
            logger.info("evidence retention: deleted %d items (%d bytes); %d bytes free", len(plan), freed, free_after)
        if below:
            logger.warning(
                "evidence retention: %d bytes free, still below the %d-byte watermark with %d evidence items left",
                free_after,
                self._min_free,
                len(scan.items) - len(plan),
            )
        return SweepResult(len(plan), deleted_files, freed, free_after, below)

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Sweep at once (a restart after a crash cleans up first), then every ``interval_s`` until ``stop``."""
        while True:
            try:
                self.sweep()
                self._failing = 0
            except Exception:  # a sweep must never end the loop: the next one may succeed
                self._failing += 1
                if self._failing == 1:
                    logger.exception("evidence retention sweep failed; retrying every %.0f s", interval_s)
            if self._clock.wait(interval_s, stop):
                return

    def _scan(self, now: datetime) -> _Scan:
        scan = _Scan([], [], [], [])
        for camera_dir in _subdirs(self.root):
            scan.camera_dirs.append(camera_dir)
            for date_dir in _subdirs(camera_dir):
                day = _folder_day(date_dir.name)
                if day is None:
                    continue  # not ours: never touched
                scan.date_dirs.append(date_dir)
                self._scan_day(camera_dir.name, date_dir, day, now, scan)
        return scan

    def _scan_day(self, camera: str, folder: Path, day: datetime, now: datetime, scan: _Scan) -> None:
        groups: dict[tuple[str, VerdictLabel], list[tuple[Path, os.stat_result]]] = {}
        for entry in _entries(folder):
            if not entry.is_file(follow_symlinks=False):
                continue
            stat = _stat(entry)
            if stat is None:
                continue
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                if (now - datetime.fromtimestamp(stat.st_mtime, UTC)).total_seconds() > STALE_TMP_S:
                    scan.stale_tmp.append((Path(entry.path), stat.st_size))
                continue
            name = parse_evidence_name(entry.name)
            if name is not None:
                groups.setdefault((name.inspection_id, name.verdict), []).append((Path(entry.path), stat))
        for (inspection_id, verdict), files in groups.items():
            mtime = datetime.fromtimestamp(max(stat.st_mtime for _, stat in files), UTC)
            taken_at = min(max(mtime, day), day + _DAY)
            paths = tuple(sorted(path for path, _ in files))
            size = sum(stat.st_size for _, stat in files)
            scan.items.append(EvidenceItem(inspection_id, verdict, taken_at, paths, size, camera))


def _folder_day(name: str) -> datetime | None:
    """Midnight UTC of a date folder's name; None unless it is exactly YYYY-MM-DD as the writer spells it."""
    try:
        day = datetime.strptime(name, DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None
    return day if day.strftime(DATE_FORMAT) == name else None


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    """A folder's entries; empty if it vanished or cannot be read (logged), so one bad folder never stops a sweep."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except FileNotFoundError:
        return []
    except OSError as exc:
        logger.warning("evidence retention: cannot list %s: %s", folder, exc)
        return []


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        Path(entry.path)
        for entry in _entries(folder)
        if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)
    )


def _stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat(follow_symlinks=False)
    except OSError:
        return None  # deleted meanwhile


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _unlink(path: Path) -> bool:
    """Delete one file; True if this call removed it. Missing files are fine (another sweep, an operator)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.warning("evidence retention: cannot delete %s: %s", path, exc)
        return False
    return True


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty (unknown files are kept, a write just landed) or already gone
        folder.rmdir()

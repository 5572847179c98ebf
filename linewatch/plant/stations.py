"""Stations: one verdict per part from the frame verdicts of the cameras that see it.

A station's part opens at its trigger (or, for a folder camera naming its parts, at the first frame of a new
part id) and is judged when every camera of the station has reported a frame with that part id: ``NOK`` if any
camera's verdict is a defect, else ``OK``. When the station's deadline passes first, the part is judged
``incomplete``, naming the cameras that did not report (and any defect already seen): a PLC should treat it
as a reject, since nobody looked at the whole part. A frame of a part already judged (it came after the
deadline) changes nothing and is counted as late.

Pure logic on a clock: :class:`StationTracker` is fed verdicts and asked for expired parts by its owner
(linewatch/daemon/parts.py), which journals the results and runs the deadline timer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from linewatch.clock import Clock
from linewatch.config import StationSection
from linewatch.types import PartResult, Verdict, VerdictLabel

REMEMBERED_PARTS = 256  # judged part ids kept per station, so a late frame does not open its part again


@dataclass
class _OpenPart:
    part_id: str
    triggered_mono: float
    deadline_mono: float
    waiting: set[str]  # cameras that have not reported yet
    verdicts: dict[str, Verdict] = field(default_factory=dict)


class StationTracker:
    """The open parts of every station; not thread-safe (its owner holds a lock)."""

    def __init__(self, stations: Sequence[StationSection], clock: Clock) -> None:
        self._clock = clock
        self._stations = {station.name: station for station in stations}
        self.station_of = {camera: station.name for station in stations for camera in station.cameras}
        self._open: dict[str, dict[str, _OpenPart]] = {name: {} for name in self._stations}
        self._judged: dict[str, deque[str]] = {name: deque(maxlen=REMEMBERED_PARTS) for name in self._stations}
        self.late_frames = 0  # frames of parts already judged

    def open(self, station: str, part_id: str) -> None:
        """A trigger: the part is expected from every camera of ``station``. Raises ValueError for a part id
        that is still open there (a trigger sent twice) or an unknown station."""
        if station not in self._stations:
            raise ValueError(f"no station {station!r}; the stations are {sorted(self._stations)}")
        if part_id in self._open[station]:
            raise ValueError(f"part {part_id!r} is still being inspected at station {station!r}")
        self._start(station, part_id)

    def _start(self, station: str, part_id: str) -> _OpenPart:
        now = self._clock.monotonic()
        section = self._stations[station]
        part = _OpenPart(part_id, now, now + section.deadline_ms / 1000, set(section.cameras))
        self._open[station][part_id] = part
        return part

    def observe(self, verdicts: Sequence[Verdict]) -> list[PartResult]:
        """Fold journaled frame verdicts in; the parts they complete, judged."""
        results: list[PartResult] = []
        for verdict in verdicts:
            station = self.station_of.get(verdict.camera)
            if station is None or verdict.part_id is None:
                continue
            part = self._open[station].get(verdict.part_id)
            if part is None:
                if verdict.part_id in self._judged[station]:
                    self.late_frames += 1
                    continue
                part = self._start(station, verdict.part_id)  # a folder camera's new part: no trigger before it
            part.verdicts.setdefault(verdict.camera, verdict)
            part.waiting.discard(verdict.camera)
            if not part.waiting:
                results.append(self._judge(station, part))
        return results

    def expire(self, everything: bool = False) -> list[PartResult]:
        """The parts whose deadline has passed (``everything``: all open parts, the daemon is stopping), judged
        ``incomplete``."""
        now = self._clock.monotonic()
        return [
            self._judge(station, part)
            for station, parts in self._open.items()
            for part in list(parts.values())
            if everything or part.deadline_mono <= now
        ]

    def next_deadline(self) -> float | None:
        """The monotonic time of the earliest deadline of an open part, None when no part is open."""
        deadlines = [part.deadline_mono for parts in self._open.values() for part in parts.values()]
        return min(deadlines, default=None)

    def open_parts(self, station: str) -> int:
        return len(self._open[station])

    def _judge(self, station: str, part: _OpenPart) -> PartResult:
        del self._open[station][part.part_id]
        self._judged[station].append(part.part_id)
        verdicts = [part.verdicts[camera] for camera in self._stations[station].cameras if camera in part.verdicts]
        defects = [v for v in verdicts if v.label is VerdictLabel.DEFECT]
        if part.waiting:
            verdict = "incomplete"
            missing = ", ".join(sorted(part.waiting))
            reason = f"no frame from {missing} within {self._stations[station].deadline_ms} ms"
            if defects:
                reason += "; defect on " + ", ".join(v.camera for v in defects)
        elif defects:
            verdict = "NOK"
            reason = "defect on " + ", ".join(f"{v.camera} (score {v.score:.4f} > {v.threshold:.4f})" for v in defects)
        else:
            verdict = "OK"
            reason = f"normal on all {len(verdicts)} cameras"
        relative = [v.score / v.threshold for v in verdicts if v.threshold > 0]
        return PartResult(
            station=station,
            part_id=part.part_id,
            verdict=verdict,
            score=max(relative, default=None),
            reason=reason,
            at=self._clock.now(),
            model_version=verdicts[0].model_version if verdicts else None,
            product=verdicts[0].product if verdicts else None,
            inspections=tuple(v.inspection_id for v in verdicts),
            triggered_mono=part.triggered_mono,
        )

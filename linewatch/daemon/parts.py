"""Triggers in, part verdicts out: the daemon's side of linewatch/plant/stations.py.

:class:`PartsDesk` holds the trigger gates of the triggered cameras, the stations' open parts and a deadline
thread. A trigger (MQTT ``<name>/trigger``, OPC UA's Trigger method) opens the part at its station and arms
each of the station's cameras; the App hands it every journaled batch of verdicts, and each part they
complete, or whose deadline passes, is journaled (so it reaches the store and ``<station>/part`` like any
record, after the frame verdicts it rests on) and announced to the listeners (OPC UA, metrics). It also
answers the OPC UA server's questions (:class:`linewatch.plant.parts.PlantControl`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC

from linewatch.clock import Clock
from linewatch.config import Config
from linewatch.pipeline.camera.trigger import TriggerGate, TriggerRefused
from linewatch.plant.stations import StationTracker
from linewatch.sinks.mqtt_commands import RejectedPayload
from linewatch.types import PART_VERDICTS, CameraStatus, PartResult, Verdict

log = logging.getLogger(__name__)
FREE_CAMERA_EXPIRY_S = 10.0  # a triggered camera outside any station: its trigger waits this long for a frame


class TriggerError(RejectedPayload, ValueError):
    """A trigger that cannot be taken: to MQTT a refused command (counted), to OPC UA a bad argument."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)


class PartsDesk:
    """Thread-safe: triggers come from the MQTT command worker and OPC UA, verdicts from the scorer thread."""

    def __init__(
        self,
        config: Config,
        clock: Clock,
        journal_parts: Callable[[list[PartResult]], None],
        camera_status: Callable[[str], CameraStatus | None],
    ) -> None:
        self._clock = clock
        self._journal_parts = journal_parts  # raises JournalError: the results are then logged, not lost silently
        self._camera_status = camera_status
        self._stations = {station.name: station for station in config.stations}
        self.tracker = StationTracker(config.stations, clock)
        deadlines = {camera: s.deadline_ms / 1000 for s in config.stations for camera in s.cameras}
        self.gates = {
            camera.name: TriggerGate(camera.name, deadlines.get(camera.name, FREE_CAMERA_EXPIRY_S))
            for camera in config.cameras
            if camera.trigger == "triggered"
        }
        self.listeners: list[Callable[[PartResult], None]] = []
        self.state_listeners: list[Callable[[str], None]] = []  # told a station's name when its state may change
        self._last: dict[str, PartResult] = {}
        self._counts = {name: dict.fromkeys(PART_VERDICTS, 0) for name in self._stations}
        self._serial = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._stations:
            self._thread = threading.Thread(target=self._watch_deadlines, name="stations", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """End the deadline thread, and judge the parts still open ``incomplete``: no triggered part goes
        unanswered because the daemon stopped (call after the scorer drained, before the journal closes)."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        for gate in self.gates.values():
            gate.wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            results = self.tracker.expire(everything=True)
        self._deliver(results)

    # ---- triggers --------------------------------------------------------------------------------
    def trigger(self, name: str, part_id: str | None, by: str) -> str:
        """Arm station or triggered camera ``name`` for part ``part_id`` (one is made when None); the part id."""
        now = self._clock.monotonic()
        with self._wake:
            if part_id is None:
                self._serial += 1
                part_id = f"{name}-{self._clock.now().astimezone(UTC):%Y%m%dT%H%M%S}-{self._serial}"
            if name in self._stations:
                cameras = self._stations[name].cameras
                try:
                    self.tracker.open(name, part_id)
                except ValueError as problem:
                    raise TriggerError("part_open", str(problem)) from None
                self._wake.notify_all()
            elif name in self.gates and name not in self.tracker.station_of:
                cameras = [name]
            elif name in self.tracker.station_of:
                station = self.tracker.station_of[name]
                raise TriggerError("in_a_station", f"camera {name!r} belongs to station {station!r}: trigger that")
            else:
                known = sorted([*self._stations, *self.gates])
                raise TriggerError("unknown_trigger", f"no station or triggered camera {name!r}; there are {known}")
        try:
            for camera in cameras:
                self.gates[camera].trigger(part_id, now)
        except TriggerRefused as problem:
            raise TriggerError("trigger_refused", str(problem)) from None
        log.debug("%s triggered for part %s by %s", name, part_id, by)
        if name in self._stations:
            self.state_changed(name)
        return part_id

    def state_changed(self, station: str) -> None:
        for listener in self.state_listeners:
            try:
                listener(station)
            except Exception:  # a listener (OPC UA) failing must not refuse the trigger
                log.exception("a station state listener failed on %s", station)

    # ---- verdicts in, parts out ---------------------------------------------------------------------
    def observe(self, verdicts: Sequence[Verdict]) -> None:
        """A journaled batch: the parts it completes are journaled after it and announced."""
        if not self._stations or not any(v.part_id for v in verdicts):
            return
        with self._lock:
            results = self.tracker.observe(verdicts)
        self._deliver(results)

    def _watch_deadlines(self) -> None:
        while not self._stop.is_set():
            with self._wake:
                deadline = self.tracker.next_deadline()
                wait = 1.0 if deadline is None else max(0.0, deadline - self._clock.monotonic())
                if wait > 0:
                    self._wake.wait(min(wait, 1.0))
                results = self.tracker.expire()
            self._deliver(results)

    def _deliver(self, results: list[PartResult]) -> None:
        if not results:
            return
        try:
            self._journal_parts(results)
        except Exception:  # the disk is full: say so per part, keep judging the next ones
            for result in results:
                log.error("part %s at %s: %s, NOT journaled", result.part_id, result.station, result.verdict)
            log.exception("journaling part verdicts failed")
        with self._lock:
            for result in results:
                self._last[result.station] = result
                self._counts[result.station][result.verdict] += 1
        for result in results:
            log.log(logging.INFO if result.verdict != "OK" else logging.DEBUG, "part %s at %s: %s (%s)",
                    result.part_id, result.station, result.verdict, result.reason)  # fmt: skip
            for listener in self.listeners:
                try:
                    listener(result)
                except Exception:  # a listener (OPC UA) failing must not stop the next part
                    log.exception("a part listener failed on part %s", result.part_id)
        for station in {result.station for result in results}:
            self.state_changed(station)

    # ---- what OPC UA asks (PlantControl, with the App's product and acknowledge calls) -----------------
    def stations(self) -> list[str]:
        return list(self._stations)

    def station_cameras(self, station: str) -> list[str]:
        if station not in self._stations:
            raise ValueError(f"no station {station!r}; the stations are {sorted(self._stations)}")
        return list(self._stations[station].cameras)

    def station_state(self, station: str) -> str:
        """``error`` while a camera of the station is not online, ``running`` while a part is open, else ``ready``."""
        cameras = self.station_cameras(station)
        if any(self._camera_status(camera) is not CameraStatus.ONLINE for camera in cameras):
            return "error"
        with self._lock:
            return "running" if self.tracker.open_parts(station) else "ready"

    def last_part(self, station: str) -> PartResult | None:
        self.station_cameras(station)
        with self._lock:
            return self._last.get(station)

    def part_counts(self, station: str) -> dict[str, int]:
        self.station_cameras(station)
        with self._lock:
            return dict(self._counts[station])


class PlantAdapter:
    """:class:`linewatch.plant.parts.PlantControl` for the OPC UA server: the desk's answers, and a station's
    product changeover and acknowledgement through the App's own calls (recorded like the page's)."""

    def __init__(
        self,
        desk: PartsDesk,
        products: Callable[[], list[str]],
        select_product: Callable[[str, str, str], None],
        record_action: Callable[[str, str, str | None, str | None], None],
    ) -> None:
        self._desk = desk
        self._products = products
        self._select_product = select_product
        self._record_action = record_action
        self.stations = desk.stations
        self.station_state = desk.station_state
        self.last_part = desk.last_part
        self.part_counts = desk.part_counts

    def products(self) -> list[str]:
        return self._products()

    def trigger(self, station: str, part_id: str | None, by: str) -> None:
        self._desk.station_cameras(station)  # OPC UA triggers stations only
        self._desk.trigger(station, part_id, by)

    def select_product(self, station: str, product: str, by: str) -> None:
        for camera in self._desk.station_cameras(station):
            try:
                self._select_product(camera, product, by)
            except RejectedPayload as problem:
                raise ValueError(problem.detail or problem.reason) from None

    def acknowledge(self, station: str, by: str) -> None:
        last = self._desk.last_part(station)
        detail = f"{last.part_id}: {last.verdict}" if last is not None else "no part yet"
        self._record_action("nok_acknowledged", by, None, f"{station} {detail}")

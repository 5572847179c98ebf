"""Parts: what a plant judges, where linewatch judges frames. The values every plant-floor channel shares
(MQTT ``<station>/part``, the store, OPC UA) and the protocol the OPC UA server asks the daemon through.

A station groups the cameras that see the same part. A trigger (MQTT, OPC UA, a folder file's name) takes the
next frame of each of its cameras, tagged with the part id; the part's verdict is the worst of its cameras'
verdicts once all have reported, or ``incomplete`` when the station's deadline passed first.
"""

from __future__ import annotations

from typing import Protocol

from linewatch.types import PART_VERDICTS, PartResult

STATION_STATES = ("ready", "running", "error")
__all__ = ["PART_VERDICTS", "STATION_STATES", "PartResult", "PlantControl"]  # PartResult: shared, in types.py


class PlantControl(Protocol):
    """What the OPC UA server reads from and asks of the running daemon (the App answers). Every call is
    thread-safe; the asking calls raise ValueError with a sentence naming what was wrong."""

    def stations(self) -> list[str]: ...

    def products(self) -> list[str]: ...  # the products of the model in service

    def station_state(self, station: str) -> str: ...  # STATION_STATES

    def last_part(self, station: str) -> PartResult | None: ...

    def part_counts(self, station: str) -> dict[str, int]: ...  # per PART_VERDICTS, since the daemon started

    def trigger(self, station: str, part_id: str | None, by: str) -> None: ...

    def select_product(self, station: str, product: str, by: str) -> None: ...  # every camera of the station

    def acknowledge(self, station: str, by: str) -> None: ...  # an operator saw the last NOK

"""Recipe changeover: which product each camera inspects, changed at run time and kept across restarts.

A changeover (MQTT ``<camera>/product/set``, the page) takes effect with the camera's next frame: frames
already captured keep the product they were captured under, so every frame is scored against the recipe that
was running when it was taken. The choice is written to ``<data_dir>/products.json``: a restart keeps the line
on the product the PLC or the operator last selected, instead of silently going back to the config's, whose
thresholds would then judge the wrong parts.

Unless the config was edited since: each remembered choice notes the config's product at the time, and when
the config now names another product, someone changed it on purpose and the config wins (logged). A choice the
model no longer knows (a retrain or rollback to a model without that product) also falls back to the config.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from linewatch.sinks.mqtt_commands import RejectedPayload

log = logging.getLogger(__name__)

SELECTIONS_FILE = "products.json"


class UnknownProduct(RejectedPayload):
    """A changeover to a product the model in service cannot score (or on a camera that does not exist): to
    MQTT a refused command like any other (counted as ``unknown_product``), to the page a message."""

    def __init__(self, detail: str) -> None:
        super().__init__("unknown_product", detail)


@dataclass(frozen=True)
class Selection:
    product: str
    config_product: str  # the config's product when the choice was made
    by: str
    at: str  # UTC ISO 8601


class ProductSelections:
    """The remembered choices; written atomically (temporary file, fsync, rename) at every changeover."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved = self._load()

    def _load(self) -> dict[str, Selection]:
        try:
            document = json.loads(self.path.read_text())
            return {camera: Selection(**fields) for camera, fields in document.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as problem:
            log.warning("%s unreadable (%s): every camera starts on its configured product", self.path, problem)
            return {}

    def start_product(self, camera: str, config_product: str, known: list[str]) -> str:
        """The product ``camera`` starts on: the remembered choice while it still applies, else the config's."""
        saved = self._saved.get(camera)
        if saved is None or saved.product == config_product:
            return config_product
        if saved.config_product != config_product:
            log.info("camera %s: the config now names %r; the changeover to %r (%s, %s) no longer applies",
                     camera, config_product, saved.product, saved.by, saved.at)  # fmt: skip
            return config_product
        if saved.product not in known:
            log.warning("camera %s: changed over to %r (%s), which the model in service does not know; back on %r",
                        camera, saved.product, saved.by, config_product)  # fmt: skip
            return config_product
        log.info("camera %s: on %r as changed over by %s at %s (the config says %r)",
                 camera, saved.product, saved.by, saved.at, config_product)  # fmt: skip
        return saved.product

    def remember(self, camera: str, selection: Selection) -> None:
        """Keep ``selection``; a failed write is logged: the changeover stands, only a restart would undo it."""
        self._saved[camera] = selection
        document = {name: asdict(saved) for name, saved in sorted(self._saved.items())}
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            with temporary.open("w") as file:
                json.dump(document, file, indent=1)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except OSError as problem:
            log.error("camera %s: changeover to %r not saved to %s (%s): a restart goes back to the config's product",
                      camera, selection.product, self.path, problem)  # fmt: skip

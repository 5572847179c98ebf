"""The model versions a scoring server holds: found by version id under its models folder, loaded on first
use, the least recently used dropped beyond a limit.

Lines name the version they score with (``NAME@HASH``, the registry's id); the server looks for a folder
``NAME`` at most three levels below its models folder (``models/<line>/<NAME>``, the registry layout, or
``models/<NAME>``) whose manifest hashes to ``HASH``. A folder of that name with another hash holds a
different model and is refused, never served under the wrong id. Folders get there by copying a line's
``models/<line>`` (rsync) or by sharing it; backbones are looked up in ``models/backbones`` as on a line PC.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from linewatch.anople.artifact import load_artifact
from linewatch.anople.files import MANIFEST, model_version
from linewatch.anople.graph import RemoteGraph, ScoringGraph
from linewatch.model.weights import backbone_loader

log = logging.getLogger(__name__)

TORCH_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class UnknownVersion(LookupError):
    """A request named a version this server cannot find or load; the message says where it looked."""


@dataclass(frozen=True)
class LoadedVersion:
    version: str
    path: Path
    products: list[str]
    input_size: int
    grid: int
    graph: RemoteGraph
    random_weights: bool

    def describe(self) -> dict[str, object]:
        return {
            "version": self.version,
            "products": self.products,
            "input_size": self.input_size,
            "grid": self.grid,
            "random_weights": self.random_weights,
        }


def find_version(root: Path, version: str) -> Path:
    """The folder under ``root`` holding ``version`` (``NAME@HASH``)."""
    name, separator, _digest = version.partition("@")
    if not separator or not name or "/" in name or name in {".", ".."}:
        raise UnknownVersion(f"{version!r} is not a model version id (NAME@HASH)")
    candidates = [root / name, *sorted(root.glob(f"*/{name}")), *sorted(root.glob(f"*/*/{name}"))]
    found = [path for path in candidates if (path / MANIFEST).is_file()]
    matching = [path for path in found if model_version(path) == version]
    if matching:
        return matching[0]
    if found:
        others = ", ".join(f"{path} is {model_version(path)}" for path in found)
        raise UnknownVersion(f"version {version} not under {root}: {others} (a different model of that name)")
    raise UnknownVersion(
        f"version {version} not under {root}: copy the line's models/<line>/{name} folder there (rsync) and ask again"
    )


class VersionCatalog:
    """Loaded versions on one device at one precision, the least recently used dropped beyond ``max_loaded``.
    Thread-safe (see :meth:`get`)."""

    def __init__(self, root: Path, device: str, precision: str, max_loaded: int, weights: Path | None = None) -> None:
        if precision not in TORCH_DTYPES:
            raise ValueError(f"precision must be one of {', '.join(TORCH_DTYPES)}, got {precision!r}")
        self.device = torch.device(device)
        if self.device.type == "cpu" and precision != "fp32":
            log.warning("precision %s on the CPU: PyTorch runs it slower than fp32 on most CPUs", precision)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        if max_loaded < 1:
            raise ValueError(f"max_loaded must be at least 1, got {max_loaded}")
        self.root = root
        self.precision = precision
        self.max_loaded = max_loaded
        self._load_backbone = backbone_loader(root, weights)
        self._loaded: OrderedDict[str, LoadedVersion] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}  # versions being loaded, each by one thread
        self._lock = threading.Lock()

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def get(self, version: str) -> LoadedVersion:
        """The loaded version, loading it first if need be. A load (seconds for a full-size model) holds only
        that version's lock: the other lines' versions keep scoring meanwhile, and two requests for the same
        new version load it once."""
        with self._lock:
            found = self._cached(version)
            if found is not None:
                return found
            loading = self._loading.setdefault(version, threading.Lock())
        with loading:
            with self._lock:
                found = self._cached(version)
            if found is not None:
                return found
            try:
                loaded = self._load(version)
            except BaseException:
                with self._lock:
                    self._loading.pop(version, None)
                raise
            with self._lock:  # cached before its lock goes: a request arriving now finds it, never loads again
                self._loaded[version] = loaded
                self._loading.pop(version, None)
                while len(self._loaded) > self.max_loaded:
                    dropped, _ = self._loaded.popitem(last=False)
                    log.info("dropped model %s (more than %d loaded)", dropped, self.max_loaded)
            return loaded

    def _cached(self, version: str) -> LoadedVersion | None:
        found = self._loaded.get(version)
        if found is not None:
            self._loaded.move_to_end(version)
        return found

    def _load(self, version: str) -> LoadedVersion:
        path = find_version(self.root, version)
        try:
            model, _info = load_artifact(path, self._load_backbone)
        except Exception as error:  # the artifact's own errors name the file; keep the version in front
            raise UnknownVersion(f"version {version} at {path} does not load: {error}") from error
        model = model.to(self.device).eval()
        graph = RemoteGraph(ScoringGraph(model)).to(self.device).eval()
        if model.backbone_spec.is_random:
            log.warning("model %s runs on RANDOM backbone weights: a demo model, not for real parts", version)
        log.info("loaded model %s from %s on %s %s", version, path, self.device, self.precision)
        return LoadedVersion(
            version, path, list(model.products), model.input_size, model.grid, graph, model.backbone_spec.is_random
        )

    def run(
        self, loaded: LoadedVersion, images: np.ndarray, product_ids: np.ndarray, left_out: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8, (B, 1), (B, 1) int64 -> (B, 1), (B, 1), (B, g, g) float32, as RemoteGraph."""
        dtype = TORCH_DTYPES[self.precision]
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            outputs = loaded.graph(
                torch.from_numpy(images).to(self.device, non_blocking=True),
                torch.from_numpy(product_ids).to(self.device),
                torch.from_numpy(left_out).to(self.device),
            )
        return tuple(output.float().cpu().numpy() for output in outputs)  # type: ignore[return-value]

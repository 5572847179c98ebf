"""Where a batch is scored: the PyTorch model in this process, its exported OpenVINO graph, or a scoring
server (:mod:`linewatch.pipeline.remote`).

All take the same (B, S, S, 3) uint8 frames, already resized to the model's input, and give image scores,
global probabilities and maps; each answers with the calibration that belongs to its scores. An OpenVINO
engine never sees a threshold fitted on PyTorch fp32 scores: its export calibrated its own
(:mod:`linewatch.model.export`).

Policy when an exported model does not compile or load on this CPU: the error names the model and the
CPU, and nothing falls back to PyTorch. At start the daemon refuses to run (a 4x slower scorer would
overflow the line's queues anyway, with thresholds of another precision); for a retrained or rolled-back
version the activation fails and the running version stays.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from linewatch.anople.artifact import ArtifactInfo
from linewatch.anople.calibrate import Calibration
from linewatch.anople.model import AnoPLe
from linewatch.model.preprocess import frames_to_tensor

log = logging.getLogger(__name__)

TORCH_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
OPENVINO_PRECISIONS = ("fp32", "bf16", "int8")

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]  # image score (B,), global probability (B,), map (B, S, S)


class Engine(Protocol):
    runtime: str
    precision: str

    def predict(self, frames: np.ndarray, product_ids: torch.Tensor) -> Outputs: ...

    def calibration(self, product: str) -> Calibration: ...


class TorchEngine:
    """The AnoPLe model on a torch device; bf16 and fp16 through autocast, on CUDA only."""

    runtime = "torch"

    def __init__(self, model: AnoPLe, info: ArtifactInfo, device: str = "cpu", precision: str = "fp32") -> None:
        if precision not in TORCH_PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(TORCH_PRECISIONS)}, got {precision!r}")
        torch_device = torch.device(device)
        if torch_device.type == "cpu" and precision != "fp32":
            raise ValueError(
                f"precision {precision!r} on the CPU needs runtime openvino (PyTorch bf16 on the CPU runs at a "
                'quarter of fp32\'s speed); use fp32, or [scoring] runtime = "openvino"'
            )
        if torch_device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        self.model = model.to(torch_device).eval()
        self.info = info
        self.device = torch_device
        self.precision = precision
        if self.model.text_cache is None:  # load_artifact and train already computed it
            self.model.refresh_text_cache()

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        dtype = TORCH_PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def predict(self, frames: np.ndarray, product_ids: torch.Tensor) -> Outputs:
        batch = frames_to_tensor(frames).to(self.device, non_blocking=True)
        with self._autocast():
            prediction = self.model.predict(batch, product_ids)
        return (
            prediction.image_score.float().cpu().numpy(),
            prediction.global_probability.float().cpu().numpy(),
            prediction.pixel_map.float().cpu().numpy(),
        )

    def calibration(self, product: str) -> Calibration:
        return self.info.products[product].calibration


class OpenVinoEngine:
    """An exported scoring graph compiled for this CPU, with the thresholds its export calibrated."""

    runtime = "openvino"

    def __init__(
        self, directory: Path, products: list[str], precision: str, models_dir: Path, weights: Path | None, threads: int
    ) -> None:
        from linewatch.anople.artifact import load_artifact
        from linewatch.model.export import CACHE_DIR, IR_FILE, current_export, export_dir, export_openvino
        from linewatch.model.openvino_graph import CompiledGraph
        from linewatch.model.weights import backbone_loader

        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"OpenVINO precision must be one of {', '.join(OPENVINO_PRECISIONS)}, got {precision!r}")
        record = current_export(directory, "openvino", precision)
        if record is None:
            log.warning(
                "model %s has no OpenVINO %s export of its current files: exporting it now (a full-size model "
                "takes minutes; `linewatch model export` does it ahead of time)",
                directory,
                precision,
            )
            model, info = load_artifact(directory, backbone_loader(models_dir, weights))
            record = export_openvino(directory, model, info, precision, log=log.info)
            del model
        target = export_dir(directory, "openvino", precision)
        self.compiled = CompiledGraph(target / IR_FILE, precision, target / CACHE_DIR, threads)
        self.record = record
        self.precision = precision
        unknown = sorted(set(products) - set(record.calibrations))
        if unknown:
            raise ValueError(f"{target}: the export has no thresholds for product(s) {unknown}; export again")

    def predict(self, frames: np.ndarray, product_ids: torch.Tensor) -> Outputs:
        return self.compiled.run(frames_to_tensor(frames).numpy(), product_ids.numpy())

    def calibration(self, product: str) -> Calibration:
        return self.record.calibrations[product]

"""Scores batches of RGB frames with a loaded AnoPLe artifact on the configured device and precision."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from linewatch.anople.artifact import ArtifactInfo, load_artifact
from linewatch.anople.model import AnoPLe
from linewatch.preprocess import to_model_tensor
from linewatch.weights import backbone_loader

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFECT = "defect"
NORMAL = "normal"


@dataclass(frozen=True)
class ScoredImage:
    product: str
    score: float
    threshold: float
    verdict: str  # "defect" when score > threshold, else "normal"
    global_probability: float
    pixel_map: np.ndarray  # (S, S) float32 at the model input size
    pixel_threshold: float


class Scorer:
    """Owns one model on one device. Text embeddings are cached at load; only the vision tower runs."""

    def __init__(self, model: AnoPLe, info: ArtifactInfo, device: str = "cpu", precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        torch_device = torch.device(device)
        if torch_device.type == "cpu" and precision != "fp32":
            raise ValueError(f"precision {precision!r} needs a CUDA device; use fp32 on the CPU")
        if torch_device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        self.model = model.to(torch_device).eval()
        self.info = info
        self.device = torch_device
        self.precision = precision
        self.model.refresh_text_cache()

    @classmethod
    def from_artifact(
        cls,
        directory: Path,
        models_dir: Path,
        device: str = "cpu",
        precision: str = "fp32",
        weights: Path | None = None,
    ) -> Scorer:
        model, info = load_artifact(directory, backbone_loader(models_dir, weights))
        return cls(model, info, device, precision)

    @property
    def products(self) -> list[str]:
        return self.model.products

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def score(self, images: Sequence[np.ndarray], products: Sequence[str]) -> list[ScoredImage]:
        """Score RGB uint8 images of any size as one batch; ``products[i]`` names image i's product."""
        if len(images) != len(products):
            raise ValueError(f"{len(images)} images but {len(products)} product names")
        if not images:
            return []
        product_ids = torch.tensor([self.model.product_index(p) for p in products])
        batch = to_model_tensor(images, self.model.input_size).to(self.device, non_blocking=True)
        with self._autocast():
            prediction = self.model.predict(batch, product_ids)
        scores = prediction.image_score.float().cpu().numpy()
        probabilities = prediction.global_probability.float().cpu().numpy()
        maps = prediction.pixel_map.float().cpu().numpy()
        results = []
        for index, product in enumerate(products):
            calibration = self.info.products[product].calibration
            score = float(scores[index])
            results.append(
                ScoredImage(
                    product=product,
                    score=score,
                    threshold=calibration.threshold,
                    verdict=DEFECT if score > calibration.threshold else NORMAL,
                    global_probability=float(probabilities[index]),
                    pixel_map=maps[index],
                    pixel_threshold=calibration.pixel_threshold,
                )
            )
        return results

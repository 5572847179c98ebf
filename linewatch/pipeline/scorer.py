"""Scores batches of RGB frames with a loaded AnoPLe artifact; the daemon's scoring thread and its OOM policy."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from linewatch.anople.artifact import ArtifactInfo, load_artifact, read_artifact
from linewatch.anople.backbone import BackboneSpec
from linewatch.anople.model import AnoPLe
from linewatch.clock import Clock
from linewatch.model.preprocess import resize_batch
from linewatch.model.weights import backbone_loader
from linewatch.pipeline.engines import Engine, OpenVinoEngine, TorchEngine
from linewatch.pipeline.remote import ScoringStopped
from linewatch.types import Batch, Verdict, VerdictLabel

log = logging.getLogger(__name__)

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
    """One model behind one engine (:mod:`linewatch.pipeline.engines`). Thresholds are the engine's own
    calibration unless the operator overrides them."""

    def __init__(
        self, engine: Engine, info: ArtifactInfo, products: list[str], backbone: BackboneSpec, input_size: int
    ) -> None:
        self.engine = engine
        self.info = info
        self.products = list(products)
        self.backbone_spec = backbone
        self.input_size = input_size
        self._threshold_overrides: dict[str, float] = {}

    @classmethod
    def for_model(cls, model: AnoPLe, info: ArtifactInfo, device: str = "cpu", precision: str = "fp32") -> Scorer:
        """A PyTorch scorer around a model already in memory (training, tests)."""
        engine = TorchEngine(model, info, device, precision)
        return cls(engine, info, model.products, model.backbone_spec, model.input_size)

    @classmethod
    def from_artifact(
        cls,
        directory: Path,
        models_dir: Path,
        device: str = "cpu",
        precision: str = "fp32",
        weights: Path | None = None,
        runtime: str = "torch",
    ) -> Scorer:
        """The model in ``directory`` on ``runtime``. OpenVINO uses the model's current export at
        ``precision``, exporting it first when there is none (the backbone weights are then needed once)."""
        if runtime == "torch":
            model, info = load_artifact(directory, backbone_loader(models_dir, weights))
            return cls.for_model(model, info, device, precision)
        if runtime != "openvino":
            raise ValueError(f"runtime must be torch or openvino, got {runtime!r}")
        if torch.device(device).type != "cpu":
            raise ValueError(f"runtime openvino scores on the CPU; device {device!r} needs runtime torch")
        summary = read_artifact(directory)
        engine = OpenVinoEngine(directory, summary.products, precision, models_dir, weights, torch.get_num_threads())
        return cls(engine, summary.info, summary.products, summary.backbone, summary.input_size)

    @property
    def runtime(self) -> str:
        return self.engine.runtime

    @property
    def precision(self) -> str:
        return self.engine.precision

    def product_index(self, product: str) -> int:
        try:
            return self.products.index(product)
        except ValueError:
            raise KeyError(f"unknown product {product!r}; this model knows {self.products}") from None

    def set_threshold_overrides(self, overrides: dict[str, float]) -> None:
        """Replace per-product thresholds set by the operator (config) instead of the calibrated ones.

        The dict is swapped whole, so a scoring thread sees either the old or the new set, never a mix.
        """
        unknown = sorted(set(overrides) - set(self.products))
        if unknown:
            raise KeyError(f"threshold for unknown product(s) {unknown}; this model knows {self.products}")
        self._threshold_overrides = dict(overrides)

    def threshold(self, product: str) -> float:
        override = self._threshold_overrides.get(product)
        return override if override is not None else self.engine.calibration(product).threshold

    def gate_threshold(self, product: str) -> float:
        """The threshold in PyTorch fp32 units, whatever the engine: retraining's gate scores the active and
        the candidate version with PyTorch fp32, so it judges the active one at its artifact's calibration."""
        override = self._threshold_overrides.get(product)
        return override if override is not None else self.info.products[product].calibration.threshold

    def score(self, images: Sequence[np.ndarray], products: Sequence[str]) -> list[ScoredImage]:
        """Score RGB uint8 images of any size as one batch; ``products[i]`` names image i's product."""
        if len(images) != len(products):
            raise ValueError(f"{len(images)} images but {len(products)} product names")
        if not images:
            return []
        product_ids = torch.tensor([self.product_index(p) for p in products])
        scores, probabilities, maps = self.engine.predict(resize_batch(images, self.input_size), product_ids)
        results = []
        for index, product in enumerate(products):
            score = float(scores[index])
            threshold = self.threshold(product)
            results.append(
                ScoredImage(
                    product=product,
                    score=score,
                    threshold=threshold,
                    verdict=DEFECT if score > threshold else NORMAL,
                    global_probability=float(probabilities[index]),
                    pixel_map=maps[index],
                    pixel_threshold=self.engine.calibration(product).pixel_threshold,
                )
            )
        return results


def relative_map(result: ScoredImage) -> np.ndarray:
    """The pixel map in units of the product's pixel threshold. A zero threshold (a calibration whose normals
    all scored 0) makes every positive pixel far above it, which is what that threshold says."""
    return result.pixel_map / max(result.pixel_threshold, float(np.finfo(np.float32).tiny))


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


def score_halving_on_oom(
    score: Callable[[list[np.ndarray], list[str]], list[ScoredImage]],
    images: list[np.ndarray],
    products: list[str],
    on_retry: Callable[[int], None] | None = None,
) -> list[ScoredImage]:
    """Score ``images``; when the device runs out of memory, split the batch in halves and retry each.

    A single image that still does not fit re-raises: nothing smaller can be tried. ``on_retry`` gets
    the size that failed, so the caller can count it.
    """
    try:
        return score(images, products)
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not _is_out_of_memory(error) or len(images) == 1:
            raise
        if on_retry is not None:
            on_retry(len(images))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(images) // 2
        return score_halving_on_oom(score, images[:half], products[:half], on_retry) + score_halving_on_oom(
            score, images[half:], products[half:], on_retry
        )


@dataclass
class WorkerStats:
    batches: int = 0
    frames: int = 0
    oom_retries: int = 0
    swaps: int = 0
    last_batch_seconds: float = 0.0


class ScoringWorker:
    """The scorer thread: batches in, verdicts out, the model swapped only between batches.

    ``next_batch(stop)`` blocks until a batch is cut (None when stopping with nothing left);
    ``on_scored(batch, verdicts, pixel_maps)`` must make the verdicts durable before it returns (the
    journal); the (S, S) pixel maps (relative to the pixel threshold) come along for the evidence writer.
    """

    def __init__(
        self,
        scorer: Scorer,
        model_version: str,
        next_batch: Callable[[threading.Event], Batch | None],
        on_scored: Callable[[Batch, list[Verdict], list[np.ndarray]], None],
        stop: threading.Event,
        clock: Clock,
        boot_id: str,
    ) -> None:
        self._scorer = scorer
        self._model_version = model_version
        self._next_batch = next_batch
        self._on_scored = on_scored
        self._stop = stop
        self._clock = clock
        self._boot_id = boot_id
        self._pending_swap: tuple[Scorer, str] | None = None
        self._swap_lock = threading.Lock()
        self.stats = WorkerStats()

    @property
    def model_version(self) -> str:
        return self._model_version

    @property
    def scorer(self) -> Scorer:
        return self._scorer

    def warm_up(self, batch_size: int, size: tuple[int, int] = (480, 640)) -> None:
        """Score grey frames once at the largest batch size, so the first real batch pays no allocation."""
        frame = np.full((*size, 3), 128, np.uint8)
        product = self._scorer.products[0]
        score_halving_on_oom(self._scorer.score, [frame] * batch_size, [product] * batch_size)

    def swap(self, scorer: Scorer, model_version: str) -> None:
        """Queue a new model; it takes over at the next batch boundary, no frame is scored twice or lost."""
        with self._swap_lock:
            self._pending_swap = (scorer, model_version)

    def _apply_swap(self) -> None:
        with self._swap_lock:
            pending, self._pending_swap = self._pending_swap, None
        if pending is not None:
            self._scorer, self._model_version = pending
            self.stats.swaps += 1

    def score_batch(self, batch: Batch) -> tuple[list[Verdict], list[np.ndarray]]:
        """Verdicts in frame order, and each frame's (S, S) pixel map relative to its product's pixel
        threshold (1.0 = the threshold), the scale the heatmaps are drawn on."""
        self._apply_swap()
        started = self._clock.monotonic()
        frames = list(batch.frames)

        def count_retry(_size: int) -> None:
            self.stats.oom_retries += 1

        images = [f.model_image if f.model_image is not None else f.image for f in frames]
        results = score_halving_on_oom(self._scorer.score, images, [f.product for f in frames], count_retry)
        verdicts = [
            Verdict(
                inspection_id=f"{frame.camera}-{self._boot_id}-{frame.seq}",
                camera=frame.camera,
                product=frame.product,
                seq=frame.seq,
                frame_ts=frame.captured_at,
                captured_mono=frame.captured_mono,
                score=result.score,
                threshold=result.threshold,
                label=VerdictLabel(result.verdict),
                model_version=self._model_version,
                part_id=frame.part_id,
            )
            for frame, result in zip(frames, results, strict=True)
        ]
        self.stats.batches += 1
        self.stats.frames += len(frames)
        self.stats.last_batch_seconds = self._clock.monotonic() - started
        return verdicts, [relative_map(result) for result in results]

    def run(self) -> None:
        """Until the batch source runs dry on stop: take a batch, score it, hand the verdicts on.

        ``next_batch`` keeps returning drain batches after stop until nothing is pending, then None.
        """
        while (batch := self._next_batch(self._stop)) is not None:
            scored = self.score_or_give_up(batch)
            if scored is not None:
                self._on_scored(batch, *scored)

    def score_or_give_up(self, batch: Batch) -> tuple[list[Verdict], list[np.ndarray]] | None:
        """:meth:`score_batch`, or None when the daemon stops while a scoring server that has no local
        fallback does not answer: those frames cannot be scored, and saying so beats hanging the stop."""
        try:
            return self.score_batch(batch)
        except ScoringStopped as error:
            log.error("%d frame(s) not scored: %s", len(batch.frames), error)
            return None

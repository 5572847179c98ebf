"""The scorer thread: OOM halving, verdicts from frames, model swaps only between batches."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import numpy as np
import pytest
import torch

from linewatch.anople.artifact import ArtifactInfo, ProductRecord
from linewatch.anople.calibrate import Calibration
from linewatch.anople.model import AnoPLe
from linewatch.clock import FakeClock
from linewatch.pipeline.scorer import ScoredImage, Scorer, ScoringWorker, relative_map, score_halving_on_oom
from linewatch.types import Batch, Frame, VerdictLabel
from tests.conftest import PRODUCT


def _fake_results(images: list[np.ndarray], products: list[str]) -> list[ScoredImage]:
    return [
        ScoredImage(p, float(image[0, 0, 0]), 0.5, "normal", 0.0, np.zeros((2, 2), np.float32), 0.5)
        for image, p in zip(images, products, strict=True)
    ]


def _images(count: int) -> list[np.ndarray]:
    return [np.full((4, 4, 3), index, np.uint8) for index in range(count)]


def test_out_of_memory_halves_the_batch_and_keeps_order() -> None:
    calls: list[int] = []

    def score(images: list[np.ndarray], products: list[str]) -> list[ScoredImage]:
        calls.append(len(images))
        if len(images) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return _fake_results(images, products)

    retries: list[int] = []
    results = score_halving_on_oom(score, _images(8), ["p"] * 8, retries.append)
    assert [r.score for r in results] == [float(i) for i in range(8)]
    assert calls == [8, 4, 2, 2, 4, 2, 2]
    assert retries == [8, 4, 4]


def test_single_image_out_of_memory_and_other_errors_propagate() -> None:
    def always_oom(images: list[np.ndarray], products: list[str]) -> list[ScoredImage]:
        raise RuntimeError("CUDA error: out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        score_halving_on_oom(always_oom, _images(4), ["p"] * 4)

    def broken(images: list[np.ndarray], products: list[str]) -> list[ScoredImage]:
        raise RuntimeError("shape mismatch")

    calls = []
    with pytest.raises(RuntimeError, match="shape mismatch"):
        score_halving_on_oom(lambda i, p: calls.append(1) or broken(i, p), _images(4), ["p"] * 4)
    assert calls == [1]  # not retried


def _scorer(model: AnoPLe, threshold: float) -> Scorer:
    calibration = Calibration(threshold, 0.5, 0.05, 0.05, 10, "held-out normals", None, 0)
    info = ArtifactInfo(products={PRODUCT: ProductRecord(PRODUCT, calibration)}, training={})
    return Scorer.for_model(model, info)


def _frames(camera: str, images: list[np.ndarray], first_seq: int = 1) -> tuple[Frame, ...]:
    start = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    return tuple(
        Frame(camera, first_seq + i, start, 1000.0 + i, image, PRODUCT, part_id=f"part-{i}")
        for i, image in enumerate(images)
    )


def test_worker_turns_batches_into_verdicts_and_swaps_between_batches(
    trained_model: AnoPLe, normal_images: list[np.ndarray], defect_images: list[np.ndarray]
) -> None:
    lenient, strict = _scorer(trained_model, threshold=1.0), _scorer(trained_model, threshold=-1.0)
    batches = [
        Batch(_frames("cam1", normal_images[4:6]), "full"),
        Batch(_frames("cam1", defect_images[:2], first_seq=3), "timeout"),
    ]
    stop = threading.Event()
    delivered: list[tuple[Batch, list]] = []
    worker: ScoringWorker

    def next_batch(event: threading.Event) -> Batch | None:
        if not batches:
            event.set()
            return None
        return batches.pop(0)

    def on_scored(batch: Batch, verdicts: list, pixel_maps: list) -> None:
        assert [m.shape for m in pixel_maps] == [(lenient.input_size,) * 2] * len(verdicts)
        delivered.append((batch, verdicts))
        if len(delivered) == 1:
            worker.swap(strict, "v2")  # arrives mid-run: must apply to the next batch only

    worker = ScoringWorker(lenient, "v1", next_batch, on_scored, stop, FakeClock(), boot_id="b1")
    worker.warm_up(batch_size=2, size=(48, 64))
    worker.run()
    assert [len(v) for _, v in delivered] == [2, 2]
    first, second = delivered[0][1], delivered[1][1]
    assert [v.inspection_id for v in first + second] == [f"cam1-b1-{seq}" for seq in (1, 2, 3, 4)]
    assert all(v.model_version == "v1" and v.label is VerdictLabel.NORMAL for v in first)
    assert all(v.model_version == "v2" and v.label is VerdictLabel.DEFECT for v in second)
    assert [v.part_id for v in first] == ["part-0", "part-1"]
    assert first[0].score == pytest.approx(lenient.score([normal_images[4]], [PRODUCT])[0].score, abs=1e-5)
    assert worker.stats.batches == 2 and worker.stats.frames == 4 and worker.stats.swaps == 1
    assert worker.model_version == "v2"


@pytest.mark.parametrize(
    ("pixel_threshold", "expected"),
    [(0.25, [[0.4, 1.0], [2.0, 0.0]]), (0.0, None)],
)
def test_maps_come_relative_to_the_pixel_threshold(pixel_threshold: float, expected: list[list[float]] | None) -> None:
    """The heatmaps are drawn on this scale: 1.0 is the product's pixel threshold."""
    pixel_map = np.array([[0.1, 0.25], [0.5, 0.0]], np.float32)
    result = ScoredImage("p", 0.3, 0.5, "normal", 0.1, pixel_map, pixel_threshold)
    relative = relative_map(result)
    if expected is not None:
        np.testing.assert_allclose(relative, expected, rtol=1e-6)
    else:  # a zero threshold: every positive pixel is far above it, zero stays zero
        assert (relative[pixel_map > 0] > 1e30).all() and relative[1, 1] == 0.0

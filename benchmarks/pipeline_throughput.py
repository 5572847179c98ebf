"""Whole-pipeline throughput and capture-to-journal latency against the scorer alone, in one run.

The pipeline is the real daemon (App): camera reader threads -> batcher -> scoring thread -> episodes
-> journal (SQLite, synchronous=FULL) -> logging forwarder (silenced here). Frames are synthetic
640x480 images, generated once and replayed, so the generator's own cost does not hide the pipeline's.

    python benchmarks/pipeline_throughput.py [--runtime openvino --precision fp32]

1. Throughput: each camera is paced at 1.25x its share of the scorer-alone rate (the pipeline is
   saturated, as on a busy line), queue policy; frames/s = verdicts journaled per second.
   Scorer alone: Scorer.score on the same frames in batches of the same size, preprocessing included.
   Both with the tiny model (random weights) and with a no-op scorer (the pipeline's own capacity; a
   single fast camera then commits one frame per journal transaction, so fsync bounds it). p99 in the
   throughput rows is queueing under overload, not the latency target.
2. Latency: 4 cameras x 10 fps with the tiny model; capture -> journal commit, p50/p99.
Targets: pipeline >= 0.9 x scorer alone with the tiny model; p99 < 50 ms at 4 x 10 fps.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from linewatch.anople.backbone import TINY_MODEL, load_random_backbone
from linewatch.anople.settings import AnoPLeSettings
from linewatch.clock import SystemClock
from linewatch.config import (
    CameraSection,
    Config,
    HttpSection,
    JournalSection,
    ModelSection,
    MqttSection,
    ScoringSection,
    SiteSection,
)
from linewatch.daemon.app import App
from linewatch.daemon.lifecycle import apply_cpu_threads
from linewatch.images import write_image
from linewatch.model.training import ProductSource, train_artifact
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.pipeline.scorer import ScoredImage, Scorer
from linewatch.types import Batch, Verdict

PRODUCT = "part"
BATCH = 8


class ReplaySource:
    """Cycles through pre-generated frames: reading costs nothing, like a camera driver's buffer."""

    live = False

    def __init__(self, frames: list[np.ndarray]) -> None:
        self.frames = frames
        self.index = 0
        self.description = "replay"

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray:
        self.index += 1
        return self.frames[self.index % len(self.frames)]

    def close(self) -> None:
        pass


class NoOpScorer:
    """Stands in for the model: constant scores, no tensor work."""

    def __init__(self, real: Scorer) -> None:
        self.products = real.products

    def score(self, images: list[np.ndarray], products: list[str]) -> list[ScoredImage]:
        empty = np.zeros((1, 1), np.float32)
        return [ScoredImage(p, 0.1, 0.5, "normal", 0.0, empty, 0.5) for p in products]


class MeasuredApp(App):
    """The real App, also recording capture -> journal-commit latency of every verdict."""

    latencies: list[float]

    def _record(self, batch: Batch, verdicts: list[Verdict], pixel_maps: list[np.ndarray]) -> None:
        super()._record(batch, verdicts, pixel_maps)
        now = self.clock.monotonic()
        self.latencies.extend(now - frame.captured_mono for frame in batch.frames)


def _model(root: Path, frames: list[np.ndarray]) -> Path:
    folder = root / "normals"
    for index, frame in enumerate(frames[:4]):
        write_image(folder / f"{index}.png", frame)
    out = root / "model"
    train_artifact(
        [ProductSource(PRODUCT, sorted(folder.glob("*.png")))],
        load_random_backbone(TINY_MODEL, 0),
        AnoPLeSettings(steps=5),
        out,
        shots=2,
        seed=0,
        target_frr=0.05,
        log=lambda _line: None,
    )
    return out


RUNTIME = {"runtime": "torch", "precision": "fp32"}  # set from the command line: [scoring] runtime and precision


def _config(root: Path, model: Path, cameras: int, fps: float, max_wait_ms: float, cpu_threads: int) -> Config:
    return Config(
        site=SiteSection(site="bench", line="l1", data_dir=root / f"data-{time.monotonic_ns()}"),
        model=ModelSection(path=model, backbone=TINY_MODEL, pretrained="none"),
        scoring=ScoringSection(batch_max_size=BATCH, batch_max_wait_ms=max_wait_ms, cpu_threads=cpu_threads, **RUNTIME),
        journal=JournalSection(),
        mqtt=MqttSection(enabled=False),  # the SQLite store and evidence writer run; no broker is assumed
        http=HttpSection(port=0),
        cameras=[
            CameraSection(name=f"cam{i}", source="synthetic", product=PRODUCT, fps=fps, policy="queue", queue_size=64)
            for i in range(cameras)
        ],
    )


def scorer_alone(scorer: Scorer | NoOpScorer, frames: list[np.ndarray], seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = [frames[(done + i) % len(frames)] for i in range(BATCH)]
        scorer.score(batch, [PRODUCT] * BATCH)
        done += BATCH
    return done / (time.perf_counter() - started)


def pipeline(
    root: Path,
    model: Path,
    frames: list[np.ndarray],
    cameras: int,
    fps: float,
    seconds: float,
    noop: bool,
    max_wait_ms: float,
    cpu_threads: int,
) -> tuple[float, list[float], dict]:
    config = _config(root, model, cameras, fps, max_wait_ms, cpu_threads)
    apply_cpu_threads(config)  # as `linewatch run` does
    app = MeasuredApp(config, SystemClock(), lambda _c, _s: ReplaySource(frames))
    app.latencies = []
    app.start(scorer_thread=False)  # as `linewatch run`: the scorer runs on the main thread
    if noop:
        assert app.worker is not None
        app.worker.swap(NoOpScorer(app.worker.scorer), "noop")
    window: dict[str, float] = {}

    def measure() -> None:
        time.sleep(1.0)  # let queues fill and threads settle
        window["before"], window["start"] = len(app.latencies), time.perf_counter()
        time.sleep(seconds)
        window["after"], window["end"] = len(app.latencies), time.perf_counter()
        app.stop_event.set()

    timer = threading.Thread(target=measure, name="timer")
    timer.start()
    app.run_scorer()
    timer.join()
    app.stop()
    rate = (window["after"] - window["before"]) / (window["end"] - window["start"])
    before = int(window["before"])
    assert app.batcher is not None
    return rate, app.latencies[before : int(window["after"])], app.batcher.drops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measuring time per cell")
    parser.add_argument(
        "--max-wait-ms", type=float, default=ScoringSection().batch_max_wait_ms, help="batch max wait (config default)"
    )
    parser.add_argument("--latency-only", action="store_true", help="skip the throughput table")
    parser.add_argument("--cpu-threads", type=int, default=0, help="[scoring] cpu_threads (0: cores - 1)")
    parser.add_argument("--runtime", default="torch", choices=["torch", "openvino"], help="[scoring] runtime")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"], help="[scoring] precision")
    args = parser.parse_args()
    RUNTIME.update(runtime=args.runtime, precision=args.precision)
    logging.getLogger().setLevel(logging.ERROR)
    product = SyntheticProduct(style_seed=0, width=640, height=480)
    rng = np.random.default_rng(0)
    frames = [product.sample(rng, 0.1).image for _ in range(32)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = _model(root, frames)
        threads = apply_cpu_threads(
            _config(root, model, 1, 10.0, args.max_wait_ms, args.cpu_threads)
        )  # the scorer alone too
        real = Scorer.from_artifact(model, root / "models", runtime=args.runtime, precision=args.precision)
        print(
            f"batch max size {BATCH}, max wait {args.max_wait_ms} ms, {threads} thread(s), "
            f"{args.runtime} {args.precision}"
        )
        print(f"{'scorer':<8} {'cameras':>7} {'alone f/s':>10} {'pipeline f/s':>12} {'ratio':>6} {'p99 ms':>7}")
        for name, scorer in () if args.latency_only else (("no-op", NoOpScorer(real)), ("tiny", real)):
            alone = scorer_alone(scorer, frames, args.seconds)
            for cameras in (1, 4):
                fps = 1.25 * alone / cameras
                rate, latencies, _drops = pipeline(
                    root, model, frames, cameras, fps, args.seconds, name == "no-op", args.max_wait_ms, args.cpu_threads
                )
                p99 = 1000 * float(np.percentile(latencies, 99))
                # No model and no preprocessing in the no-op rows: only the pipeline's own capacity counts.
                alone_text, ratio_text = ("-", "-") if name == "no-op" else (f"{alone:.1f}", f"{rate / alone:.3f}")
                print(f"{name:<8} {cameras:>7} {alone_text:>10} {rate:>12.1f} {ratio_text:>6} {p99:>7.1f}", flush=True)
        rate, latencies, drops = pipeline(
            root, model, frames, 4, 10.0, 2 * args.seconds, False, args.max_wait_ms, args.cpu_threads
        )
        p50, p99 = (1000 * float(np.percentile(latencies, q)) for q in (50, 99))
        print(
            f"latency, tiny model, 4 cameras x 10 fps: {len(latencies)} frames, {rate:.1f} f/s, "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {1000 * max(latencies):.1f} ms, "
            f"mean {1000 * statistics.mean(latencies):.1f} ms, drops {drops or 'none'}"
        )


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()

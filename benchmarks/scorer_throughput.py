"""Images/s of the AnoPLe scorer against the bare open_clip image encoder, measured in one run.

Same architecture, input size, batch and device for both; random weights (speed does not depend on
the values). The scorer does everything the daemon's scorer does per batch: prompted vision tower,
decoder, memory-bank search (4 shots), fusion, upsampling and blur, global probability.

    python benchmarks/scorer_throughput.py                       # CPU, fp32, the issue's table
    python benchmarks/scorer_throughput.py --device cuda --precision bf16 --batches 1 8 32 64 128 256

Target (CPU, full-size models, batch 8): scorer >= 0.85 x bare encoder.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch

from linewatch.anople.backbone import load_random_backbone
from linewatch.anople.model import AnoPLe
from linewatch.anople.settings import AnoPLeSettings

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _interleaved(steps: dict[str, Callable[[], None]], device: torch.device, min_seconds: float, reps: int):
    """Seconds per call of each step, timed in alternating rounds so machine drift hits both alike.

    Returns the median seconds per step over the rounds (after one warm-up call each).
    """

    def once(step: Callable[[], None]) -> float:
        started = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for step in steps.values():
        once(step)
    times: dict[str, list[float]] = {name: [] for name in steps}
    deadline = time.perf_counter() + min_seconds
    while len(times[next(iter(steps))]) < reps or time.perf_counter() < deadline:
        for name, step in steps.items():
            times[name].append(once(step))
        if len(times[next(iter(steps))]) >= 50:
            break
    return {name: statistics.median(values) for name, values in times.items()}


def bench_model(
    name: str, batches: list[int], device: torch.device, precision: str, min_seconds: float, reps: int
) -> None:
    backbone = load_random_backbone(name, seed=0)
    model = AnoPLe(backbone, AnoPLeSettings(), ["part"]).to(device).eval()
    size = model.input_size
    model.build_memory("part", torch.rand(4, 3, size, size, device=device))
    model.refresh_text_cache()
    dtype = DTYPES[precision]
    autocast = (lambda: torch.autocast(device_type=device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    for batch in batches:
        images = torch.rand(batch, 3, size, size, device=device)
        normalised = (images - model.mean) / model.std
        ids = torch.zeros(batch, dtype=torch.long)

        def bare(normalised: torch.Tensor = normalised) -> None:
            with torch.inference_mode(), autocast():
                model.clip.encode_image(normalised)

        def scorer(images: torch.Tensor = images, ids: torch.Tensor = ids) -> None:
            with autocast():
                model.predict(images, ids)

        seconds = _interleaved({"bare": bare, "scorer": scorer}, device, min_seconds, reps)
        bare_rate, scorer_rate = batch / seconds["bare"], batch / seconds["scorer"]
        print(
            f"{name:<20} {batch:>5} {bare_rate:>10.2f} {scorer_rate:>10.2f} {scorer_rate / bare_rate:>7.3f}", flush=True
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["linewatch-tiny", "ViT-B-16", "ViT-B-16-plus-240"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="minimum timing per cell")
    parser.add_argument("--reps", type=int, default=3, help="minimum timed repetitions per cell")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, precision {args.precision}, torch threads {torch.get_num_threads()}")
    print(f"{'model':<20} {'batch':>5} {'bare img/s':>10} {'scorer':>10} {'ratio':>7}")
    for name in args.models:
        bench_model(name, args.batches, device, args.precision, args.min_seconds, args.reps)


if __name__ == "__main__":
    main()

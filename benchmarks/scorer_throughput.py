"""Images/s of the AnoPLe scorer per runtime and precision against the bare PyTorch fp32 encoder, in one run.

Same architecture, input size, batch and device for all; random weights (speed does not depend on the
values). The scorer does everything the daemon's scorer does per batch: prompted vision tower, decoder,
memory-bank search (4 shots), fusion, upsampling and blur, global probability. The OpenVINO scorer is the
exported graph (:mod:`linewatch.model.openvino_graph`); INT8 is quantised on random inputs here, which
changes its accuracy, not its speed. All cells are timed in alternating rounds, so machine drift hits
them alike.

    python benchmarks/scorer_throughput.py --models ViT-B-16-plus-240 --batches 8 \\
        --runtime torch openvino --precision fp32 bf16 int8 --threads 2
    python benchmarks/scorer_throughput.py --device cuda --runtime torch --precision bf16 --batches 8 64

Targets (CPU, ViT-B-16-plus-240, batch 8): OpenVINO bf16 scorer >= 2.2 x the bare PyTorch fp32 encoder,
INT8 >= 3.8 x; the PyTorch fp32 scorer >= 0.85 x.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from linewatch.anople.backbone import load_random_backbone
from linewatch.anople.graph import ScoringGraph
from linewatch.anople.model import AnoPLe
from linewatch.anople.settings import AnoPLeSettings

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _interleaved(steps: dict[str, Callable[[], None]], device: torch.device, min_seconds: float, reps: int):
    """Median seconds per call of each step over alternating rounds (after one warm-up call each)."""

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


def _openvino_steps(
    model: AnoPLe, precisions: list[str], batch: int, threads: int
) -> dict[str, Callable[[np.ndarray, np.ndarray], object]]:
    from linewatch.model import openvino_graph

    graph = ScoringGraph(model).eval()
    size = model.input_size
    example = (torch.rand(2, 3, size, size), torch.zeros(2, dtype=torch.long), torch.full((2,), -1))
    converted = openvino_graph.convert(graph, example)
    runners = {}
    for precision in precisions:
        ov_model = converted
        if precision == "int8":
            calibration = [
                (
                    np.random.default_rng(i).random((batch, 3, size, size), dtype=np.float32),
                    np.zeros(batch, np.int64),
                    np.full(batch, -1, np.int64),
                )
                for i in range(4)
            ]
            ov_model = openvino_graph.quantize_int8(converted, calibration, graph.tower_length)
        compiled = openvino_graph.CompiledGraph(ov_model, precision, threads=threads)
        runners[f"openvino {precision}"] = compiled.run
    return runners


def _gflop_per_image(model: AnoPLe, device: torch.device) -> float:
    """What one image costs the full scorer (the TFLOP/s column: img/s x this), so a GPU run can be set
    against the chip's bf16 peak. Counted on a batch of 2, halved: per-image work does not depend on it."""
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.rand(2, 3, model.input_size, model.input_size, device=device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.predict(images, torch.zeros(2, dtype=torch.long))
    return counter.get_total_flops() / 2 / 1e9


def bench_model(name: str, args: argparse.Namespace, device: torch.device) -> None:
    backbone = load_random_backbone(name, seed=0)
    # Nothing here trains: frozen prompts too, which also keeps the flop counter's module hooks quiet.
    model = AnoPLe(backbone, AnoPLeSettings(), ["part"]).to(device).eval().requires_grad_(False)
    size = model.input_size
    model.build_memory("part", torch.rand(4, 3, size, size, device=device))
    calibration = torch.rand(2, 3, size, size, device=device)  # scales' values do not change the speed
    model.fit_fusion_scales("part", model.terms(calibration, torch.zeros(2, dtype=torch.long)))
    model.refresh_text_cache()
    gflop = _gflop_per_image(model, device)  # the scorer's work per image, counted once in fp32
    print(f"{name}: {gflop:.1f} GFLOP per image (matmuls and convolutions, torch's flop counter)", flush=True)
    for batch in args.batches:
        images = torch.rand(batch, 3, size, size, device=device)
        normalised = (images - model.mean) / model.std
        ids = torch.zeros(batch, dtype=torch.long)
        steps: dict[str, Callable[[], None]] = {}

        def bare(normalised: torch.Tensor = normalised) -> None:
            with torch.inference_mode():
                model.clip.encode_image(normalised)

        steps["bare torch fp32"] = bare
        if "torch" in args.runtime:
            for precision in args.precision:
                dtype = DTYPES.get(precision)
                if precision == "int8" or (device.type == "cpu" and dtype is not None):
                    continue  # bf16 autocast on the CPU runs at a quarter of fp32's speed: not a scorer option
                autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

                def scorer(images: torch.Tensor = images, ids: torch.Tensor = ids, autocast=autocast) -> None:
                    with autocast:
                        model.predict(images, ids)

                steps[f"torch {precision}"] = scorer
        if "openvino" in args.runtime and device.type == "cpu":
            wanted = [p for p in args.precision if p in ("fp32", "bf16", "int8")]
            arrays = (images.numpy(), ids.numpy())
            for label, run in _openvino_steps(model, wanted, batch, args.threads or 0).items():
                steps[label] = lambda run=run, arrays=arrays: run(*arrays)
        seconds = _interleaved(steps, device, args.min_seconds, args.reps)
        bare_rate = batch / seconds["bare torch fp32"]
        for label, value in seconds.items():
            rate = batch / value
            tflops = rate * gflop / 1000
            row = f"{name:<20} {batch:>5} {label:<18} {rate:>10.2f} {rate / bare_rate:>7.2f} {tflops:>8.2f}"
            print(row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["linewatch-tiny", "ViT-B-16-plus-240"])
    parser.add_argument("--batches", nargs="+", type=int, default=[8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", nargs="+", default=["torch", "openvino"], choices=["torch", "openvino"])
    parser.add_argument(
        "--precision", nargs="+", default=["fp32", "bf16", "int8"], choices=["fp32", "bf16", "fp16", "int8"]
    )
    parser.add_argument("--threads", type=int, default=None, help="torch and OpenVINO threads (default: all cores)")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="minimum timing per cell")
    parser.add_argument("--reps", type=int, default=3, help="minimum timed repetitions per cell")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch threads {torch.get_num_threads()}, random weights")
    print(f"{'model':<20} {'batch':>5} {'runtime':<18} {'img/s':>10} {'x bare':>7} {'TFLOP/s':>8}")
    for name in args.models:
        bench_model(name, args, device)


if __name__ == "__main__":
    main()

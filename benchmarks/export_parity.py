"""The OpenVINO export's parity gate on a full-size model: ViT-B-16-plus-240 with random weights.

Trains a model briefly on synthetic normals (the numbers say how the runtimes agree, not how good the
model is), then runs ``linewatch model export``'s code at each precision and prints the parity, the
thresholds and the time each export took. Too slow for the test suite (minutes on 2 cores); the tiny
model's exports are tested there.

    python benchmarks/export_parity.py --steps 10 --normals 24 --threads 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from linewatch.anople.artifact import load_artifact
from linewatch.anople.backbone import load_random_backbone
from linewatch.anople.settings import AnoPLeSettings
from linewatch.images import write_image
from linewatch.model.export import ExportError, export_openvino
from linewatch.model.training import ProductSource, train_artifact
from linewatch.pipeline.camera.synthetic import SyntheticProduct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16-plus-240")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--normals", type=int, default=24, help="4 are shots, the rest calibrate")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16", "int8"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_random_backbone(args.model, seed=0)
    product = SyntheticProduct(style_seed=3, width=320, height=320)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        for index in range(args.normals):
            write_image(root / "normals" / f"{index:03d}.png", product.normal(rng).image)
        started = time.perf_counter()
        train_artifact(
            [ProductSource("part", sorted((root / "normals").glob("*.png")))],
            backbone,
            AnoPLeSettings(steps=args.steps),
            root / "model",
            shots=4,
            seed=0,
            target_frr=0.05,
            log=print,
        )
        print(f"trained {args.steps} steps in {time.perf_counter() - started:.0f} s")
        model, info = load_artifact(root / "model", lambda _spec: backbone)
        print(f"PyTorch fp32 threshold {info.products['part'].calibration.threshold:.5f}")
        for precision in args.precision:
            started = time.perf_counter()
            try:
                record = export_openvino(root / "model", model, info, precision, log=lambda _line: None)
            except ExportError as error:
                print(f"{precision}: REFUSED ({error}) after {time.perf_counter() - started:.0f} s")
                continue
            calibration = record.calibrations["part"]
            print(
                f"{precision}: {record.parity.describe()}; threshold {calibration.threshold:.5f}, "
                f"achieved FRR {calibration.achieved_frr:.3f}; export took {time.perf_counter() - started:.0f} s"
            )


if __name__ == "__main__":
    main()

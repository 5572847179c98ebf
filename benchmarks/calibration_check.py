"""How well a threshold keeps its promise: the false-reject rate it was set for against the one measured on
normals it never saw.

Per seed, trains the tiny random backbone on 4 synthetic normal shots, then calibrates the same model on
each kind of calibration set (the shots left out one at a time, 16 or 64 held-out normals) at each target
false-reject rate, and scores unseen normals of the same product against each threshold. Prints the mean
over seeds and each seed's value. Minutes on 2 cores, so not part of the test suite.

    python benchmarks/calibration_check.py --seeds 0 1 2 --steps 200 --unseen 200
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from linewatch.anople.backbone import load_random_backbone
from linewatch.anople.model import AnoPLe
from linewatch.anople.settings import FUSIONS, AnoPLeSettings
from linewatch.anople.train import train
from linewatch.model.preprocess import to_model_tensor
from linewatch.model.training import calibrate_product, score_tensors
from linewatch.pipeline.camera.synthetic import SyntheticProduct

SHOTS = 4
PRODUCT = "part"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--unseen", type=int, default=200, help="normals never seen by training or calibration")
    parser.add_argument("--held-out", nargs="+", type=int, default=[0, 16, 64], help="0: the shots left out")
    parser.add_argument("--targets", nargs="+", type=float, default=[0.01, 0.05])
    parser.add_argument("--fusion", default=AnoPLeSettings.fusion, choices=FUSIONS)
    parser.add_argument("--style-seed", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backbone = load_random_backbone("linewatch-tiny", seed=0)
    product = SyntheticProduct(style_seed=args.style_seed, width=128, height=128)
    measured: dict[tuple[int, float], list[float]] = {}
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        shots = [product.normal(rng).image for _ in range(SHOTS)]
        held_out = [product.normal(rng).image for _ in range(max(args.held_out))]
        unseen = [product.normal(rng).image for _ in range(args.unseen)]
        torch.manual_seed(seed)
        model = AnoPLe(backbone, AnoPLeSettings(steps=args.steps, fusion=args.fusion), [PRODUCT])
        train(model, {PRODUCT: to_model_tensor(shots, 2 * model.input_size)}, seed)
        model.eval().build_memory(PRODUCT, to_model_tensor(shots, model.input_size))
        for count in args.held_out:
            for target in args.targets:
                calibration = calibrate_product(model, PRODUCT, held_out[:count], shots, target, seed)
                scores, _ = score_tensors(model, to_model_tensor(unseen, model.input_size), PRODUCT)
                measured.setdefault((count, target), []).append(float((scores > calibration.threshold).mean()))
    print(f"false-reject rate on {args.unseen} unseen normals, {args.fusion} fusion, seeds {args.seeds}")
    print(f"{'calibrated on':<24} {'target':>7} {'measured (mean)':>16}   per seed")
    for (count, target), rates in measured.items():
        source = f"{count} held-out normals" if count else f"{SHOTS} shots left out"
        per_seed = " ".join(f"{100 * rate:.1f}" for rate in rates)
        print(f"{source:<24} {100 * target:>6.0f}% {100 * np.mean(rates):>15.1f}%   {per_seed}")


if __name__ == "__main__":
    main()

"""Image and pixel AUROC of each fusion term and of the fusion, on generated synthetic folder data.

Writes a synthetic product's folder dataset (normals, four defect kinds, masks) and runs ``linewatch
eval`` on it with the tiny random backbone; its output ends with the term table (global probability, decoder
map, memory map, fusion) per k. It is what issue 18 measures the fusion against: the fused score must be at
least as good as the best single term. Minutes on 2 cores, so not part of the test suite.

    python benchmarks/fusion_terms.py --out /tmp/fusion --steps 100 --seeds 0 1
    python benchmarks/fusion_terms.py --out /tmp/fusion-harmonic --fusion harmonic   # any eval option passes on
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from linewatch.cli.main import main as cli_main
from linewatch.pipeline.camera.synthetic import SyntheticProduct, write_folder_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="dataset and eval output go here")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", nargs="+", default=["0", "1"])
    parser.add_argument("--shots", nargs="+", default=["1", "2", "4"])
    parser.add_argument("--normals", type=int, default=48)
    parser.add_argument("--defects-per-kind", type=int, default=12)
    parser.add_argument("--style-seed", type=int, default=3)
    parser.add_argument("--size", type=int, default=160)
    args, extra = parser.parse_known_args()
    dataset = args.out / "data" / "part"
    if not dataset.exists():
        product = SyntheticProduct(style_seed=args.style_seed, width=args.size, height=args.size)
        write_folder_dataset(dataset, product, args.normals, args.defects_per_kind, seed=args.style_seed)
    code = cli_main(
        [
            "eval", "--dataset", "folder", "--root", str(dataset), "--out", str(args.out / "eval"),
            "--backbone", "linewatch-tiny", "--pretrained", "none", "--steps", str(args.steps),
            "--eval-size", "128", "--shots", *args.shots, "--seeds", *args.seeds, *extra,
        ]
    )  # fmt: skip
    sys.exit(code)  # eval prints the term table (each term alone, then the fusion) after the main ones


if __name__ == "__main__":
    main()

"""``linewatch demo``: the out-of-the-box main job until the daemon lands.

Generates a synthetic product, trains a model on a few of its normal images (once; later runs reuse
it), scores a synthetic test set of normals and every defect kind, and reports detection rates, the
false-reject rate and image AUROC, with heatmap overlays to look at.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from linewatch.anople.settings import AnoPLeSettings
from linewatch.cli.console import announce_random, progress_bar
from linewatch.config import load_config
from linewatch.images import collect_images, heatmap_overlay, read_rgb, write_image
from linewatch.model.training import ProductSource, train_artifact
from linewatch.model.weights import load_backbone
from linewatch.pipeline.camera.synthetic import DEFECT_KINDS, SyntheticProduct, write_folder_dataset
from linewatch.pipeline.scorer import DEFECT, Scorer

BATCH = 8


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def run_demo(config_path: Path) -> int:
    config = load_config(config_path)
    model_cfg, demo = config.model, config.demo
    product = SyntheticProduct(style_seed=demo.seed)
    train_dir, test_dir = demo.data_dir / "train", demo.data_dir / "test"
    if not demo.model_path.exists():
        shutil.rmtree(train_dir, ignore_errors=True)  # images of an earlier run must not leak into training
        write_folder_dataset(train_dir, product, demo.train_normals, 0, seed=demo.seed)
        backbone = load_backbone(
            model_cfg.backbone, model_cfg.pretrained, model_cfg.models_dir, model_cfg.weights, demo.seed
        )
        announce_random(backbone.spec.is_random)
        bar, update = progress_bar(demo.steps)
        with bar:
            train_artifact(
                [ProductSource(demo.product, collect_images([train_dir / "good"]))],
                backbone,
                AnoPLeSettings(steps=demo.steps),
                demo.model_path,
                demo.shots,
                demo.seed,
                model_cfg.target_frr,
                progress=update,
                log=_log,
                device=model_cfg.device,
            )
    else:
        _log(f"reusing the model in {demo.model_path} (delete it to retrain)")
    scoring = config.scoring
    scorer = Scorer.from_artifact(
        demo.model_path, model_cfg.models_dir, model_cfg.device, scoring.precision, model_cfg.weights, scoring.runtime
    )
    announce_random(scorer.backbone_spec.is_random)
    if demo.product not in scorer.products:
        raise KeyError(f"[demo] product {demo.product!r} is not in {demo.model_path} (holds {scorer.products})")
    for stale in (test_dir, demo.data_dir / "heatmaps"):
        shutil.rmtree(stale, ignore_errors=True)
    write_folder_dataset(test_dir, product, demo.test_normals, demo.test_defects_per_kind, seed=demo.seed + 1)
    rows = []
    for kind in ("good", *DEFECT_KINDS):
        paths = collect_images([test_dir / kind])
        for start in range(0, len(paths), BATCH):
            chunk = paths[start : start + BATCH]
            images = [read_rgb(path) for path in chunk]
            for path, image, result in zip(
                chunk, images, scorer.score(images, [demo.product] * len(images)), strict=True
            ):
                overlay = heatmap_overlay(image, result.pixel_map, result.pixel_threshold)
                write_image(demo.data_dir / "heatmaps" / kind / path.name, overlay)
                rows.append({"kind": kind, "path": str(path), "score": result.score, "verdict": result.verdict})
    report = _report(rows, scorer.threshold(demo.product))
    (demo.data_dir / "report.json").write_text(json.dumps({"summary": report, "images": rows}, indent=2) + "\n")
    print(f"{'kind':<16} {'images':>6} {'flagged':>8} {'mean score':>11}")
    for kind, stats in report["per_kind"].items():
        print(f"{kind:<16} {stats['images']:>6} {stats['flagged']:>8} {stats['mean_score']:>11.5f}")
    print(
        f"threshold {report['threshold']:.5f}  false-reject rate {report['false_reject_rate']:.3f}  "
        f"defect recall {report['defect_recall']:.3f}  image AUROC {report['image_auroc']:.3f}"
    )
    print(f"heatmaps in {demo.data_dir / 'heatmaps'}, report in {demo.data_dir / 'report.json'}")
    return 0


def _report(rows: list[dict[str, object]], threshold: float) -> dict[str, object]:
    labels = np.array([row["kind"] != "good" for row in rows])
    scores = np.array([row["score"] for row in rows], dtype=np.float64)
    flagged = np.array([row["verdict"] == DEFECT for row in rows])
    per_kind = {}
    for kind in dict.fromkeys(row["kind"] for row in rows):
        picked = np.array([row["kind"] == kind for row in rows])
        per_kind[kind] = {
            "images": int(picked.sum()),
            "flagged": int(flagged[picked].sum()),
            "mean_score": float(scores[picked].mean()),
        }
    return {
        "threshold": threshold,
        "false_reject_rate": float(flagged[~labels].mean()),
        "defect_recall": float(flagged[labels].mean()),
        "image_auroc": float(roc_auc_score(labels, scores)),
        "per_kind": per_kind,
    }

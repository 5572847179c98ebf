"""Retraining on a lighting drift, measured: false alarms before and after, and how long a retrain takes.

A tiny random-weight model (version 1) is trained on a synthetic part like the daemon's demo model.
Then the line's lighting changes (frames come out darker, or with a colour cast) and version 1
false-alarms on good parts. An operator confirms ``--confirmed`` of those alarms as normal (through the
journal and the DB forwarder, as feedback does), and one retraining run goes through the real
Retrainer: child process, gate, activation. Reported, for both versions, on fresh images: false-alarm
rate on drifted and on original-appearance good parts, and the share of defects flagged; and the wall
time of the run, with the training inside the child on its own.

    python benchmarks/retrain_drift.py                       # darker lighting, 10 confirmed normals
    python benchmarks/retrain_drift.py --drift cast --confirmed 16 --steps 100
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import torch

from linewatch.anople.artifact import read_manifest
from linewatch.anople.backbone import TINY_MODEL, load_random_backbone
from linewatch.anople.settings import AnoPLeSettings
from linewatch.clock import SystemClock
from linewatch.config import Config
from linewatch.daemon.feedback import submit
from linewatch.feedback import FeedbackRequest
from linewatch.images import write_image
from linewatch.model.training import ProductSource, train_artifact
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.scorer import Scorer
from linewatch.retrain.runner import Retrainer
from linewatch.retrain.versions import ModelRegistry
from linewatch.sinks.db import make_engine
from linewatch.sinks.db_forwarder import DbForwarder
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.types import LabelTarget, Verdict, VerdictLabel

PRODUCT = "bracket"
DRIFTS = {
    "darker": np.array([0.6, 0.6, 0.6], dtype=np.float32),
    "cast": np.array([1.2, 1.0, 0.7], dtype=np.float32),
}


def drifted(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    return np.clip(image.astype(np.float32) * gains, 0, 255).astype(np.uint8)


def rates(model: Path, models_dir: Path, normals: list[np.ndarray], defects: list[np.ndarray]) -> tuple[float, float]:
    scorer = Scorer.from_artifact(model, models_dir)
    alarms = [r.verdict == "defect" for r in scorer.score(normals, [PRODUCT] * len(normals))]
    flagged = [r.verdict == "defect" for r in scorer.score(defects, [PRODUCT] * len(defects))]
    return float(np.mean(alarms)), float(np.mean(flagged))


def confirm_normals(config: Config, images: list[np.ndarray]) -> None:
    """Verdicts with snapshots, then the operator's "normal", journaled and forwarded to the store."""
    journal = Journal(config.journal_path, SystemClock())
    journal.register_forwarder("db")
    start = datetime.now(UTC) - timedelta(hours=1)
    verdicts = []
    for index, image in enumerate(images):
        inspection_id = f"cam1-bench-{index}"
        snapshot = f"cam1/{start:%Y-%m-%d}/{inspection_id}-defect.jpg"
        write_image(config.evidence_dir / snapshot, image, jpeg_quality=85)
        verdicts.append(
            Verdict(
                inspection_id=inspection_id,
                camera="cam1",
                product=PRODUCT,
                seq=index + 1,
                frame_ts=start + timedelta(seconds=index),
                captured_mono=float(index),
                score=0.5,
                threshold=0.4,
                label=VerdictLabel.DEFECT,  # version 1 flagged it
                model_version="v1",
                snapshot=snapshot,
            )
        )
    journal.append_batch(verdicts, [])
    for verdict in verdicts:
        request = FeedbackRequest(LabelTarget.INSPECTION, verdict.inspection_id, VerdictLabel.NORMAL, "bench")
        submit(journal, SystemClock(), request, "cli")
    records = journal.read_after("db", 100_000)
    engine = make_engine(config.store_url)
    DbForwarder(engine).send(records)
    journal.mark_done("db", records[-1].position)
    journal.close()
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--drift", choices=sorted(DRIFTS), default="darker")
    parser.add_argument("--confirmed", type=int, default=10, help="drifted good parts the operator confirms")
    parser.add_argument("--steps", type=int, default=150, help="[retrain] steps")
    parser.add_argument("--test-images", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gains = DRIFTS[args.drift]
    product = SyntheticProduct(style_seed=5, width=160, height=120)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="linewatch-retrain-bench-") as temp:
        root = Path(temp)
        normals_dir = root / "normals"
        for index in range(12):
            write_image(normals_dir / f"{index:03d}.png", product.normal(rng).image)
        first = root / "models" / "v1"
        started = time.monotonic()
        train_artifact(
            [ProductSource(PRODUCT, sorted(normals_dir.glob("*.png")))],
            load_random_backbone(TINY_MODEL, seed=0),
            AnoPLeSettings(steps=200),
            first,
            shots=4,
            seed=0,
            target_frr=0.01,
            log=lambda _line: None,
        )
        print(f"version 1: 200 steps on 4 shots in {time.monotonic() - started:.1f} s (tiny model, RANDOM weights)")
        config = Config.model_validate(
            {
                "site": {"data_dir": str(root / "data"), "line": "bench"},
                "model": {"path": str(first), "models_dir": str(root / "models"), "target_frr": 0.01},
                "retrain": {"schedule": "", "steps": args.steps, "min_new_normals": min(8, args.confirmed)},
            }
        )
        upgrade_database(config.store_url, config.backup_dir)
        confirm_normals(config, [drifted(product.normal(rng).image, gains) for _ in range(args.confirmed)])

        count = args.test_images
        good = [product.normal(rng).image for _ in range(count)]
        bad = [product.defective(rng).image for _ in range(count)]
        test_sets = {
            "drifted": ([drifted(image, gains) for image in good], [drifted(image, gains) for image in bad]),
            "original": (good, bad),
        }
        before = {name: rates(first, config.model.models_dir, *images) for name, images in test_sets.items()}

        registry = ModelRegistry(config.versions_dir, config.model.path)
        manifest = read_manifest(first)
        retrainer = Retrainer(
            config,
            registry,
            make_engine(config.store_url),
            SystemClock(),
            lambda path: Scorer.from_artifact(path, config.model.models_dir),
            lambda _scorer, _path, _version: None,
            lambda _news: None,
            lambda: {entry["name"]: entry["calibration"]["threshold"] for entry in manifest["products"]},
            threading.Event(),
        )
        started = time.monotonic()
        outcome = retrainer.run("benchmark")
        wall = time.monotonic() - started
        print(f"retrain: {outcome.status} in {wall:.1f} s wall ({outcome.metrics.get('training_s', '?')} s training")
        print(f"  inside the child, {args.steps} steps, 1 thread): {outcome.reason}")
        after = {name: rates(registry.active(), config.model.models_dir, *images) for name, images in test_sets.items()}
        print(f"\n{count} fresh good parts and {count} defective parts per appearance ({args.drift} drift):")
        print(f"{'appearance':<10} {'false alarms v1':>16} {'after':>6} {'defects flagged v1':>19} {'after':>6}")
        for name in test_sets:
            (alarms, flagged), (alarms_after, flagged_after) = before[name], after[name]
            print(f"{name:<10} {alarms:>16.2f} {alarms_after:>6.2f} {flagged:>19.2f} {flagged_after:>6.2f}")


if __name__ == "__main__":
    main()

"""The training process: ``python -m linewatch.retrain.child SPEC.json``.

Retraining runs here, never in the daemon: its own memory (a training step allocates activations the
scorer does not need), its own torch threads, and a parent that can kill it at the time limit without
leaving anything half-done in the daemon. It reads a :class:`ChildSpec`, and writes

- in ``train`` mode, a complete artifact at ``spec.out`` (prompts warm-started from the active version,
  trained on the shots, memory rebuilt, threshold recalibrated on the held-out confirmed normals) with
  copies of its shots under ``shots/``, so the next retrain finds them even when the evidence is gone;
- in both modes, ``spec.report``: the gate images scored by the active version (and the candidate).

Exit status 0 means the report is complete; anything else is a failed run, with the reason in the log.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from linewatch import __version__
from linewatch.anople.artifact import ArtifactInfo, ProductRecord, load_artifact, save_artifact
from linewatch.anople.backbone import Backbone, BackboneSpec, file_sha256
from linewatch.anople.model import AnoPLe
from linewatch.anople.settings import AnoPLeSettings
from linewatch.anople.train import train
from linewatch.images import read_rgb, write_image
from linewatch.model.preprocess import to_model_tensor
from linewatch.model.training import calibrate_product, score_tensors
from linewatch.model.weights import backbone_loader

SHOTS_DIR = "shots"
CALIBRATION_DIR = "calibration"


@dataclass(frozen=True)
class ChildSpec:
    mode: Literal["train", "score"]
    active: str  # the active version's artifact directory
    models_dir: str
    weights: str | None
    device: str
    threads: int
    seed: int
    steps: int
    target_frr: float
    active_thresholds: dict[str, float]  # in force now (config overrides included): the gate judges these
    report: str
    out: str | None = None  # train mode: where the candidate artifact goes
    parent_version: str = ""
    shots: dict[str, list[str]] = field(default_factory=dict)  # product -> image files to train on
    holdout: dict[str, list[str]] = field(default_factory=dict)  # product -> held-out confirmed normals
    defects: dict[str, list[str]] = field(default_factory=dict)  # product -> confirmed defects

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> ChildSpec:
        return cls(**json.loads(path.read_text()))


def _images(paths: list[str]) -> list[np.ndarray]:
    return [read_rgb(Path(path)) for path in paths]


def _scores(model: AnoPLe, groups: dict[str, list[str]]) -> dict[str, list[float]]:
    """Image scores per product, images preprocessed exactly as in training and calibration."""
    scored = {}
    for product, paths in groups.items():
        if paths:
            scores, _ = score_tensors(model, to_model_tensor(_images(paths), model.input_size), product)
            scored[product] = [float(value) for value in scores]
        else:
            scored[product] = []
    return scored


def _copy_images(
    groups: dict[str, list[str]], products: list[str], out: Path, folder: str
) -> dict[str, list[dict[str, str]]]:
    """Copy each product's images into the artifact's ``folder`` (PNG, lossless) and describe them relative
    to it: evidence JPEGs age out, the version must keep what it was made from."""
    records: dict[str, list[dict[str, str]]] = {}
    for index, product in enumerate(products):
        records[product] = []
        for number, source in enumerate(groups.get(product, [])):
            relative = f"{folder}/{index}/{number:03d}.png"
            write_image(out / relative, read_rgb(Path(source)))
            records[product].append(
                {"file": Path(source).name, "path": relative, "sha256": file_sha256(out / relative)}
            )
    return records


def _train(spec: ChildSpec, backbone: Backbone, active: AnoPLe, active_info: ArtifactInfo) -> dict[str, Any]:
    assert spec.out is not None
    settings = AnoPLeSettings.from_dict({**active.settings.to_dict(), "steps": spec.steps})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AnoPLe(backbone, settings, active.products, active.prompt_words).to(spec.device)
    model.load_learned_parameters(active.learned_parameters())  # warm start: refine, do not relearn
    size = model.input_size
    shots = {product: _images(paths) for product, paths in spec.shots.items() if paths}
    started = time.monotonic()
    summary = train(model, {product: to_model_tensor(images, 2 * size) for product, images in shots.items()}, spec.seed)
    for product in model.products:
        if product in shots:
            model.build_memory(product, to_model_tensor(shots[product], size))
        else:  # nothing to train this product on: its bank stays as it was
            model.memory[product] = {layer: bank.clone() for layer, bank in active.memory[product].items()}
    calibrations = {}
    for product in model.products:
        held_out = _images(spec.holdout.get(product, []))
        if held_out:
            calibration = calibrate_product(model, product, held_out, [], spec.target_frr, spec.seed)
            calibrations[product] = replace(calibration, source="held-out confirmed normals")
        else:  # nothing of this product to calibrate on: its threshold and scales stay (nor can the gate judge it)
            if product in active.fusion_scales:
                model.fusion_scales[product] = active.fusion_scales[product].clone()
            kept = active_info.products[product].calibration
            calibrations[product] = replace(kept, source="kept from the previous version (no held-out normals)")
    duration = time.monotonic() - started
    out = Path(spec.out)
    info = ArtifactInfo(
        products={product: ProductRecord(product, calibrations[product]) for product in model.products},
        training={
            "mode": "retrain",
            "parent_version": spec.parent_version,
            "device": spec.device,
            "steps": summary.steps,
            "seed": spec.seed,
            "shots": {product: len(images) for product, images in shots.items()},
            "final_losses": summary.final_losses,
            "duration_s": round(duration, 2),
        },
        metrics=dict(active_info.metrics),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        linewatch_version=__version__,
    )
    staging = out.with_name(out.name + ".images")
    shutil.rmtree(staging, ignore_errors=True)
    shot_records = _copy_images(spec.shots, model.products, staging, SHOTS_DIR)
    calibration_records = _copy_images(spec.holdout, model.products, staging, CALIBRATION_DIR)
    for product, record in info.products.items():
        record.shots = shot_records[product]
        record.calibration_images = calibration_records[product]
    save_artifact(model, info, out, overwrite=True)
    for folder in (SHOTS_DIR, CALIBRATION_DIR):
        if (staging / folder).is_dir():
            shutil.move(str(staging / folder), str(out / folder))
    shutil.rmtree(staging, ignore_errors=True)
    return {
        "thresholds": {product: calibrations[product].threshold for product in model.products},
        "holdout": _scores(model, spec.holdout),
        "defects": _scores(model, spec.defects),
        "duration_s": round(duration, 2),
        "final_losses": summary.final_losses,
    }


def run(spec: ChildSpec) -> dict[str, Any]:
    torch.set_num_threads(spec.threads)
    resolve = backbone_loader(Path(spec.models_dir), _path(spec.weights))
    loaded: list[Backbone] = []

    def load(backbone_spec: BackboneSpec) -> Backbone:
        loaded.append(resolve(backbone_spec))  # kept: the candidate shares the frozen backbone, loaded once
        return loaded[-1]

    active, active_info = load_artifact(Path(spec.active), load)
    active = active.to(spec.device)
    report: dict[str, Any] = {
        "active": {
            "thresholds": dict(spec.active_thresholds),
            "holdout": _scores(active, spec.holdout),
            "defects": _scores(active, spec.defects),
        }
    }
    if spec.mode == "train":
        report["candidate"] = _train(spec, loaded[-1], active, active_info)
    return report


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m linewatch.retrain.child SPEC.json", file=sys.stderr)
        return 2
    spec = ChildSpec.read(Path(argv[0]))
    report = run(spec)
    partial = Path(spec.report).with_suffix(".partial")
    partial.write_text(json.dumps(report) + "\n")
    partial.replace(spec.report)  # the parent never reads half a report
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

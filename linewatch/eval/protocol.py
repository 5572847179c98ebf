"""The paper's few-shot protocol: per class, k shots, several seeds; train, score the test split, measure.

One *cell* is (class, k, seed) for per-class models, or (k, seed) for one multi-class model over
every class. Shots are drawn from the sorted training normals with the recorded seed. Each finished
cell is cached as JSON under ``<out>/cells/`` together with a fingerprint of everything that
changes its numbers, so a rerun skips finished cells and recomputes stale ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from linewatch.anople.backbone import Backbone
from linewatch.anople.model import AnoPLe
from linewatch.anople.settings import AnoPLeSettings
from linewatch.anople.train import train
from linewatch.eval.datasets import ClassSplit, TestSample
from linewatch.eval.metrics import aupro, f1_max, image_auroc, pixel_auroc
from linewatch.images import heatmap_overlay, read_rgb, write_image
from linewatch.model.preprocess import to_model_tensor
from linewatch.model.training import calibration_terms, draw_shots

CELLS = "cells"
EXAMPLES_PER_KIND = 2


@dataclass(frozen=True)
class EvalSettings:
    shots: tuple[int, ...] = (1, 2, 4)
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_size: int = 256  # maps and masks are compared at this square size
    batch_size: int = 16
    limit_test: int | None = None
    multi_class: bool = False
    device: str = "cpu"
    runtime: str = "torch"  # "openvino": each cell's model compiled at ``precision`` before it scores
    precision: str = "fp32"

    def __post_init__(self) -> None:
        allowed = {"torch": ("fp32", "bf16", "fp16"), "openvino": ("fp32", "bf16", "int8")}.get(self.runtime)
        if allowed is None or self.precision not in allowed:
            raise ValueError(f"runtime {self.runtime!r} scores in {allowed or ()}, not in {self.precision!r}")
        on_cpu = torch.device(self.device).type == "cpu"
        if self.runtime == "openvino" and not on_cpu:
            raise ValueError(f"runtime openvino scores on the CPU; device {self.device!r} needs runtime torch")
        if self.runtime == "torch" and on_cpu and self.precision != "fp32":
            raise ValueError(f"precision {self.precision!r} on the CPU needs runtime openvino")


@dataclass
class ClassResult:
    """Metrics of one class in one cell; pixel metrics are None for datasets without masks."""

    class_name: str
    shots: int
    seed: int
    image_auroc: float
    f1_max: float
    pixel_auroc: float | None
    aupro: float | None
    n_test: int
    n_anomalous: int
    shot_files: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # per fusion term ("global probability", "decoder map", "memory map", "fusion"): image and pixel AUROC
    terms: dict[str, dict[str, float | None]] = field(default_factory=dict)


def fingerprint(backbone: Backbone, model_settings: AnoPLeSettings, settings: EvalSettings, split: ClassSplit) -> str:
    """Hash of everything a cell's numbers depend on (not the seeds/shots lists: those name the cell)."""
    payload = {
        "backbone": asdict(backbone.spec),
        "model": model_settings.to_dict(),
        "eval_size": settings.eval_size,
        "limit_test": settings.limit_test,
        "multi_class": settings.multi_class,
        "runtime": [settings.runtime, settings.precision],
        "class": split.name,
        "prompt": split.prompt_name,
        "n_train": len(split.train_normals),
        "n_test": len(split.test),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def limited(test: Sequence[TestSample], limit: int | None) -> list[TestSample]:
    """An evenly spread subset (the list is sorted by defect type, so every type stays represented)."""
    if limit is None or limit >= len(test):
        return list(test)
    picks = np.unique(np.linspace(0, len(test) - 1, num=limit).round().astype(int))
    return [test[i] for i in picks]


def _read_mask(path: Path, size: int) -> np.ndarray:
    mask = read_rgb(path).max(axis=2) > 0
    return cv2.resize(mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0


@dataclass
class _Scored:
    samples: list[TestSample]
    scores: np.ndarray  # (N,)
    maps: np.ndarray  # (N, E, E) float32
    terms: Terms  # each fusion term alone (PyTorch runtime only)


# Each term of the fusion on its own: its image scores (B,) and its map (B, E, E) at the eval size, or None
Terms = dict[str, tuple[np.ndarray, np.ndarray | None]]
# (B, 3, S, S) images, (B,) product ids -> fused image scores (B,), fused maps (B, E, E), the terms
Predict = Callable[[torch.Tensor, torch.Tensor], tuple[np.ndarray, np.ndarray, Terms]]


def _predictor(model: AnoPLe, shots: dict[str, list[np.ndarray]], settings: EvalSettings) -> Predict:
    """How a cell's model scores: PyTorch (autocast precisions on CUDA), or compiled by OpenVINO."""
    if settings.runtime == "openvino":
        from linewatch.model.export import openvino_runner

        tensors = {name: to_model_tensor(images, model.input_size) for name, images in shots.items()}
        run = openvino_runner(model.to("cpu"), settings.precision, tensors, settings.eval_size)

        def compiled(images: torch.Tensor, ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray, Terms]:
            score, _, pixel_map = run(images.numpy(), ids.numpy(), np.full(ids.shape, -1, dtype=np.int64))
            return score, pixel_map, {}  # the compiled graph gives the fused outputs only

        return compiled
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[settings.precision]

    def eager(images: torch.Tensor, ids: torch.Tensor) -> tuple[np.ndarray, np.ndarray, Terms]:
        with torch.autocast(model.device.type, dtype=dtype, enabled=dtype is not None):
            prediction = model.predict(images, ids, out_size=settings.eval_size)
        terms: Terms = {"global probability": (prediction.global_probability.float().cpu().numpy(), None)}
        for name, grid in (("decoder map", prediction.decoder_map), ("memory map", prediction.memory_map)):
            spread = model.spread(grid, settings.eval_size).cpu().numpy()
            terms[name] = (spread.reshape(spread.shape[0], -1).max(axis=1), spread)
        return prediction.image_score.float().cpu().numpy(), prediction.pixel_map.float().cpu().numpy(), terms

    return eager


def _score_split(
    predict: Predict, product_id: int, size: int, samples: list[TestSample], settings: EvalSettings
) -> _Scored:
    scores, maps, batches = [], [], []
    for start in range(0, len(samples), settings.batch_size):
        chunk = samples[start : start + settings.batch_size]
        images = to_model_tensor([read_rgb(sample.path) for sample in chunk], size)
        score, pixel_map, terms = predict(images, torch.full((len(chunk),), product_id))
        scores.append(score)
        maps.append(pixel_map)
        batches.append(terms)
    joined: Terms = {
        name: (
            np.concatenate([terms[name][0] for terms in batches]),
            None if batches[0][name][1] is None else np.concatenate([terms[name][1] for terms in batches]),
        )
        for name in batches[0]
    }
    return _Scored(samples, np.concatenate(scores), np.concatenate(maps), joined)


def _measure(split: ClassSplit, scored: _Scored, size: int) -> dict[str, Any]:
    labels = np.array([sample.label for sample in scored.samples])
    result: dict[str, Any] = {
        "image_auroc": image_auroc(labels, scored.scores),
        "f1_max": f1_max(labels, scored.scores),
        "pixel_auroc": None,
        "aupro": None,
        "n_test": len(labels),
        "n_anomalous": int(labels.sum()),
    }
    if split.has_masks:
        masks = np.stack(
            [
                _read_mask(sample.mask, size) if sample.mask is not None else np.zeros((size, size), bool)
                for sample in scored.samples
            ]
        )
        result["pixel_auroc"] = pixel_auroc(masks, scored.maps)
        result["aupro"] = aupro(masks, scored.maps)
    if scored.terms:  # which part carries the result (issue 18, item 2)
        result["terms"] = {
            name: {
                "image_auroc": image_auroc(labels, term_scores),
                "pixel_auroc": pixel_auroc(masks, term_maps) if split.has_masks and term_maps is not None else None,
            }
            for name, (term_scores, term_maps) in scored.terms.items()
        }
        result["terms"]["fusion"] = {"image_auroc": result["image_auroc"], "pixel_auroc": result["pixel_auroc"]}
    return result


def write_examples(out: Path, split: ClassSplit, scored: _Scored, threshold: float | None) -> None:
    """Heatmaps a person can look at: the clearest detections, the worst misses, the worst false alarms."""
    order = np.argsort(scored.scores)
    anomalous = [i for i in order if scored.samples[i].label == 1]
    normal = [i for i in order if scored.samples[i].label == 0]
    picks = {
        "detected": anomalous[::-1][:EXAMPLES_PER_KIND],
        "missed": anomalous[:EXAMPLES_PER_KIND],
        "false_alarm": normal[::-1][:EXAMPLES_PER_KIND],
    }
    folder = out / "heatmaps" / split.name
    for kind, indices in picks.items():
        for rank, index in enumerate(indices):
            sample = scored.samples[index]
            image = read_rgb(sample.path)
            overlay = heatmap_overlay(image, scored.maps[index], threshold)
            name = f"{kind}-{rank}-{sample.defect_type}-{sample.path.stem}-{scored.scores[index]:.4f}.png"
            write_image(folder / name, overlay)


def _normal_threshold(scored: _Scored) -> float | None:
    """Pixel threshold for the overlays: the highest map value seen on a normal test image."""
    normal = [i for i, sample in enumerate(scored.samples) if sample.label == 0]
    return float(scored.maps[normal].max()) if normal else None


def _train_cell(
    backbone: Backbone, model_settings: AnoPLeSettings, splits: Sequence[ClassSplit], shots: int, seed: int, device: str
) -> tuple[AnoPLe, dict[str, list[Path]], dict[str, list[np.ndarray]]]:
    chosen = {}
    for split in splits:
        if len(split.train_normals) < shots:
            raise ValueError(f"class {split.name}: {len(split.train_normals)} training normals, fewer than k={shots}")
        chosen[split.name] = [split.train_normals[i] for i in draw_shots(len(split.train_normals), shots, seed)[0]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AnoPLe(backbone, model_settings, [s.name for s in splits], {s.name: s.prompt_name for s in splits}).to(
            device
        )
    images = {name: [read_rgb(path) for path in paths] for name, paths in chosen.items()}
    train(model, {name: to_model_tensor(batch, 2 * model.input_size) for name, batch in images.items()}, seed)
    for name, batch in images.items():
        model.build_memory(name, to_model_tensor(batch, model.input_size))
        # The k shots are all a cell has: the fusion scales come from them, as training without held-out
        # normals takes them (left out one at a time, or augmented for a single shot).
        _, _, terms = calibration_terms(model.eval(), name, [], batch, seed)
        model.fit_fusion_scales(name, terms)
    return model.eval(), chosen, images


def _cell_path(out: Path, label: str, shots: int, seed: int) -> Path:
    return out / CELLS / f"{label}__k{shots}__s{seed}.json"


def _load_cell(path: Path, expected: dict[str, str]) -> list[ClassResult] | None:
    if not path.is_file():
        return None
    try:
        cached = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a cell cut off mid-write is simply recomputed
    if cached.get("fingerprints") != expected:
        return None
    return [ClassResult(**entry) for entry in cached["results"]]


def run_protocol(
    splits: Sequence[ClassSplit],
    backbone: Backbone,
    model_settings: AnoPLeSettings,
    settings: EvalSettings,
    out: Path,
    on_cell: Callable[[str, bool], None] | None = None,
) -> list[ClassResult]:
    """Run (or read from the cache) every cell; ``on_cell(label, cached)`` reports progress."""
    groups = [list(splits)] if settings.multi_class else [[split] for split in splits]
    results: list[ClassResult] = []
    for group in groups:
        label = "multi" if settings.multi_class else group[0].name
        expected = {split.name: fingerprint(backbone, model_settings, settings, split) for split in group}
        for shots in settings.shots:
            for seed in settings.seeds:
                path = _cell_path(out, label, shots, seed)
                cached = _load_cell(path, expected)
                if cached is not None:
                    results.extend(cached)
                    if on_cell:
                        on_cell(f"{label} k={shots} seed={seed}", True)
                    continue
                started = time.monotonic()
                model, chosen, shot_images = _train_cell(backbone, model_settings, group, shots, seed, settings.device)
                predict = _predictor(model, shot_images, settings)
                cell = []
                for split in group:
                    shot_set = set(chosen[split.name])
                    samples = limited([s for s in split.test if s.path not in shot_set], settings.limit_test)
                    scored = _score_split(predict, model.product_index(split.name), model.input_size, samples, settings)
                    measured = _measure(split, scored, settings.eval_size)
                    if shots == max(settings.shots) and seed == settings.seeds[0]:
                        write_examples(out, split, scored, _normal_threshold(scored))
                    cell.append(
                        ClassResult(
                            class_name=split.name,
                            shots=shots,
                            seed=seed,
                            shot_files=[str(p) for p in chosen[split.name]],
                            seconds=round(time.monotonic() - started, 2),
                            **measured,
                        )
                    )
                path.parent.mkdir(parents=True, exist_ok=True)
                staging = path.with_suffix(".partial")
                staging.write_text(
                    json.dumps({"fingerprints": expected, "results": [asdict(r) for r in cell]}, indent=2)
                )
                staging.replace(path)
                results.extend(cell)
                if on_cell:
                    on_cell(f"{label} k={shots} seed={seed}", False)
    return results

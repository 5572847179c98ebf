"""Self-describing model artifacts: one JSON file plus safetensors, written atomically, never pickle.

Layout of an artifact directory::

    anople.json          format version, backbone (name, tag, sha256, preprocessing), settings,
                         products with thresholds, calibration and fusion scales, training record, metrics
    learned.safetensors  prompts, couplers, view tokens, decoder
    memory.safetensors   per product and memory block, the shots' normalised patch tokens
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from linewatch.anople.backbone import Backbone, BackboneSpec
from linewatch.anople.calibrate import Calibration
from linewatch.anople.files import FORMAT, FORMAT_VERSION, LEARNED, MANIFEST, MEMORY
from linewatch.anople.model import FUSION_SCALES, AnoPLe
from linewatch.anople.settings import AnoPLeSettings

BackboneLoader = Callable[[BackboneSpec], Backbone]


class ArtifactError(ValueError):
    """An artifact directory that cannot be used; the message names the directory and the problem."""


@dataclass
class ProductRecord:
    name: str
    calibration: Calibration
    shots: list[dict[str, str]] = field(default_factory=list)  # [{"file": ..., "path": ..., "sha256": ...}]
    # The normals the threshold was calibrated on, same form: a later retrain judges and calibrates on them
    # too, so a version fitted to a new appearance cannot silently forget the old one.
    calibration_images: list[dict[str, str]] = field(default_factory=list)


@dataclass
class ArtifactInfo:
    """Everything in anople.json besides the tensors."""

    products: dict[str, ProductRecord]
    training: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    linewatch_version: str = ""

    def threshold(self, product: str) -> float:
        return self.products[product].calibration.threshold


def _manifest(model: AnoPLe, info: ArtifactInfo) -> dict[str, Any]:
    spec = model.backbone_spec
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_at": info.created_at,
        "linewatch_version": info.linewatch_version,
        "backbone": {
            "model_name": spec.model_name,
            "pretrained": spec.pretrained,
            "weights_sha256": spec.weights_sha256,
            "init_seed": spec.init_seed,
            "force_quick_gelu": spec.force_quick_gelu,
            "random_weights": spec.is_random,
            "input_size": model.input_size,
            "mean": model.mean.flatten().tolist(),
            "std": model.std.flatten().tolist(),
            "resize": "squash",
        },
        "settings": model.settings.to_dict(),
        "decoder_layers": list(model.decoder_layers),
        "memory_layers": list(model.memory_layers),
        "products": [
            {
                "name": name,
                "prompt_words": model.prompt_words[name],
                "calibration": record.calibration.to_dict(),
                **(
                    {"fusion_scales": dict(zip(FUSION_SCALES, model.fusion_scales[name].tolist(), strict=True))}
                    if name in model.fusion_scales
                    else {}
                ),
                "shots": record.shots,
                "calibration_images": record.calibration_images,
            }
            for name, record in ((p, info.products[p]) for p in model.products)
        ],
        "training": info.training,
        "metrics": info.metrics,
    }


def save_artifact(model: AnoPLe, info: ArtifactInfo, directory: Path, overwrite: bool = False) -> None:
    """Write to a temporary sibling directory, then rename, so readers never see half an artifact."""
    scaled = model.settings.fusion == "scaled_mean"
    missing = [
        p
        for p in model.products
        if p not in info.products or p not in model.memory or (scaled and p not in model.fusion_scales)
    ]
    if missing:
        raise ArtifactError(f"{directory}: products {missing} lack a calibration, a memory bank or fusion scales")
    if directory.exists() and not overwrite:
        raise ArtifactError(f"{directory}: already exists; choose another name or pass overwrite")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        learned = {k: v.detach().to("cpu").contiguous() for k, v in model.learned_parameters().items()}
        save_file(learned, str(staging / LEARNED))
        memory = {
            f"memory.{index}.{layer}": bank.detach().to("cpu").contiguous()
            for index, product in enumerate(model.products)
            for layer, bank in model.memory[product].items()
        }
        save_file(memory, str(staging / MEMORY))
        (staging / MANIFEST).write_text(json.dumps(_manifest(model, info), indent=2) + "\n")
        if directory.exists():
            retired = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(retired, ignore_errors=True)
            os.replace(directory, retired)
            os.replace(staging, directory)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse and check anople.json; ArtifactError names what is missing or of the wrong version."""
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: model directory not found")
    if not manifest_path.is_file():
        raise ArtifactError(f"{directory}: not a linewatch model (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{manifest_path}: corrupt JSON ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path}: not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{manifest_path}: format version {version} is not supported (this linewatch reads {FORMAT_VERSION})"
        )
    for key in ("backbone", "settings", "products", "training"):
        if key not in manifest:
            raise ArtifactError(f"{manifest_path}: missing key {key!r}")
    return manifest


def backbone_spec_of(manifest: dict[str, Any], directory: Path) -> BackboneSpec:
    backbone = manifest["backbone"]
    for key in ("model_name", "pretrained", "weights_sha256"):
        if not isinstance(backbone, dict) or not isinstance(backbone.get(key), str):
            raise ArtifactError(f"{directory / MANIFEST}: backbone.{key} is missing or not a string")
    seed = backbone.get("init_seed")
    if seed is not None and not isinstance(seed, int):
        raise ArtifactError(f"{directory / MANIFEST}: backbone.init_seed must be an integer or null")
    return BackboneSpec(
        model_name=backbone["model_name"],
        pretrained=backbone["pretrained"],
        weights_sha256=backbone["weights_sha256"],
        init_seed=seed,
        force_quick_gelu=bool(backbone.get("force_quick_gelu", False)),
    )


def _products(entries: Any, manifest_path: Path) -> tuple[dict[str, ProductRecord], dict[str, str]]:
    """The products of a manifest, each checked: a unique non-empty name, its calibration (finite
    thresholds in the score range, see Calibration.from_dict), prompt words, and lists of image records."""
    if not isinstance(entries, list) or not entries:
        raise ArtifactError(f"{manifest_path}: products must be a non-empty list")
    products: dict[str, ProductRecord] = {}
    words: dict[str, str] = {}
    for index, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name.strip() or name in products:
            raise ArtifactError(f"{manifest_path}: products[{index}].name must be a unique non-empty string")
        where = f"{manifest_path}: product {name!r}"
        try:
            calibration = Calibration.from_dict(entry.get("calibration"))
        except ValueError as error:
            raise ArtifactError(f"{where}: {error}") from error
        prompt_words = entry.get("prompt_words", name)
        if not isinstance(prompt_words, str) or not prompt_words.strip():
            raise ArtifactError(f"{where}: prompt_words must be a non-empty string")
        records = {}
        for key in ("shots", "calibration_images"):
            value = entry.get(key, [])
            if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
                raise ArtifactError(f"{where}: {key} must be a list of objects")
            records[key] = list(value)
        products[name] = ProductRecord(name, calibration, records["shots"], records["calibration_images"])
        words[name] = prompt_words
    return products, words


def _fusion_scales(value: Any, where: str) -> torch.Tensor | None:
    """A product's recorded fusion scales, checked: every name of FUSION_SCALES, each finite and positive
    (they divide the terms); None when the product has none (artifacts of the harmonic fusion)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != set(FUSION_SCALES):
        raise ArtifactError(f"{where}: fusion_scales must be an object with exactly {', '.join(FUSION_SCALES)}")
    for name in FUSION_SCALES:
        number = value[name]
        if isinstance(number, bool) or not isinstance(number, int | float) or not math.isfinite(number) or number <= 0:
            raise ArtifactError(f"{where}: fusion_scales.{name} must be a finite number above 0, got {number!r}")
    return torch.tensor([float(value[name]) for name in FUSION_SCALES])


def _load_tensors(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ArtifactError(f"{path}: missing from the model directory")
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises several private error types
        raise ArtifactError(f"{path}: corrupt safetensors file ({error})") from error


@dataclass(frozen=True)
class ArtifactSummary:
    """What a runtime needs to know of a model without building it: products in index order, the
    backbone it was trained on, its input size, and the recorded info."""

    products: list[str]
    backbone: BackboneSpec
    input_size: int
    info: ArtifactInfo
    settings: AnoPLeSettings  # fusion and blur: a remote scorer rebuilds maps with them


def read_artifact(directory: Path) -> ArtifactSummary:
    """The manifest's contents, checked as :func:`load_artifact` checks them, without torch tensors: an
    exported model scores without the PyTorch model."""
    manifest = read_manifest(directory)
    spec = backbone_spec_of(manifest, directory)
    products, _ = _products(manifest["products"], directory / MANIFEST)
    size = manifest["backbone"].get("input_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ArtifactError(f"{directory / MANIFEST}: backbone.input_size must be a positive integer, got {size!r}")
    try:
        settings = AnoPLeSettings.from_dict(manifest["settings"])
    except (TypeError, ValueError, KeyError) as error:
        raise ArtifactError(f"{directory / MANIFEST}: malformed settings ({error})") from error
    return ArtifactSummary(list(products), spec, size, _info(manifest, products), settings)


def _info(manifest: dict[str, Any], products: dict[str, ProductRecord]) -> ArtifactInfo:
    return ArtifactInfo(
        products=products,
        training=manifest["training"],
        metrics=manifest.get("metrics", {}),
        created_at=manifest.get("created_at", ""),
        linewatch_version=manifest.get("linewatch_version", ""),
    )


def load_artifact(directory: Path, load_backbone: BackboneLoader) -> tuple[AnoPLe, ArtifactInfo]:
    """Rebuild the model exactly as saved. ``load_backbone`` resolves the recorded backbone spec to
    weights; the sha256 of what it loaded must equal the recorded one."""
    manifest = read_manifest(directory)
    expected = backbone_spec_of(manifest, directory)
    backbone = load_backbone(expected)
    if backbone.spec.model_name != expected.model_name or backbone.spec.weights_sha256 != expected.weights_sha256:
        raise ArtifactError(
            f"{directory}: backbone mismatch: the model was trained on {expected.model_name} "
            f"({expected.pretrained}, sha256 {expected.weights_sha256[:12]}...) but the weights found are "
            f"{backbone.spec.model_name} ({backbone.spec.pretrained}, sha256 {backbone.spec.weights_sha256[:12]}...)"
        )
    try:
        settings = AnoPLeSettings.from_dict(manifest["settings"])
    except (KeyError, TypeError, ValueError) as error:
        raise ArtifactError(f"{directory / MANIFEST}: malformed settings or products ({error})") from error
    products, words = _products(manifest["products"], directory / MANIFEST)
    model = AnoPLe(backbone, settings, list(products), words)
    learned = _load_tensors(directory / LEARNED)
    broken = sorted(name for name, tensor in learned.items() if not tensor.isfinite().all())
    if broken:  # one NaN prompt makes every score NaN
        raise ArtifactError(f"{directory / LEARNED}: non-finite values in {broken[:5]}")
    try:
        model.load_learned_parameters(learned)
    except RuntimeError as error:
        raise ArtifactError(f"{directory / LEARNED}: does not fit the recorded settings ({error})") from error
    memory = _load_tensors(directory / MEMORY)
    width = model.clip.visual.transformer.width
    for index, product in enumerate(model.products):
        bank = {layer: memory.get(f"memory.{index}.{layer}") for layer in model.memory_layers}
        for layer, tensor in bank.items():
            if tensor is None:
                raise ArtifactError(f"{directory / MEMORY}: no memory bank for product {product!r}")
            # (k * N, d_v) unit vectors: another width would fail at the first frame, NaN would score NaN
            if tensor.ndim != 2 or tensor.shape[0] < 1 or tensor.shape[1] != width or not tensor.isfinite().all():
                raise ArtifactError(
                    f"{directory / MEMORY}: memory.{index}.{layer} of product {product!r} must be finite with "
                    f"shape (patches, {width}), got {tuple(tensor.shape)}"
                )
        model.memory[product] = bank
    for entry in manifest["products"]:
        scales = _fusion_scales(entry.get("fusion_scales"), f"{directory / MANIFEST}: product {entry['name']!r}")
        if scales is not None:
            model.fusion_scales[entry["name"]] = scales
        elif settings.fusion == "scaled_mean":
            raise ArtifactError(
                f"{directory / MANIFEST}: product {entry['name']!r} has no fusion_scales, which the "
                f"scaled_mean fusion needs (retrain the model)"
            )
    model.eval()
    model.refresh_text_cache()
    return model, _info(manifest, products)

"""Backbone weights under ``models/``: pull once on a connected machine, resolve offline ever after.

Layout: ``models/backbones/<model>/<tag>.safetensors`` with a ``<tag>.json`` beside it recording the
sha256, the source and the open_clip options the weights need (QuickGELU for OpenAI checkpoints).
Nothing here downloads at run time: only ``pull`` touches the network, and only when asked.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import open_clip
import torch
from safetensors.torch import save_file

from linewatch.anople.artifact import read_manifest
from linewatch.anople.backbone import (
    Backbone,
    BackboneError,
    BackboneSpec,
    config_normalisation,
    file_sha256,
    load_backbone_file,
    load_random_backbone,
    tag_normalisation,
)
from linewatch.anople.files import MANIFEST, RANDOM_WEIGHTS
from linewatch.anople.settings import FUSION_BEFORE_THE_SETTING

BACKBONES = "backbones"


@dataclass(frozen=True)
class WeightsFile:
    model_name: str
    pretrained: str
    path: Path
    meta: dict[str, Any]


def weights_path(models_dir: Path, model_name: str, pretrained: str) -> Path:
    return models_dir / BACKBONES / model_name / f"{pretrained}.safetensors"


def _write_weights(models_dir: Path, model_name: str, pretrained: str, clip: torch.nn.Module, source: str) -> Path:
    """Save a loaded model's state dict as safetensors plus its sidecar, atomically."""
    target = weights_path(models_dir, model_name, pretrained)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial")
    state = {k: v.detach().to("cpu").contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(staging))
    os.replace(staging, target)
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    mean, std = tag_normalisation(model_name, pretrained, config_normalisation(clip))
    meta = {
        "model_name": model_name,
        "pretrained": pretrained,
        "sha256": file_sha256(target),
        "force_quick_gelu": bool(cfg.get("quick_gelu", False)),
        "preprocess": {"mean": list(mean), "std": list(std)},  # what these weights expect; used at load
        "source": source,
        "fetched_from": cfg.get("hf_hub") or cfg.get("url") or None,  # laion400m_e32 is e31 on the hub
        "saved_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    target.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return target


def pull(model_name: str, pretrained: str, models_dir: Path) -> Path:
    """Download through open_clip's own downloader (connected machine only), store as safetensors."""
    if not open_clip.get_pretrained_cfg(model_name, pretrained):
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise BackboneError(f"open_clip has no pretrained tag {pretrained!r} for {model_name!r}; known tags: {tags}")
    with tempfile.TemporaryDirectory(prefix="linewatch-pull-") as cache:
        clip = open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache, require_pretrained=True)
        return _write_weights(models_dir, model_name, pretrained, clip, source=f"open_clip:{model_name}/{pretrained}")


def import_checkpoint(model_name: str, pretrained: str, checkpoint: Path, models_dir: Path) -> Path:
    """Convert a checkpoint file copied by hand (e.g. onto an air-gapped PC) into the models/ layout.

    open_clip loads it with ``weights_only=True`` (no code execution); the result is safetensors, so the
    daemon never unpickles anything.
    """
    if not checkpoint.is_file():
        raise BackboneError(f"{checkpoint}: checkpoint file not found")
    try:
        clip = open_clip.create_model(
            model_name,
            pretrained=str(checkpoint),
            weights_only=True,
            require_pretrained=True,
            force_quick_gelu=bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False)),
        )
    except Exception as error:  # unpickling, shape and assertion errors all mean "not this model's weights"
        raise BackboneError(
            f"{checkpoint}: cannot be read as {model_name} weights ({type(error).__name__}: {error})"
        ) from error
    return _write_weights(models_dir, model_name, pretrained, clip, source=f"file:{checkpoint.name}")


def read_weights_meta(path: Path) -> dict[str, Any]:
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except json.JSONDecodeError as error:
        raise BackboneError(f"{sidecar}: corrupt sidecar JSON ({error})") from error


def load_backbone(
    model_name: str,
    pretrained: str,
    models_dir: Path,
    weights: Path | None = None,
    random_seed: int = 0,
) -> Backbone:
    """Resolve a backbone offline: explicit file, ``models/`` by tag, or random weights when asked."""
    if pretrained == RANDOM_WEIGHTS:
        return load_random_backbone(model_name, random_seed)
    if weights is not None:
        meta = read_weights_meta(weights)
        return load_backbone_file(
            model_name,
            weights,
            pretrained=pretrained,
            force_quick_gelu=bool(meta.get("force_quick_gelu", False)),
            normalisation=_recorded_normalisation(meta, weights),
        )
    path = weights_path(models_dir, model_name, pretrained)
    if not path.is_file():
        raise BackboneError(
            f"backbone weights {model_name}/{pretrained} not found at {path}; on a connected machine run "
            f"'linewatch model pull {model_name} {pretrained}' and copy its models/ folder here"
        )
    meta = read_weights_meta(path)
    return load_backbone_file(
        model_name,
        path,
        pretrained=pretrained,
        force_quick_gelu=bool(meta.get("force_quick_gelu", False)),
        normalisation=_recorded_normalisation(meta, path),
    )


def _recorded_normalisation(meta: dict[str, Any], weights: Path) -> tuple[object, object] | None:
    """The sidecar's (mean, std); None for a sidecar written before they were recorded (the tag's are used)."""
    preprocess = meta.get("preprocess")
    if preprocess is None:
        return None
    if not isinstance(preprocess, dict) or "mean" not in preprocess or "std" not in preprocess:
        raise BackboneError(f"{weights.with_suffix('.json')}: preprocess must hold mean and std")
    return preprocess["mean"], preprocess["std"]


def backbone_loader(models_dir: Path, weights: Path | None = None):
    """A loader for ``load_artifact`` that resolves the spec an artifact recorded."""

    def load(spec: BackboneSpec) -> Backbone:
        if spec.is_random:
            return load_random_backbone(spec.model_name, spec.init_seed or 0)
        if spec.pretrained == "file" and weights is None:
            raise BackboneError(
                f"the model was trained on a backbone given as an explicit file ({spec.model_name}); "
                "pass the same file with --weights"
            )
        return load_backbone(spec.model_name, spec.pretrained, models_dir, weights)

    return load


def list_weights(models_dir: Path) -> list[WeightsFile]:
    found = []
    for path in sorted((models_dir / BACKBONES).glob("*/*.safetensors")):
        found.append(WeightsFile(path.parent.name, path.stem, path, read_weights_meta(path)))
    return found


def list_artifacts(models_dir: Path) -> list[Path]:
    """Model directories (anything with an anople.json), searched up to two levels below models/."""
    found = {p.parent for p in models_dir.glob(f"*/{MANIFEST}")} | {
        p.parent for p in models_dir.glob(f"*/*/{MANIFEST}")
    }
    return sorted(p for p in found if not p.name.startswith("."))


def describe_artifact(directory: Path) -> dict[str, Any]:
    manifest = read_manifest(directory)
    return {
        "path": str(directory),
        "backbone": manifest["backbone"],
        "fusion": manifest["settings"].get("fusion", FUSION_BEFORE_THE_SETTING),
        "products": {
            entry["name"]: {
                "threshold": entry["calibration"]["threshold"],
                "target_frr": entry["calibration"]["target_frr"],
                "calibration_source": entry["calibration"]["source"],
                "shots": len(entry.get("shots", [])),
                **({"fusion_scales": entry["fusion_scales"]} if "fusion_scales" in entry else {}),
            }
            for entry in manifest["products"]
        },
        "training": manifest["training"],
        "created_at": manifest.get("created_at"),
    }


def describe_weights(path: Path) -> dict[str, Any]:
    meta = read_weights_meta(path)
    return {"path": str(path), "size_bytes": path.stat().st_size, **meta}

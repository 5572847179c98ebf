"""What a version folder records, read and written for a retraining run: the images it names (shots and
calibration normals), its manifest's hash and creation time, and a copy with recalibrated thresholds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from linewatch.anople.artifact import read_manifest
from linewatch.anople.backbone import file_sha256
from linewatch.anople.files import LEARNED, MANIFEST, MEMORY
from linewatch.retrain.child import SHOTS_DIR

log = logging.getLogger("linewatch.retrain.runner")  # one logger for a run, whichever module speaks


def manifest_sha256(directory: Path) -> str:
    return hashlib.sha256((directory / MANIFEST).read_bytes()).hexdigest()


def recorded_images(artifact: Path, manifest: dict[str, Any], key: str) -> dict[str, list[Path]]:
    """The images a version recorded under ``key`` ("shots" or "calibration_images"), per product, that
    still exist with the recorded content.

    Versions made by retraining carry copies (paths relative to the artifact); a model trained with
    ``linewatch train`` names its source files (older ones relative to the folder training ran in,
    usually the daemon's too), which may have moved since."""
    found: dict[str, list[Path]] = {}
    for entry in manifest["products"]:
        paths = []
        for shot in entry.get(key, []):
            recorded = Path(shot.get("path", ""))
            inside = artifact / recorded
            path = inside if not recorded.is_absolute() and inside.is_file() else recorded
            if path.is_file() and file_sha256(path) == shot.get("sha256"):
                paths.append(path)
            else:
                log.warning("retrain: %s %s of %s is missing or changed; going without it", key, path, artifact)
        found[entry["name"]] = paths
    return found


def created_at_of(manifest: dict[str, Any], fallback: datetime) -> datetime:
    stamp = manifest.get("created_at")
    if not isinstance(stamp, str):
        return fallback
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return fallback
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def copy_recalibrated(
    active: Path, staging: Path, thresholds: dict[str, tuple[float, int]], parent: str, now: datetime
) -> None:
    """A new version identical to ``active`` but for the thresholds; the tensors are copied bit for bit."""
    for name in (LEARNED, MEMORY):
        shutil.copy2(active / name, staging / name)
    if (active / SHOTS_DIR).is_dir():
        shutil.copytree(active / SHOTS_DIR, staging / SHOTS_DIR)
    manifest = read_manifest(active)
    for entry in manifest["products"]:
        if entry["name"] in thresholds:
            value, count = thresholds[entry["name"]]
            calibration = entry["calibration"]
            calibration["threshold"] = value
            calibration["source"] = f"recalibrated from {count} confirmed normals (bounded step)"
            calibration["n_normals"] = count
        # shots recorded relative to the parent stay valid: the shots folder was copied with them
    manifest["training"] = {**manifest["training"], "mode": "recalibration", "parent_version": parent}
    manifest["created_at"] = now.isoformat(timespec="seconds")
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

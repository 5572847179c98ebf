"""The names of the files in a model (artifact) folder, and the pretrained tag for random weights.

Kept apart from :mod:`linewatch.anople.artifact` and :mod:`linewatch.anople.backbone` because those import
torch, open_clip and safetensors: the command line and the version registry name these files without
paying seconds of imports for a listing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

FORMAT = "linewatch-anople"
FORMAT_VERSION = 1
MANIFEST = "anople.json"
LEARNED = "learned.safetensors"
MEMORY = "memory.safetensors"

RANDOM_WEIGHTS = "none"  # the pretrained tag that asks for random weights (demo and tests, announced loudly)


def model_version(path: Path) -> str:
    """Stable id of a trained model: its folder name and the first 10 hex digits of its manifest's sha256.
    The registry records it, each verdict carries it, and a scoring server finds the folder by it."""
    digest = hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()[:10]
    return f"{path.name}@{digest}"

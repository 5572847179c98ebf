"""The names of the files in a model (artifact) folder, and the pretrained tag for random weights.

Kept apart from :mod:`linewatch.anople.artifact` and :mod:`linewatch.anople.backbone` because those import
torch, open_clip and safetensors: the command line and the version registry name these files without
paying seconds of imports for a listing.
"""

from __future__ import annotations

FORMAT = "linewatch-anople"
FORMAT_VERSION = 1
MANIFEST = "anople.json"
LEARNED = "learned.safetensors"
MEMORY = "memory.safetensors"

RANDOM_WEIGHTS = "none"  # the pretrained tag that asks for random weights (demo and tests, announced loudly)

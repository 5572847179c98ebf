"""The model's files and its making, around the pure method in ``anople``.

``weights`` (backbone weights on disk: pull on a connected machine, import a copied checkpoint, load),
``preprocess`` (RGB frames -> model input tensors: the one resize path that training, the memory bank and
scoring share, so the camera threads resize exactly as training did) and ``training`` (train, calibrate
and save an artifact from folders of normal images).

May import: the shared modules at the top of the package and ``anople``. The frame path, ``eval`` and
``retrain`` build on this package; it imports none of them.
"""

import os
from pathlib import Path

# Where backbone weights and trained models live unless a command or the config says otherwise. Here, not in
# ``weights`` (which imports torch), so the command line builds its parser without the model's imports.
DEFAULT_MODELS_DIR = Path(os.environ.get("LINEWATCH_MODELS", "models"))

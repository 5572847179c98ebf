"""``linewatch serve``: a Triton Inference Server (through PyTriton) that scores frames for many lines.

Layer: imports :mod:`linewatch.anople` and :mod:`linewatch.model` only, because the server runs in its own
environment (``.venv-serve``: Debian's Python 3.11 and numpy below 2, which PyTriton needs) that holds
torch, open_clip and PyTriton but none of the daemon's dependencies (docs/serving.md).
"""

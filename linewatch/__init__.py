"""linewatch: production-line visual inspection with few-shot AnoPLe anomaly detection.

The package is layered; each subpackage's docstring says what it may import, and
tests/test_layers.py holds the arrows. From the bottom: the shared value modules here (``config``,
``types``, ``clock``, ``images``, ``backoff``, ``feedback``) and ``anople`` (the pure method);
``model`` (weights, preprocessing, training); ``pipeline`` (the frame's path) and ``eval``; ``sinks``;
``retrain`` and ``web``; ``daemon`` (the running service); ``cli`` on top. docs/architecture.md has the
tree and the data flow.
"""

__version__ = "0.1.0"

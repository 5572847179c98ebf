"""The command line: ``main`` (the whole parser and the entry point; it imports a command's module only when
that command runs), the commands by what they import (``model``: train, score, eval, weights; ``ops``:
label, db upgrade; ``retrain``: retrain, rollback; ``versions``: model versions; ``status``), ``demo``,
``client`` (talks to a running daemon over its HTTP port) and ``console`` (progress bars and the
random-weights banner).

The top layer: may import anything in linewatch; nothing imports it.
"""

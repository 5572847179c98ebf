"""The command line: ``main`` (the parser and the entry point), one module per command group (``model``:
train, score, eval, weights; ``ops``: label, db upgrade; ``retrain``: retrain, versions, rollback;
``status``), ``demo``, ``client`` (talks to a running daemon over its HTTP port) and ``console`` (progress
bars and the random-weights banner).

The top layer: may import anything in linewatch; nothing imports it.
"""

"""The frame's path through the line PC, in data-flow order.

``camera/`` (sources and one reader thread per camera) -> ``batcher`` (bounded per-camera slots, batches
cut for the scorer) -> ``scorer`` (the model on the scoring thread: frames in, verdicts and pixel maps
out) -> ``events`` (defect episodes from verdicts, pure) -> ``journal/`` (the durable local outbox, and
the forwarders that replay it to the sinks in order).

May import: the shared modules at the top of the package (config, types, clock, images, backoff,
feedback), ``anople`` and ``model``. Never ``sinks``, ``web``, ``retrain``, ``daemon`` or ``cli``: what
the journal's records become is the business of the forwarders that the daemon wires to it.
"""

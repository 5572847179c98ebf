"""Retraining: gather confirmed samples, train a candidate in a child process, gate it, and record versions
and runs.

May import: the shared modules, ``anople``, ``model`` and ``sinks`` (the store it reads samples from and
records runs in). Never ``pipeline``, ``web``, ``daemon`` or ``cli``: the daemon hands it the callables
that swap a model into service.
"""

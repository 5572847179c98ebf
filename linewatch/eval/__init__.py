"""Evaluation: dataset readers, metrics and the few-shot protocol of the AnoPLe paper.

May import: the shared modules, ``anople`` and ``model``; nothing of the running service.
"""

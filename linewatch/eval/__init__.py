"""Evaluation: dataset readers, metrics and the few-shot protocol of the AnoPLe paper."""

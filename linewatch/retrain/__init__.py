"""Retraining: gather confirmed samples, train a candidate, gate it, and record versions and runs."""

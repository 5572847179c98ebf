"""``linewatch model versions``: the line's model versions from the folder, with their status and the latest
retrain runs from the store.

Apart from :mod:`linewatch.cli.retrain` (which loads models, so it imports torch) because this is a listing
an operator runs often: it imports the config, the version folder and SQLAlchemy only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from linewatch.config import load_config
from linewatch.retrain.store import list_runs, list_versions
from linewatch.retrain.versions import ModelRegistry
from linewatch.sinks.db import DatabaseError, LineScope, make_engine

RUNS_SHOWN = 5


def cmd_model_versions(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    registry = ModelRegistry(config.versions_dir, config.model.path)
    rows: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    engine = make_engine(config.store_url, LineScope.of(config.site))
    try:
        rows = {Path(row["artifact_path"]).name: row for row in list_versions(engine)}
        runs = list_runs(engine, RUNS_SHOWN)
    except DatabaseError as problem:
        print(f"(store not readable, showing the folder only: {problem})")
    finally:
        engine.dispose()
    print(f"versions in {config.versions_dir} (newest last):")
    for entry in registry.versions():
        row = rows.get(entry.name, {})
        marker = "*" if entry.active else " "
        status = row.get("status", "-")
        reason = f"  {row['reason']}" if row.get("reason") else ""
        print(f" {marker} {entry.name:<28} {entry.created_at:<26} {status:<9} {entry.path}{reason}")
    if runs:
        print("latest retrain runs:")
    for run in runs:
        started = run["started_at"].isoformat(timespec="seconds")
        print(f"   #{run['id']:<5} {started:<26} {run['status']:<12} {run['trigger']}: {run['reason'] or ''}")
    return 0

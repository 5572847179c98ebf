"""Rows of the main store's ``inspections`` table for tests that read the store directly (retraining's
queries, the page's queries, the page itself): every column the daemon fills, so each test names only the
columns it is about."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert

from linewatch.sinks.db_schema import Inspection


def inspection_row(inspection_id: str, frame_ts: datetime, position: int = 0, **values: Any) -> dict[str, Any]:
    """A complete row: a normal frame on cam1 scored 0.1 against 0.5, with a snapshot named after its id,
    unlabelled; ``position`` is its journal position (and seq); ``values`` override any column."""
    row: dict[str, Any] = {
        "id": inspection_id,
        "camera": "cam1",
        "product": "metal plate",
        "seq": position,
        "frame_ts": frame_ts,
        "score": 0.1,
        "threshold": 0.5,
        "verdict": "normal",
        "model_version": "v1",
        "part_id": None,
        "snapshot": f"cam1/{inspection_id}.jpg",
        "heatmap": None,
        "label": None,
        "label_source": None,
        "label_user": None,
        "labelled_at": None,
        "trained_into": None,
        "journal_position": position,
    }
    return {**row, **values}


def insert_inspections(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(Inspection), rows)

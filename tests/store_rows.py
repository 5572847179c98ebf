"""Rows of the main store's ``inspections`` table for tests that read the store directly (retraining's
queries, the page's queries, the page itself): every column the daemon fills, so each test names only the
columns it is about. They belong to the line of a plain ``make_engine(url)`` (DEFAULT_SCOPE) unless a test
names another ``site`` and ``line``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, insert

from linewatch.sinks.db import DEFAULT_SCOPE
from linewatch.sinks.db_schema import Inspection
from linewatch.sinks.rollups import add_minutes, minute_counts


def inspection_row(inspection_id: str, frame_ts: datetime, position: int = 0, **values: Any) -> dict[str, Any]:
    """A complete row of DEFAULT_SCOPE's line: a normal frame on cam1 scored 0.1 against 0.5, with a snapshot
    named after its id, unlabelled; ``position`` is its journal position (and seq); ``values`` override any
    column."""
    row: dict[str, Any] = {
        **DEFAULT_SCOPE.columns(),
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


def insert_counted_inspections(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Insert rows and count them into their minutes and hours in the same transaction, as the DB forwarder
    does when they arrive: for tests of what reads or deletes them (retention, the dashboards)."""
    with engine.begin() as conn:
        conn.execute(insert(Inspection), rows)
        add_minutes(conn, minute_counts(rows))

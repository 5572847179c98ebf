"""How long migration 0008 (site and line on every row, day partitions on PostgreSQL, roll-ups for every row)
takes on a store that holds a line's history: the downtime to plan for the upgrade.

A store at 0007 (a temporary SQLite file, or a throwaway PostgreSQL with --postgres) gets ``--rows``
inspections of one line over ``--days`` days, bulk inserted; then ``upgrade_database`` runs 0008 as the daemon's
start would, timed, and the rows are counted again.

    python benchmarks/store_migration.py --rows 1000000
    python benchmarks/store_migration.py --postgres --rows 1000000
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic import command
from sqlalchemy import Engine, MetaData, func, insert, select

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from linewatch.sinks.db import LineScope, make_engine, write_transaction  # noqa: E402
from linewatch.sinks.db_migrate import alembic_config, upgrade_database  # noqa: E402


@contextlib.contextmanager
def store(postgres: bool, folder: Path) -> Iterator[str]:
    if not postgres:
        yield f"sqlite:///{folder / 'linewatch.sqlite3'}"
        return
    from tests.services.postgres import PostgresServer

    server = PostgresServer(durable=True)
    try:
        server.start()
        yield server.create_database()
    finally:
        server.cleanup()


def fill_0007(engine: Engine, rows: int, days: float, seed: int = 5) -> None:
    """``rows`` inspections of 0007's shape (no site or line), through its reflected table."""
    metadata = MetaData()
    metadata.reflect(engine, only=["inspections"])
    table = metadata.tables["inspections"]
    generator = random.Random(seed)
    end = datetime.now(UTC)
    sqlite = engine.dialect.name == "sqlite"
    chunk = []
    for index in range(rows):
        frame_ts = end - timedelta(days=days * (1 - index / rows))
        defect = generator.random() < 0.02
        chunk.append({
            "id": f"cam{index % 4}-boot-{index}", "camera": f"cam{index % 4}", "product": "plate", "seq": index,
            "frame_ts": frame_ts.replace(tzinfo=None) if sqlite else frame_ts, "score": generator.random(),
            "threshold": 0.5, "verdict": "defect" if defect else "normal", "model_version": "v1", "part_id": None,
            "snapshot": f"cam/{index}.jpg" if defect else None, "heatmap": None, "label": None,
            "label_source": None, "label_user": None, "labelled_at": None, "trained_into": None,
            "journal_position": index,
        })  # fmt: skip
        if len(chunk) == 20_000 or index == rows - 1:
            with engine.begin() as conn:
                conn.execute(insert(table), chunk)
            chunk = []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0, help="the rows' time span (PostgreSQL: a partition a day)")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL instead of SQLite")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="linewatch-migration-bench-") as folder,
        store(args.postgres, Path(folder)) as url,
    ):
        engine = make_engine(url)
        with write_transaction(engine) as conn:
            command.upgrade(alembic_config(conn), "0007")
        began = time.monotonic()
        fill_0007(engine, args.rows, args.days)
        print(f"{engine.dialect.name}: {args.rows:,} rows at 0007 over {args.days:g} days, "
              f"inserted in {time.monotonic() - began:.0f} s")  # fmt: skip
        began = time.monotonic()
        upgrade_database(url, Path(folder) / "backups", scope=LineScope("plant", "press-3"))
        seconds = time.monotonic() - began
        metadata = MetaData()
        metadata.reflect(engine, only=["inspections", "inspection_minutes", "inspection_hours"])
        with engine.connect() as conn:
            counts = {name: conn.scalar(select(func.count()).select_from(t)) for name, t in metadata.tables.items()}
        print(f"upgraded to 0008 in {seconds:.1f} s ({args.rows / seconds:,.0f} rows/s, backup included on SQLite); "
              f"rows after: {counts}")  # fmt: skip
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

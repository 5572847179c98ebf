"""A partial index for the review queue's close calls: unlabelled inspections with a snapshot, by frame time.

Without it the queue walks every frame of its window (a day: millions of rows on a busy line) to find the
few with evidence. Plain CREATE/DROP INDEX, no batch mode: SQLite does both in place, and batch mode would
copy the whole inspections table. The WHERE is the same text on both dialects and stays a literal here
(not imported from db_schema): a migration must keep creating what it created when it shipped.

On PostgreSQL the build holds a SHARE lock on inspections (reads go on, the forwarder's inserts wait) for
one pass over the table; CONCURRENTLY cannot run inside the upgrade's single transaction.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_inspections_frame_ts_unlabelled_snapshot"
REVIEWABLE = "label IS NULL AND snapshot IS NOT NULL"


def upgrade() -> None:
    where = sa.text(REVIEWABLE)
    op.create_index(INDEX, "inspections", ["frame_ts"], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="inspections")

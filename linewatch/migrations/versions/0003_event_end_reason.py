"""Why an episode ended: events.end_reason (quiet, stopped, restarted), NULL while open and for the
episodes that ended before the reason was recorded.

Plain ADD COLUMN with its CHECK on both dialects: SQLite adds a nullable column with a column-level CHECK
in place (no copy of the table), PostgreSQL likewise without a rewrite.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK = "end_reason IS NULL OR end_reason IN ('quiet', 'stopped', 'restarted')"


def upgrade() -> None:
    check = sa.CheckConstraint(CHECK, name=op.f("ck_events_end_reason"))
    op.add_column("events", sa.Column("end_reason", sa.String(), check, nullable=True))


def downgrade() -> None:
    # SQLite drops a column by copying the table (batch mode), and the copy must not keep the column's CHECK.
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint(op.f("ck_events_end_reason"), type_="check")
        batch.drop_column("end_reason")

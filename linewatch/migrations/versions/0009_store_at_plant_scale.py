"""What the store at plant scale still needed:

- ``part_hours``: part verdicts per hour, station and verdict, for the analytics dashboard's "parts per hour"
  (a week of a plant's ``parts`` rows is millions; its hours a few thousand). Filled from the part rows
  already stored; from here on the DB forwarder adds each new part as it writes the row.
- The review queue's partial index holds, after the time, the id and the columns the close-call test reads,
  so the queue's count and its page's keys are read from the index alone (linewatch/web/queries.py). It is
  rebuilt in this transaction: PostgreSQL reads every row of ``inspections`` for it (on a partitioned table
  it cannot be built concurrently), so the daemons of the store's lines wait, their journals holding the
  verdicts (7 million rows took about a second).
- ``retention_policies``: each line's ``keep_normal_days`` and ``keep_days``, so that the day partitions,
  which hold every line's frames, follow the longest of them (linewatch/sinks/store_partitions.py).

Existing rows are untouched.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


REVIEWABLE = "label IS NULL AND snapshot IS NOT NULL"  # SQLite matches a partial index by its very text


def upgrade() -> None:
    _review_index(["site", "line", "frame_ts", "id", "score", "threshold", "verdict", "camera"])
    op.create_table(
        "part_hours",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("station", sa.String(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=False),
        sa.Column("parts", sa.BigInteger(), nullable=False),
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("line", sa.String(), nullable=False),
        sa.CheckConstraint("verdict IN ('OK', 'NOK', 'incomplete')", name=op.f("ck_part_hours_verdict")),
        sa.PrimaryKeyConstraint("site", "line", "hour", "station", "verdict", name=op.f("pk_part_hours")),
    )
    op.create_index("ix_part_hours_hour", "part_hours", ["hour"])
    op.create_table(
        "retention_policies",
        sa.Column("keep_normal_days", sa.Float(), nullable=False),
        sa.Column("keep_days", sa.Float(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("line", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("site", "line", name=op.f("pk_retention_policies")),
    )
    # SQLite keeps UTC wall time as text ("2026-12-04 09:41:07.250000"): its first 13 characters are the hour.
    postgres = op.get_bind().dialect.name == "postgresql"
    hour = "date_trunc('hour', at)" if postgres else "substr(at, 1, 13) || ':00:00.000000'"
    op.get_bind().exec_driver_sql(f"""
        INSERT INTO part_hours (hour, station, verdict, parts, site, line)
        SELECT {hour}, station, verdict, count(*), site, line
        FROM parts
        GROUP BY site, line, {hour}, station, verdict
    """)


def downgrade() -> None:
    op.drop_table("retention_policies")
    _review_index(["site", "line", "frame_ts"])
    op.drop_table("part_hours")


def _review_index(columns: list[str]) -> None:
    """Rebuild the review queue's partial index (the rows of unlabelled frames with evidence) on ``columns``."""
    name, reviewable = "ix_inspections_site_frame_ts_unlabelled_snapshot", sa.text(REVIEWABLE)
    op.drop_index(name, table_name="inspections")
    op.create_index(name, "inspections", columns, sqlite_where=reviewable, postgresql_where=reviewable)

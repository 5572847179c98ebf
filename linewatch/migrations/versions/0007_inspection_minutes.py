"""Retention's roll-ups: per-minute counts of the inspections it deletes (``inspection_minutes``), and on
PostgreSQL the function the analytics dashboard reads them through together with the rows still there.

A new table and a function; existing rows are untouched.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Per minute and key, the inspections still stored plus what retention rolled up, between two times (the
# dashboard's range): both parts seek by time on an index (ix_inspections_frame_ts, the roll-ups' primary key),
# which a view could not promise once a time filter meets its GROUP BY. A minute can come back twice (its
# normals rolled up, its defects still rows): readers sum. deploy/grafana/linewatch-analytics.json uses it.
MINUTES_BETWEEN = """
CREATE FUNCTION inspection_minutes_between(t_from timestamptz, t_to timestamptz)
RETURNS TABLE (
    minute timestamptz, camera varchar, product varchar, verdict varchar, model_version varchar, frames bigint,
    score_sum double precision, score_max double precision, threshold double precision,
    labelled_normal bigint, labelled_defect bigint
)
LANGUAGE sql STABLE AS $$
    SELECT date_trunc('minute', i.frame_ts), i.camera, i.product, i.verdict, i.model_version, count(*),
           sum(i.score), max(i.score), max(i.threshold),
           count(*) FILTER (WHERE i.label = 'normal'), count(*) FILTER (WHERE i.label = 'defect')
    FROM inspections i
    WHERE i.frame_ts >= t_from AND i.frame_ts < t_to
    GROUP BY 1, 2, 3, 4, 5
    UNION ALL
    SELECT m.minute, m.camera, m.product, m.verdict, m.model_version, m.frames, m.score_sum, m.score_max,
           m.threshold, m.labelled_normal, m.labelled_defect
    FROM inspection_minutes m
    WHERE m.minute >= t_from AND m.minute < t_to
$$
"""


def upgrade() -> None:
    op.create_table(
        "inspection_minutes",
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("camera", sa.String(), nullable=False),
        sa.Column("product", sa.String(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("frames", sa.BigInteger(), nullable=False),
        sa.Column("score_sum", sa.Float(), nullable=False),
        sa.Column("score_max", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("labelled_normal", sa.BigInteger(), nullable=False),
        sa.Column("labelled_defect", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("verdict IN ('normal', 'defect')", name=op.f("ck_inspection_minutes_verdict")),
        sa.PrimaryKeyConstraint(
            "minute", "camera", "product", "verdict", "model_version", name=op.f("pk_inspection_minutes")
        ),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(MINUTES_BETWEEN)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION inspection_minutes_between(timestamptz, timestamptz)")
    op.drop_table("inspection_minutes")

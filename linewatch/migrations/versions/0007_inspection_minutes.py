"""Retention's roll-ups: per-minute counts of the inspections it deletes (``inspection_minutes``).

A new table; existing rows are untouched.

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


def downgrade() -> None:
    op.drop_table("inspection_minutes")

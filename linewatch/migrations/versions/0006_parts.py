"""Parts: a station's verdict on one part; an index on inspections.part_id to find a part's frames; and the
actions' kinds gain ``nok_acknowledged`` (an operator saw a rejected part, over OPC UA).

A new table, an index and a wider CHECK (SQLite rebuilds the small actions table in batch mode); existing
rows are untouched.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out: a migration must not change when linewatch.types.ACTION_KINDS does.
KINDS_BEFORE = (
    "camera_enabled", "camera_disabled", "product_selected", "retrain_requested", "rollback",
    "user_added", "user_removed", "user_role_changed", "user_password_changed",
)  # fmt: skip
KINDS_AFTER = (*KINDS_BEFORE, "nok_acknowledged")


def _kinds(kinds: tuple[str, ...]) -> str:
    return f"kind IN ({', '.join(repr(kind) for kind in kinds)})"


def upgrade() -> None:
    op.create_table(
        "parts",
        sa.Column("result_id", sa.String(), nullable=False),
        sa.Column("station", sa.String(), nullable=False),
        sa.Column("part_id", sa.String(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(), nullable=True),
        sa.Column("product", sa.String(), nullable=True),
        sa.Column("inspections", sa.JSON(), nullable=False),
        sa.CheckConstraint("verdict IN ('OK', 'NOK', 'incomplete')", name=op.f("ck_parts_verdict")),
        sa.PrimaryKeyConstraint("result_id", name=op.f("pk_parts")),
    )
    op.create_index(op.f("ix_parts_part_id"), "parts", ["part_id"], unique=False)
    op.create_index(op.f("ix_parts_at"), "parts", ["at"], unique=False)
    op.create_index(op.f("ix_inspections_part_id"), "inspections", ["part_id"], unique=False)
    with op.batch_alter_table("actions") as batch:
        batch.drop_constraint(op.f("ck_actions_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_actions_kind"), _kinds(KINDS_AFTER))


def downgrade() -> None:
    op.execute("DELETE FROM actions WHERE kind = 'nok_acknowledged'")
    with op.batch_alter_table("actions") as batch:
        batch.drop_constraint(op.f("ck_actions_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_actions_kind"), _kinds(KINDS_BEFORE))
    op.drop_index(op.f("ix_inspections_part_id"), table_name="inspections")
    op.drop_index(op.f("ix_parts_at"), table_name="parts")
    op.drop_index(op.f("ix_parts_part_id"), table_name="parts")
    op.drop_table("parts")

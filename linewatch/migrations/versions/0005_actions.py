"""Who did what: actions (camera switches, product changes, retrain and rollback requests, account changes).

A new table only, on both dialects; existing rows are untouched.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out: a migration must not change when linewatch.types.ACTION_KINDS does.
KINDS = (
    "camera_enabled", "camera_disabled", "product_selected", "retrain_requested", "rollback",
    "user_added", "user_removed", "user_role_changed", "user_password_changed",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "actions",
        sa.Column("action_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("camera", sa.String(), nullable=True),
        sa.Column("detail", sa.String(), nullable=True),
        sa.CheckConstraint(f"kind IN ({', '.join(repr(kind) for kind in KINDS)})", name=op.f("ck_actions_kind")),
        sa.PrimaryKeyConstraint("action_id", name=op.f("pk_actions")),
    )
    op.create_index(op.f("ix_actions_at"), "actions", ["at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_actions_at"), table_name="actions")
    op.drop_table("actions")

"""The first schema: inspections, events, labels, model versions, retrain runs.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VERDICT = "IN ('normal', 'defect')"


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "inspections",
        _text("id"),
        _text("camera"),
        _text("product"),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        _ts("frame_ts"),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        _text("verdict"),
        _text("model_version"),
        _text("part_id", nullable=True),
        _text("snapshot", nullable=True),
        _text("heatmap", nullable=True),
        _text("label", nullable=True),
        _text("label_source", nullable=True),
        _text("label_user", nullable=True),
        _ts("labelled_at", nullable=True),
        _text("trained_into", nullable=True),
        sa.Column("journal_position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inspections")),
        sa.CheckConstraint(f"verdict {VERDICT}", name=op.f("ck_inspections_verdict")),
        sa.CheckConstraint(f"label IS NULL OR label {VERDICT}", name=op.f("ck_inspections_label")),
    )
    op.create_index("ix_inspections_camera_frame_ts", "inspections", ["camera", "frame_ts"])
    op.create_index("ix_inspections_label", "inspections", ["label"])
    op.create_index("ix_inspections_frame_ts", "inspections", ["frame_ts"])

    op.create_table(
        "events",
        _text("event_id"),
        _text("camera"),
        _text("product"),
        _ts("started_at"),
        _ts("last_at"),
        _ts("ended_at", nullable=True),
        _text("last_type"),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("peak_score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        _text("model_version"),
        _text("first_inspection_id"),
        _text("last_inspection_id"),
        _text("snapshot", nullable=True),
        _text("heatmap", nullable=True),
        _text("label", nullable=True),
        _text("label_source", nullable=True),
        _text("label_user", nullable=True),
        _ts("labelled_at", nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_events")),
        sa.CheckConstraint("last_type IN ('new', 'update', 'end')", name=op.f("ck_events_last_type")),
        sa.CheckConstraint(f"label IS NULL OR label {VERDICT}", name=op.f("ck_events_label")),
    )
    op.create_index("ix_events_camera_started_at", "events", ["camera", "started_at"])
    op.create_index("ix_events_label", "events", ["label"])

    op.create_table(
        "labels",
        _text("label_id"),
        _text("target"),
        _text("target_id"),
        _text("camera"),
        _text("label"),
        _text("source"),
        _text("username", nullable=True),
        _ts("labelled_at"),
        sa.PrimaryKeyConstraint("label_id", name=op.f("pk_labels")),
        sa.CheckConstraint("target IN ('inspection', 'event')", name=op.f("ck_labels_target")),
        sa.CheckConstraint(f"label {VERDICT}", name=op.f("ck_labels_label")),
    )
    op.create_index("ix_labels_target_target_id", "labels", ["target", "target_id"])

    op.create_table(
        "model_versions",
        _text("version"),
        _text("artifact_path"),
        _text("backbone"),
        _text("backbone_sha256"),
        _text("manifest_sha256"),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=True),
        _text("status"),
        _text("reason", nullable=True),
        _ts("created_at"),
        _ts("activated_at", nullable=True),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_model_versions")),
        sa.CheckConstraint(
            "status IN ('active', 'retired', 'failed', 'candidate')", name=op.f("ck_model_versions_status")
        ),
    )

    op.create_table(
        "retrain_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        _text("trigger"),
        _ts("started_at"),
        _ts("finished_at", nullable=True),
        _text("status"),
        _text("reason", nullable=True),
        _text("candidate_version", nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_retrain_runs")),
    )


def downgrade() -> None:
    for table in ("retrain_runs", "model_versions", "labels", "events", "inspections"):
        op.drop_table(table)

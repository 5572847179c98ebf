"""Many lines in one store: ``site`` and ``line`` on every line-data table, first in every key; roll-ups kept
current as rows arrive; on PostgreSQL, ``inspections`` partitioned by day.

- The rows already there belong to the line that runs this upgrade (``linewatch db upgrade`` or the upgrade
  at start passes its ``[site]`` names; until now a store held one line). Without one, the ``[site]``
  defaults.
- Keys become (site, line, id...): ids need only be unique within their line. ``inspections``' key ends
  with ``frame_ts``, the partition key on PostgreSQL (a partitioned table's keys must hold it); SQLite has
  the same key so that one upsert serves both.
- ``inspection_minutes`` gains ``deleted``: until now it held only the frames retention had deleted, so
  ``deleted = frames`` for its rows; then every row still stored is counted in (``deleted`` 0), so that from
  here on it counts every frame and the dashboards read it alone.
- PostgreSQL: ``inspections`` becomes a table partitioned by range of ``frame_ts``, one partition per UTC day
  (``inspections_pYYYYMMDD``) from the oldest row to a week ahead, plus ``inspections_default`` for a
  frame outside them; the rows are copied over in this transaction (the upgrade takes an advisory lock, and
  the daemons of the store's lines wait for it). Retention creates the next days' partitions and compacts
  or drops old ones (linewatch/sinks/store_partitions.py).
- ``inspection_hours``: the same counts per hour, for the dashboards (a week of a plant's minutes is millions
  of rows), filled from the minutes.
- ``inspection_minutes_between`` reads the roll-ups only, with their site and line.

SQLite rebuilds each table in batch mode; the upgrade at start backs the file up first.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> (its id columns after site and line, {old index: (new index, its columns)})
_KEYED = {
    "events": (
        ["event_id"],
        {"ix_events_camera_started_at": ("ix_events_site_camera_started_at", ["camera", "started_at"])},
    ),
    "labels": (
        ["label_id"],
        {"ix_labels_target_target_id": ("ix_labels_site_target_target_id", ["target", "target_id"])},
    ),
    "model_versions": (["version"], {}),
    "actions": (["action_id"], {"ix_actions_at": ("ix_actions_site_at", ["at"])}),
    "parts": (
        ["result_id"],
        {"ix_parts_part_id": ("ix_parts_site_part_id", ["part_id"]), "ix_parts_at": ("ix_parts_site_at", ["at"])},
    ),
}
_INSPECTION_INDEXES = {
    "ix_inspections_camera_frame_ts": ("ix_inspections_site_camera_frame_ts", ["camera", "frame_ts"]),
    "ix_inspections_frame_ts": ("ix_inspections_site_frame_ts", ["frame_ts"]),
    "ix_inspections_part_id": ("ix_inspections_site_part_id", ["part_id"]),
}
_REVIEWABLE = "label IS NULL AND snapshot IS NOT NULL"
_MINUTE_KEY = ["minute", "camera", "product", "verdict", "model_version"]
_PARTITION_DAYS_AHEAD = 7

# Every line's per-minute counts between two times (the dashboard's range), down ix_inspection_minutes_minute.
# A function rather than the table itself so that dashboards keep one stable entry point whatever the
# roll-ups' layout becomes. deploy/grafana/linewatch-analytics.json reads it.
_MINUTES_BETWEEN = """
CREATE FUNCTION inspection_minutes_between(t_from timestamptz, t_to timestamptz)
RETURNS TABLE (
    site varchar, line varchar, minute timestamptz, camera varchar, product varchar, verdict varchar,
    model_version varchar, frames bigint, score_sum double precision, score_max double precision,
    threshold double precision, labelled_normal bigint, labelled_defect bigint
)
LANGUAGE sql STABLE AS $$
    SELECT m.site, m.line, m.minute, m.camera, m.product, m.verdict, m.model_version, m.frames, m.score_sum,
           m.score_max, m.threshold, m.labelled_normal, m.labelled_defect
    FROM inspection_minutes m
    WHERE m.minute >= t_from AND m.minute < t_to
$$
"""

# One partition per UTC day from the oldest row's day to a week ahead, then the default partition.
_CREATE_PARTITIONS = f"""
DO $$
DECLARE
    first_day date := coalesce((SELECT min(frame_ts AT TIME ZONE 'UTC')::date FROM inspections_before_0008),
                               (now() AT TIME ZONE 'UTC')::date);
    last_day date := (now() AT TIME ZONE 'UTC')::date + {_PARTITION_DAYS_AHEAD};
    day date;
BEGIN
    FOR day IN SELECT generate_series(first_day, last_day, interval '1 day')::date LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF inspections FOR VALUES FROM (%L) TO (%L)',
            'inspections_p' || to_char(day, 'YYYYMMDD'),
            day::timestamp AT TIME ZONE 'UTC', (day + 1)::timestamp AT TIME ZONE 'UTC'
        );
    END LOOP;
    CREATE TABLE inspections_default PARTITION OF inspections DEFAULT;
END
$$
"""


def _scope() -> tuple[str, str]:
    scope = context.config.attributes.get("scope")
    return ("site", "line1") if scope is None else (scope.site, scope.line)


def upgrade() -> None:
    site, line = _scope()
    postgres = op.get_bind().dialect.name == "postgresql"
    for table, (ids, indexes) in _KEYED.items():
        _add_line(table, site, line, postgres)
        _rekey(table, ["site", "line", *ids], indexes, postgres)
    _add_line("retrain_runs", site, line, postgres)
    if postgres:
        op.execute("DROP FUNCTION inspection_minutes_between(timestamptz, timestamptz)")
        _partition_inspections(site, line)
    else:
        _add_line("inspections", site, line, postgres)
        _rekey("inspections", ["site", "line", "id", "frame_ts"], _INSPECTION_INDEXES, postgres)
        op.drop_index("ix_inspections_frame_ts_unlabelled_snapshot", table_name="inspections")
        op.create_index(
            "ix_inspections_site_frame_ts_unlabelled_snapshot",
            "inspections",
            ["site", "line", "frame_ts"],
            sqlite_where=sa.text(_REVIEWABLE),
        )
    _minutes_for_every_row(site, line, postgres)
    _hours_from_minutes(postgres)
    if postgres:
        op.execute(_MINUTES_BETWEEN)


def _add_line(table: str, site: str, line: str, postgres: bool) -> None:
    """NOT NULL ``site`` and ``line``, filled with this line's names, with no default left behind: a writer
    that forgot them must fail, not file its rows under the first line."""
    if postgres:  # a constant default is instant on PostgreSQL (no table rewrite); then dropped
        for name, value in (("site", site), ("line", line)):
            op.add_column(table, sa.Column(name, sa.String(), nullable=False, server_default=value))
            op.alter_column(table, name, server_default=None)
        return
    with op.batch_alter_table(table) as batch:
        batch.add_column(sa.Column("site", sa.String(), nullable=True))
        batch.add_column(sa.Column("line", sa.String(), nullable=True))
    op.get_bind().execute(sa.text(f"UPDATE {table} SET site = :site, line = :line"), {"site": site, "line": line})
    with op.batch_alter_table(table) as batch:
        batch.alter_column("site", existing_type=sa.String(), nullable=False)
        batch.alter_column("line", existing_type=sa.String(), nullable=False)


def _rekey(table: str, key: list[str], indexes: dict[str, tuple[str, list[str]]], postgres: bool) -> None:
    """The primary key and the secondary indexes led by (site, line)."""
    for old in indexes:
        op.drop_index(old, table_name=table)
    if postgres:
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.create_primary_key(f"pk_{table}", table, key)
    else:
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.drop_constraint(f"pk_{table}", type_="primary")
            batch.create_primary_key(f"pk_{table}", key)
    for new, columns in indexes.values():
        op.create_index(new, table, ["site", "line", *columns])


def _partition_inspections(site: str, line: str) -> None:
    """Copy ``inspections`` into a table partitioned by day. ``LIKE`` keeps the columns (in order), NOT NULLs
    and CHECKs; the indexes are built on the parent after the copy (faster than maintaining them row by row)."""
    _add_line("inspections", site, line, postgres=True)
    op.execute("ALTER TABLE inspections RENAME TO inspections_before_0008")
    op.execute("ALTER TABLE inspections_before_0008 RENAME CONSTRAINT pk_inspections TO pk_inspections_before_0008")
    for index in (*_INSPECTION_INDEXES, "ix_inspections_frame_ts_unlabelled_snapshot", "ix_inspections_label"):
        op.drop_index(index, table_name="inspections_before_0008")
    op.execute(
        "CREATE TABLE inspections (LIKE inspections_before_0008 INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
        "PARTITION BY RANGE (frame_ts)"
    )
    op.execute(_CREATE_PARTITIONS)
    op.execute("INSERT INTO inspections SELECT * FROM inspections_before_0008")
    op.drop_table("inspections_before_0008")
    op.create_primary_key("pk_inspections", "inspections", ["site", "line", "id", "frame_ts"])
    for new, columns in _INSPECTION_INDEXES.values():
        op.create_index(new, "inspections", ["site", "line", *columns])
    op.create_index("ix_inspections_label", "inspections", ["label"])
    op.create_index(
        "ix_inspections_site_frame_ts_unlabelled_snapshot",
        "inspections",
        ["site", "line", "frame_ts"],
        postgresql_where=sa.text(_REVIEWABLE),
    )


def _minutes_for_every_row(site: str, line: str, postgres: bool) -> None:
    """Re-key the roll-ups (what is there was deleted: ``deleted = frames``), then count in every stored row."""
    op.add_column("inspection_minutes", sa.Column("deleted", sa.BigInteger(), nullable=False, server_default="0"))
    op.execute("UPDATE inspection_minutes SET deleted = frames")
    if postgres:
        op.alter_column("inspection_minutes", "deleted", server_default=None)
    else:
        with op.batch_alter_table("inspection_minutes") as batch:
            batch.alter_column("deleted", existing_type=sa.BigInteger(), server_default=None)
    _add_line("inspection_minutes", site, line, postgres)
    _rekey("inspection_minutes", ["site", "line", *_MINUTE_KEY], {}, postgres)
    op.create_index("ix_inspection_minutes_minute", "inspection_minutes", ["minute"])
    for name, columns in (("site_camera_minute", ["camera", "minute"]), ("site_minute", ["minute"])):
        op.create_index(
            f"ix_inspection_minutes_{name}_deleted",
            "inspection_minutes",
            ["site", "line", *columns],
            sqlite_where=sa.text("deleted > 0"),
            postgresql_where=sa.text("deleted > 0"),
        )
    # SQLite keeps UTC times as 'YYYY-MM-DD HH:MM:SS.ffffff' text (db_schema.UtcDateTime): the minute is a prefix.
    minute = "date_trunc('minute', frame_ts)" if postgres else "substr(frame_ts, 1, 16) || ':00.000000'"
    greatest = "greatest" if postgres else "max"
    # Driver SQL: SQLAlchemy's text() would read ':00' as a bind parameter.
    op.get_bind().exec_driver_sql(f"""
        INSERT INTO inspection_minutes (site, line, minute, camera, product, verdict, model_version, frames,
                                        score_sum, score_max, threshold, labelled_normal, labelled_defect, deleted)
        SELECT site, line, {minute}, camera, product, verdict, model_version, count(*), sum(score), max(score),
               max(threshold), sum(CASE WHEN label = 'normal' THEN 1 ELSE 0 END),
               sum(CASE WHEN label = 'defect' THEN 1 ELSE 0 END), 0
        FROM inspections
        WHERE true
        GROUP BY site, line, {minute}, camera, product, verdict, model_version
        ON CONFLICT (site, line, minute, camera, product, verdict, model_version) DO UPDATE SET
            frames = inspection_minutes.frames + excluded.frames,
            score_sum = inspection_minutes.score_sum + excluded.score_sum,
            score_max = {greatest}(inspection_minutes.score_max, excluded.score_max),
            threshold = {greatest}(inspection_minutes.threshold, excluded.threshold),
            labelled_normal = inspection_minutes.labelled_normal + excluded.labelled_normal,
            labelled_defect = inspection_minutes.labelled_defect + excluded.labelled_defect
    """)


def _hours_from_minutes(postgres: bool) -> None:
    op.create_table(
        "inspection_hours",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
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
        sa.Column("site", sa.String(), nullable=False),
        sa.Column("line", sa.String(), nullable=False),
        sa.CheckConstraint("verdict IN ('normal', 'defect')", name=op.f("ck_inspection_hours_verdict")),
        sa.PrimaryKeyConstraint(
            "site", "line", "hour", "camera", "product", "verdict", "model_version", name=op.f("pk_inspection_hours")
        ),
    )
    op.create_index("ix_inspection_hours_hour", "inspection_hours", ["hour"])
    hour = "date_trunc('hour', minute)" if postgres else "substr(minute, 1, 13) || ':00:00.000000'"
    op.get_bind().exec_driver_sql(f"""
        INSERT INTO inspection_hours (hour, camera, product, verdict, model_version, frames, score_sum, score_max,
                                      threshold, labelled_normal, labelled_defect, site, line)
        SELECT {hour}, camera, product, verdict, model_version, sum(frames), sum(score_sum), max(score_max),
               max(threshold), sum(labelled_normal), sum(labelled_defect), site, line
        FROM inspection_minutes
        GROUP BY site, line, {hour}, camera, product, verdict, model_version
    """)


def downgrade() -> None:
    raise NotImplementedError(
        "0008 cannot be undone in place: its roll-ups count rows the 0007 schema cannot tell apart, and a store "
        "of several lines has no single line to go back to; restore the backup taken before the upgrade"
    )

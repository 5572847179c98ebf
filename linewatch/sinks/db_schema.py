"""The main store's tables (SQLAlchemy 2 declarative). Alembic's ``linewatch/migrations`` creates them;
a test checks that the migrations and these classes describe the same schema.

Decisions:

- Ids are the daemon's own stable strings (inspection id, event id, label id), so every write is an upsert
  keyed on them and a replay from the journal can never duplicate a row.
- One store may hold many lines (one PostgreSQL for a plant): every table of a line's data has ``site`` and
  ``line`` (:class:`LineOwned`) and every such key starts with them, so ids need only be unique within their
  line and two lines may well have a ``cam1`` and the same model version. ``users`` is plant-wide: one
  account logs in to every line of the store. ``inspections``' key ends with ``frame_ts``: on PostgreSQL the
  table is partitioned by it (migration 0008), and a partitioned table's keys must hold its partition key.
- Strings have no length limit (VARCHAR on PostgreSQL, TEXT on SQLite): a long id or path must never
  make an insert fail and wedge the forwarder.
- Timestamps are timezone-aware UTC in and out (:class:`UtcDateTime`), on SQLite too, where they are
  stored as UTC text with microseconds, so text order is time order and range queries work.
- Constraint and index names come from one naming convention, so later migrations (batch mode on
  SQLite) can refer to them by name on both dialects.
- ``ix_inspections_site_frame_ts_unlabelled_snapshot`` is partial (:data:`REVIEWABLE`): the review queue's
  close calls are unlabelled frames with evidence, a few rows in 100 (the evidence sampler's share plus
  defects), and an index of just those lets it read a day's window in time proportional to them rather than
  to every frame. It costs the forwarder nothing on the frames without a snapshot, which is nearly all of
  them. After the time it holds the id and every column the close-call test reads (score, threshold,
  verdict, camera), so on PostgreSQL the queue's count and its page's keys come from the index alone (an
  index-only scan, migration 0009): a day of a busy line is 100,000 such frames, and fetching each one's
  row took 0.16 s where the index alone takes 0.03 s (benchmarks/review_queue_day.py). Its name is the
  convention's ``ix_inspections_site_frame_ts`` (taken by the full index) with what it holds appended.
- The labels table keeps the full history; ``inspections.label*`` and ``events.label*`` hold the latest.
  Its user column is ``username``: ``user`` is reserved in PostgreSQL (``SELECT user`` silently returns
  the session's role, a trap for anyone writing a dashboard query).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, synonym
from sqlalchemy.types import TypeDecorator

from linewatch.types import ACTION_KINDS, PART_VERDICTS

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

VERDICTS = ("normal", "defect")
LABEL_TARGETS = ("inspection", "event")
EVENT_TYPES = ("new", "update", "end")
END_REASONS = ("quiet", "stopped", "restarted")
MODEL_STATUSES = ("active", "retired", "failed", "candidate")
USER_ROLES = ("viewer", "operator", "engineer", "admin")  # each may do what the ones before it may
# The rows of the partial index the review queue reads. The same text on both dialects, in the migration
# too: SQLite uses a partial index only for a query whose WHERE has these very terms.
REVIEWABLE = "label IS NULL AND snapshot IS NOT NULL"
# Its columns: the queue's walk (site, line, time, id: its order) and what the close-call test reads.
REVIEW_INDEX_COLUMNS = ("site", "line", "frame_ts", "id", "score", "threshold", "verdict", "camera")
ROLLED = "deleted > 0"  # the minutes some of whose rows retention deleted; the History plot reads these


def _one_of(column: str, values: tuple[str, ...], nullable: bool = False) -> str:
    allowed = ", ".join(f"'{value}'" for value in values)
    check = f"{column} IN ({allowed})"
    return f"{column} IS NULL OR {check}" if nullable else check


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every dialect; naive values are refused rather than guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} for a UTC column")
        value = value.astimezone(UTC)
        # SQLite keeps no offset: store UTC wall time so the text compares in time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UtcDateTime, dict[str, Any]: JSON, str: String()}


class LineOwned:
    """The line a row belongs to (linewatch.sinks.db.LineScope). Sorted last: migration 0008 added them to
    tables that existed before, and the keys name them first."""

    site: Mapped[str] = mapped_column(sort_order=2)
    line: Mapped[str] = mapped_column(sort_order=2)


def _line_key(table: str, *columns: str) -> PrimaryKeyConstraint:
    return PrimaryKeyConstraint("site", "line", *columns, name=f"pk_{table}")


class LatestLabel:
    """The operator's latest judgement of a row (an inspection, or a whole defect episode); None until
    labelled. One definition for both tables, so the DB forwarder's "a later label wins" rule
    (``labelled_at``) reads the same columns on either, and so do dashboards. The full history is in
    :class:`LabelRecord`. The ``label`` CHECK and its index (``ck_<table>_label``, ``ix_<table>_label`` by
    the naming convention) come with the column."""

    label: Mapped[str | None] = mapped_column(
        CheckConstraint(_one_of("label", VERDICTS, nullable=True), name="label"), index=True
    )
    label_source: Mapped[str | None]  # "mqtt" | "cli" | "http" | "web"
    label_user: Mapped[str | None]
    labelled_at: Mapped[datetime | None]


class Inspection(LatestLabel, LineOwned, Base):
    """One verdict of the scorer: every inspected frame, whatever its result."""

    __tablename__ = "inspections"
    __table_args__ = (
        _line_key("inspections", "id", "frame_ts"),
        CheckConstraint(_one_of("verdict", VERDICTS), name="verdict"),
        Index("ix_inspections_site_camera_frame_ts", "site", "line", "camera", "frame_ts"),
        Index("ix_inspections_site_frame_ts", "site", "line", "frame_ts"),
        Index("ix_inspections_site_part_id", "site", "line", "part_id"),  # a part's frames (history filter, parts)
        Index(
            "ix_inspections_site_frame_ts_unlabelled_snapshot",
            *REVIEW_INDEX_COLUMNS,
            sqlite_where=text(REVIEWABLE),
            postgresql_where=text(REVIEWABLE),
        ),
    )

    id: Mapped[str]  # the inspection id
    inspection_id = synonym("id")
    camera: Mapped[str]
    product: Mapped[str]
    seq: Mapped[int] = mapped_column(BigInteger)
    frame_ts: Mapped[datetime]
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str]  # "normal" | "defect", the scorer's
    model_version: Mapped[str]
    part_id: Mapped[str | None]
    snapshot: Mapped[str | None]  # evidence paths, relative to the evidence folder
    heatmap: Mapped[str | None]
    # The LatestLabel columns sit here: a mixin's columns come after the class's own unless sort_order says.
    trained_into: Mapped[str | None] = mapped_column(sort_order=1)  # model version whose retraining used it
    journal_position: Mapped[int] = mapped_column(BigInteger, sort_order=1)


class DefectEvent(LatestLabel, LineOwned, Base):
    """One defect episode, folded from its journal messages (new, updates, end)."""

    __tablename__ = "events"
    __table_args__ = (
        _line_key("events", "event_id"),
        CheckConstraint(_one_of("last_type", EVENT_TYPES), name="last_type"),
        Index("ix_events_site_camera_started_at", "site", "line", "camera", "started_at"),
    )

    event_id: Mapped[str]
    camera: Mapped[str]
    product: Mapped[str]
    started_at: Mapped[datetime]  # frame time of the "new" message
    last_at: Mapped[datetime]  # frame time of the latest message
    ended_at: Mapped[datetime | None]  # frame time of the "end" message; None while open
    last_type: Mapped[str]
    last_seq: Mapped[int] = mapped_column(Integer)
    peak_score: Mapped[float] = mapped_column(Float)  # highest score announced (new/update)
    threshold: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str]
    first_inspection_id: Mapped[str]
    last_inspection_id: Mapped[str]
    snapshot: Mapped[str | None]  # evidence of the peak message
    heatmap: Mapped[str | None]
    # quiet | stopped | restarted (types.EndReason); added by migration 0003, so it sorts after the label columns
    end_reason: Mapped[str | None] = mapped_column(
        CheckConstraint(_one_of("end_reason", END_REASONS, nullable=True), name="end_reason"), sort_order=1
    )


class LabelRecord(LineOwned, Base):
    """Every operator judgement ever submitted, deduplicated on its id."""

    __tablename__ = "labels"
    __table_args__ = (
        _line_key("labels", "label_id"),
        CheckConstraint(_one_of("target", LABEL_TARGETS), name="target"),
        CheckConstraint(_one_of("label", VERDICTS), name="label"),
        Index("ix_labels_site_target_target_id", "site", "line", "target", "target_id"),
    )

    label_id: Mapped[str]
    target: Mapped[str]  # "inspection" | "event"
    target_id: Mapped[str]
    camera: Mapped[str]
    label: Mapped[str]
    source: Mapped[str]  # "mqtt" | "cli" | "http" | "web"
    username: Mapped[str | None]
    labelled_at: Mapped[datetime]


class ModelVersion(LineOwned, Base):
    """A trained model artifact and its fate; filled by retraining."""

    __tablename__ = "model_versions"
    __table_args__ = (
        _line_key("model_versions", "version"),
        CheckConstraint(_one_of("status", MODEL_STATUSES), name="status"),
    )

    version: Mapped[str]
    artifact_path: Mapped[str]
    backbone: Mapped[str]
    backbone_sha256: Mapped[str]
    manifest_sha256: Mapped[str]
    thresholds: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any] | None]
    status: Mapped[str]
    reason: Mapped[str | None]
    created_at: Mapped[datetime]
    activated_at: Mapped[datetime | None]


class RetrainRun(LineOwned, Base):
    """One retraining attempt, whatever its outcome; filled by retraining. Its key is a number the store
    hands out, unique in the whole store."""

    __tablename__ = "retrain_runs"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    trigger: Mapped[str]  # "schedule" | "mqtt" | "cli" | ...
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status: Mapped[str]
    reason: Mapped[str | None]
    candidate_version: Mapped[str | None]
    metrics: Mapped[dict[str, Any] | None]


class User(Base):
    """Someone who logs in to the operator page (linewatch/sinks/users.py); the role says what they may do."""

    __tablename__ = "users"
    __table_args__ = (CheckConstraint(_one_of("role", USER_ROLES), name="role"),)

    name: Mapped[str] = mapped_column(primary_key=True)
    role: Mapped[str]
    password_hash: Mapped[str]  # argon2id, with its parameters and salt (PHC string)
    created_at: Mapped[datetime]
    changed_at: Mapped[datetime]  # the last change of role or password


class ActionRecord(LineOwned, Base):
    """Who did what to the line: camera switches, product changes, retrain and rollback requests (from the
    journal, so one asked for while the store is down still arrives), account changes (written with the
    change itself). The page's Models view lists the latest."""

    __tablename__ = "actions"
    __table_args__ = (
        _line_key("actions", "action_id"),
        CheckConstraint(_one_of("kind", ACTION_KINDS), name="kind"),
        Index("ix_actions_site_at", "site", "line", "at"),
    )

    action_id: Mapped[str]
    kind: Mapped[str]
    actor: Mapped[str]  # who: "web: erin", "mqtt: operator-anna", "http", "cli"; ``by`` is an SQL keyword
    at: Mapped[datetime]
    camera: Mapped[str | None]
    detail: Mapped[str | None]


class PartRecord(LineOwned, Base):
    """A station's verdict on one part (linewatch/plant/stations.py): the worst of its cameras' frame verdicts,
    or ``incomplete``; its frames are the inspections with the same ``part_id`` (listed in ``inspections``)."""

    __tablename__ = "parts"
    __table_args__ = (
        _line_key("parts", "result_id"),
        CheckConstraint(_one_of("verdict", PART_VERDICTS), name="verdict"),
        Index("ix_parts_site_part_id", "site", "line", "part_id"),
        Index("ix_parts_site_at", "site", "line", "at"),
    )

    result_id: Mapped[str]
    station: Mapped[str]
    part_id: Mapped[str]
    verdict: Mapped[str]  # "OK" | "NOK" | "incomplete"
    score: Mapped[float | None] = mapped_column(Float)  # the worst camera's score / threshold
    reason: Mapped[str]
    at: Mapped[datetime]
    model_version: Mapped[str | None]
    product: Mapped[str | None]
    inspections: Mapped[list[str]] = mapped_column(JSON)


class PartHour(LineOwned, Base):
    """Part verdicts per hour by station and verdict, written by the DB forwarder with each new part row (a
    replayed one is not counted again) and kept ``keep_rollup_days``: the analytics dashboard's "parts per
    hour" reads these, since a week of a plant's part rows is millions (a part a second on 20 lines)."""

    __tablename__ = "part_hours"
    __table_args__ = (
        _line_key("part_hours", "hour", "station", "verdict"),
        CheckConstraint(_one_of("verdict", PART_VERDICTS), name="verdict"),
        Index("ix_part_hours_hour", "hour"),  # the whole plant's range
    )

    hour: Mapped[datetime]  # UTC, minutes zero
    station: Mapped[str]
    verdict: Mapped[str]  # "OK" | "NOK" | "incomplete"
    parts: Mapped[int] = mapped_column(BigInteger)


class RetentionPolicy(LineOwned, Base):
    """Each line's ``[store] keep_normal_days`` and ``keep_days``, recorded by its retention on every pass
    (PostgreSQL). A day partition holds every line's frames, so the partitions follow the longest of these:
    a line configured to keep its rows 30 days must not lose them at 7 because another line of the store
    says 7. A retired line's row keeps holding the store to its values until it is deleted."""

    __tablename__ = "retention_policies"
    __table_args__ = (_line_key("retention_policies"),)

    keep_normal_days: Mapped[float] = mapped_column(Float)
    keep_days: Mapped[float] = mapped_column(Float)
    recorded_at: Mapped[datetime]


class FrameCounts:
    """The counts of the frames of one key (camera, product, scorer's verdict, model version) in a minute or an
    hour: :class:`InspectionMinute` and :class:`InspectionHour` (linewatch/sinks/rollups.py adds to them). After
    the class's own time column: a mixin's columns come after the class's own."""

    camera: Mapped[str]
    product: Mapped[str]
    verdict: Mapped[str]
    model_version: Mapped[str]
    frames: Mapped[int] = mapped_column(BigInteger)
    score_sum: Mapped[float] = mapped_column(Float)  # mean = score_sum / frames
    score_max: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)  # the version's threshold for the product (one per key)
    labelled_normal: Mapped[int] = mapped_column(BigInteger)  # frames an operator confirmed normal
    labelled_defect: Mapped[int] = mapped_column(BigInteger)  # frames an operator confirmed defective


class InspectionMinute(FrameCounts, LineOwned, Base):
    """Per-minute counts of a line's inspections by camera, product, scorer's verdict and model version, kept
    ``keep_days`` (as long as the rows kept longest; :class:`InspectionHour` keeps ``keep_rollup_days``).

    The DB forwarder adds each chunk's new rows in the transaction that inserts them (a replayed row is not
    counted twice) and moves a frame between ``labelled_*`` when its label changes; retention adds the rows it
    deletes to ``deleted``, so ``frames - deleted`` of a minute are still rows and the History plot knows
    which minutes it can only draw from here. Migration 0008 counted the rows that were there before."""

    __tablename__ = "inspection_minutes"
    __table_args__ = (
        _line_key("inspection_minutes", "minute", "camera", "product", "verdict", "model_version"),
        CheckConstraint(_one_of("verdict", VERDICTS), name="verdict"),
        Index("ix_inspection_minutes_minute", "minute"),  # the whole plant's range (dashboard, retention)
        # The History plot's rolled-up minutes (those with rows gone), newest first, with or without a camera:
        # a year of a line's minutes is millions, and the plot wants the newest 2000 of the few that qualify.
        Index(
            "ix_inspection_minutes_site_camera_minute_deleted",
            "site",
            "line",
            "camera",
            "minute",
            sqlite_where=text(ROLLED),
            postgresql_where=text(ROLLED),
        ),
        Index(
            "ix_inspection_minutes_site_minute_deleted",
            "site",
            "line",
            "minute",
            sqlite_where=text(ROLLED),
            postgresql_where=text(ROLLED),
        ),
    )

    minute: Mapped[datetime]  # UTC, seconds zero
    deleted: Mapped[int] = mapped_column(BigInteger, sort_order=1)  # of the frames, rows retention deleted


class InspectionHour(FrameCounts, LineOwned, Base):
    """The same counts per hour (:class:`InspectionMinute` without ``deleted``), written with them: what the
    analytics dashboard reads, since a week of a plant's minutes is millions of rows and its hours some tens of
    thousands (deploy/grafana/linewatch-analytics.json)."""

    __tablename__ = "inspection_hours"
    __table_args__ = (
        _line_key("inspection_hours", "hour", "camera", "product", "verdict", "model_version"),
        CheckConstraint(_one_of("verdict", VERDICTS), name="verdict"),
        Index("ix_inspection_hours_hour", "hour"),  # the whole plant's range
    )

    hour: Mapped[datetime]  # UTC, minutes zero

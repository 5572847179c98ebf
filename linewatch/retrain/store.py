"""Retraining's queries on the main store: the confirmed images it trains and gates on, which inspections a
version used, the model versions and their fate, and the log of retraining runs.

Decisions:

- Every function reads and writes only the rows of the engine's own line
  (:func:`linewatch.sinks.db.scope_of`): one store may serve many lines, each retraining its own model, and
  two lines may well name a version alike. Inserts stamp the line's ``site`` and ``line``; every select and
  update filters on them (:func:`~linewatch.sinks.db.in_line`), so activating a version on one line retires
  nothing on another, and a run id (unique in the whole store) of another line is "no such run" here.
- Every function raises :class:`DatabaseError` (URL password masked) when the database fails, and
  ``ValueError`` for arguments it refuses before touching the database (unknown label or status, naive
  datetime), so a caller can tell "the store is down" from "I called it wrong".
- ``record_version`` is an upsert keyed on the line and the version string: retraining may be replayed after
  a crash between training and recording, and a replay must converge, not fail. It never writes
  ``activated_at``: only :func:`activate_version` does, in the same transaction that retires the line's
  previous active version, so a reader never sees two active versions or none.
- ``mark_trained`` writes in chunks of :data:`ID_CHUNK` ids (bound-parameter limits: SQLite builds before
  3.32 allow 999, PostgreSQL 65535) but inside one transaction: a version's training set is marked whole
  or not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, insert, select, update

from linewatch.sinks.db import (
    DatabaseError,
    in_line,
    masked,
    require_aware,
    require_one_of,
    scope_of,
    translated,
    write_transaction,
)
from linewatch.sinks.db_schema import MODEL_STATUSES, VERDICTS, Inspection, ModelVersion, RetrainRun

RUN_STATUSES = ("running", "accepted", "rejected", "failed", "skipped", "recalibrated")
ID_CHUNK = 500


@dataclass(frozen=True)
class LabelledImage:
    """An inspection an operator labelled, with the evidence image retraining reads."""

    inspection_id: str
    camera: str
    product: str
    snapshot: str  # evidence path relative to the evidence folder
    labelled_at: datetime


def confirmed_images(engine: Engine, label: str, untrained_only: bool) -> list[LabelledImage]:
    """Inspections whose latest operator label is ``label`` ("normal" or "defect") and that have a snapshot;
    with ``untrained_only``, only those no retraining used yet. Ordered by label time, then id, so a
    training set drawn from them is reproducible."""
    require_one_of("label", label, VERDICTS)
    query = (
        select(Inspection.id, Inspection.camera, Inspection.product, Inspection.snapshot, Inspection.labelled_at)
        .where(
            in_line(Inspection, scope_of(engine)),
            Inspection.label == label,
            Inspection.snapshot.is_not(None),
            Inspection.labelled_at.is_not(None),  # always set with the label; keeps LabelledImage's type true
        )
        .order_by(Inspection.labelled_at, Inspection.id)
    )
    if untrained_only:
        query = query.where(Inspection.trained_into.is_(None))
    with translated(masked(engine.url), f"reading confirmed {label} images"), engine.connect() as conn:
        return [LabelledImage(*row) for row in conn.execute(query)]


def mark_trained(engine: Engine, inspection_ids: Sequence[str], version: str) -> int:
    """Record that ``version``'s retraining used these inspections (retention may then drop their images, and
    the next retraining skips them). One transaction; returns the number of rows changed (unknown ids count
    nothing, repeated ids once)."""
    if not version:
        raise ValueError("version must be a non-empty string")
    ids = list(dict.fromkeys(inspection_ids))
    if not ids:
        return 0
    changed = 0
    marking = f"marking {len(ids)} inspections trained into {version!r}"
    line = in_line(Inspection, scope_of(engine))
    with translated(masked(engine.url), marking), write_transaction(engine) as conn:
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start : start + ID_CHUNK]
            done = conn.execute(update(Inspection).where(line, Inspection.id.in_(chunk)).values(trained_into=version))
            changed += done.rowcount
    return changed


def start_run(engine: Engine, trigger: str, started_at: datetime) -> int:
    """Log the start of a retraining run (status "running"); returns its id for :func:`finish_run`."""
    row = {
        **scope_of(engine).columns(),
        "trigger": trigger,
        "started_at": require_aware("started_at", started_at),
        "status": "running",
    }
    with translated(masked(engine.url), "starting a retrain run"), write_transaction(engine) as conn:
        key = conn.execute(insert(RetrainRun).values(row)).inserted_primary_key
    if key is None:  # every supported dialect reports it; a driver that did not would lose the run's id
        raise DatabaseError(f"{masked(engine.url)}: starting a retrain run failed: no id returned")
    return int(key[0])


def finish_run(
    engine: Engine,
    run_id: int,
    status: str,
    reason: str | None,
    candidate_version: str | None,
    metrics: dict[str, Any] | None,
    finished_at: datetime,
) -> None:
    """Record how run ``run_id`` ended. DatabaseError when the line has no such run."""
    require_one_of("status", status, RUN_STATUSES)
    values = {
        "status": status,
        "reason": reason,
        "candidate_version": candidate_version,
        "metrics": metrics,
        "finished_at": require_aware("finished_at", finished_at),
    }
    where = masked(engine.url)
    with translated(where, f"finishing retrain run {run_id}"), write_transaction(engine) as conn:
        line = in_line(RetrainRun, scope_of(engine))
        done = conn.execute(update(RetrainRun).where(line, RetrainRun.id == run_id).values(values))
        if done.rowcount == 0:
            raise DatabaseError(f"{where}: finishing retrain run {run_id} failed: no such run")


def fail_interrupted_runs(engine: Engine, finished_at: datetime) -> int:
    """Mark the line's runs still "running" as failed: called under the line's training lock, so none of them
    is really running; the daemon stopped or crashed in the middle of them (another line's runs may well be
    running: its lock is not ours). Returns how many."""
    values = {
        "status": "failed",
        "reason": "interrupted: the daemon stopped or crashed during the run",
        "finished_at": require_aware("finished_at", finished_at),
    }
    with translated(masked(engine.url), "closing interrupted retrain runs"), write_transaction(engine) as conn:
        line = in_line(RetrainRun, scope_of(engine))
        return int(conn.execute(update(RetrainRun).where(line, RetrainRun.status == "running").values(values)).rowcount)


def record_version(
    engine: Engine,
    *,
    version: str,
    artifact_path: str,
    backbone: str,
    backbone_sha256: str,
    manifest_sha256: str,
    thresholds: dict[str, float],
    metrics: dict[str, Any] | None,
    status: str,
    reason: str | None,
    created_at: datetime,
    keep_existing: bool = False,
) -> None:
    """Insert the line's row of the version, or rewrite every column but ``activated_at`` when it exists (a
    replay); with ``keep_existing`` an existing row is left as it is (a rollback must not erase its gate
    numbers)."""
    require_one_of("status", status, MODEL_STATUSES)
    row = {
        **scope_of(engine).columns(),
        "version": version,
        "artifact_path": artifact_path,
        "backbone": backbone,
        "backbone_sha256": backbone_sha256,
        "manifest_sha256": manifest_sha256,
        "thresholds": thresholds,
        "metrics": metrics,
        "status": status,
        "reason": reason,
        "created_at": require_aware("created_at", created_at),
    }
    # The dialects' upserts, imported here: the PostgreSQL dialect alone costs a tenth of a second to import,
    # which `linewatch model versions` (this module, reading only) should not pay.
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    stmt = dialect_insert(ModelVersion.__table__).values(row)
    key = ["site", "line", "version"]
    upsert = (
        stmt.on_conflict_do_nothing(index_elements=key)
        if keep_existing
        else stmt.on_conflict_do_update(
            index_elements=key, set_={name: stmt.excluded[name] for name in row if name not in key}
        )
    )
    with translated(masked(engine.url), f"recording model version {version!r}"), write_transaction(engine) as conn:
        conn.execute(upsert)


def activate_version(engine: Engine, version: str, at: datetime) -> None:
    """Make ``version`` the line's one active version (``activated_at`` = ``at``) and retire whichever of the
    line's versions was active, in one transaction. DatabaseError when the line has no row of ``version``
    (nothing is changed then)."""
    at = require_aware("at", at)
    where = masked(engine.url)
    line = in_line(ModelVersion, scope_of(engine))
    with translated(where, f"activating model version {version!r}"), write_transaction(engine) as conn:
        done = conn.execute(
            update(ModelVersion).where(line, ModelVersion.version == version).values(status="active", activated_at=at)
        )
        if done.rowcount == 0:
            raise DatabaseError(f"{where}: activating model version {version!r} failed: no such version")
        conn.execute(
            update(ModelVersion)
            .where(line, ModelVersion.status == "active", ModelVersion.version != version)
            .values(status="retired")
        )


def list_versions(engine: Engine) -> list[dict[str, Any]]:
    """Every model version of the line as a dict of its columns, newest ``created_at`` first."""
    query = (
        select(ModelVersion.__table__)
        .where(in_line(ModelVersion, scope_of(engine)))
        .order_by(ModelVersion.created_at.desc(), ModelVersion.version.desc())
    )
    with translated(masked(engine.url), "listing model versions"), engine.connect() as conn:
        return [dict(row) for row in conn.execute(query).mappings()]


def list_runs(engine: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """The line's latest ``limit`` retraining runs as dicts of their columns, newest first."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    with translated(masked(engine.url), "listing retrain runs"), engine.connect() as conn:
        return [dict(row) for row in conn.execute(_runs_newest_first(engine).limit(limit)).mappings()]


def last_run(engine: Engine, status: str | None = None, trigger: str | None = None) -> dict[str, Any] | None:
    """The line's newest retraining run (with that status and trigger, when given) as a dict of its columns;
    None if there is none."""
    query = _runs_newest_first(engine)
    if status is not None:
        require_one_of("status", status, RUN_STATUSES)
        query = query.where(RetrainRun.status == status)
    if trigger is not None:
        query = query.where(RetrainRun.trigger == trigger)
    with translated(masked(engine.url), "reading the last retrain run"), engine.connect() as conn:
        row = conn.execute(query.limit(1)).mappings().first()
    return None if row is None else dict(row)


def _runs_newest_first(engine: Engine) -> Select[Any]:
    # id breaks ties: two runs started in the same microsecond still come back in insertion order, reversed.
    return (
        select(RetrainRun.__table__)
        .where(in_line(RetrainRun, scope_of(engine)))
        .order_by(RetrainRun.started_at.desc(), RetrainRun.id.desc())
    )

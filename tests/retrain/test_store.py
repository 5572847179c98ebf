"""Retraining's queries (linewatch.retrain.store) on a real SQLite file and a real PostgreSQL (``store_url``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from linewatch.retrain.store import (
    ID_CHUNK,
    LabelledImage,
    activate_version,
    confirmed_images,
    fail_interrupted_runs,
    finish_run,
    last_run,
    list_runs,
    list_versions,
    mark_trained,
    record_version,
    start_run,
)
from linewatch.sinks.db import DatabaseError, LineScope, in_line, make_engine, scope_of
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.db_schema import Inspection
from tests.services.postgres import PASSWORD
from tests.store_rows import insert_inspections, inspection_row

T0 = datetime(2026, 3, 2, 8, 0, 0, tzinfo=UTC)
LINE1 = {"site": "site", "line": "line1"}  # a plain make_engine's line (DEFAULT_SCOPE)


@pytest.fixture
def engine(store_url: str, tmp_path: Path) -> Iterator[Engine]:
    upgrade_database(store_url, tmp_path / "backups")
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def line2(engine: Engine, store_url: str) -> Iterator[Engine]:
    """A second line of the same store (``engine`` migrated it): same site, line "line2"."""
    other = make_engine(store_url, LineScope("site", "line2"))
    yield other
    other.dispose()


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def add_inspections(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """Inspection rows of the engine's line (tests/store_rows.py defaults, model v0, an hour ago); each row may
    set id, verdict, snapshot, label, labelled_at and trained_into (label source and user follow the label)."""
    full = []
    for position, row in enumerate(rows):
        labelled = {"label_source": "cli", "label_user": "ana"} if row.get("label") is not None else {}
        fields = {**scope_of(engine).columns(), "model_version": "v0", **labelled, **row}
        inspection_id = fields.pop("id")
        full.append(inspection_row(inspection_id, at(-60 + position / 1000), position, **fields))
    insert_inspections(engine, full)


def trained_into(engine: Engine) -> dict[str, str | None]:
    """The engine's line's inspections and the version each was trained into."""
    query = select(Inspection.id, Inspection.trained_into).where(in_line(Inspection, scope_of(engine)))
    with engine.connect() as conn:
        return {row.id: row.trained_into for row in conn.execute(query)}


def record(engine: Engine, version: str, created_at: datetime, **changes: Any) -> None:
    fields: dict[str, Any] = {
        "artifact_path": f"models/{version}",
        "backbone": "ViT-B-16-plus-240",
        "backbone_sha256": "b" * 64,
        "manifest_sha256": "m" * 64,
        "thresholds": {"cam1": 0.42},
        "metrics": {"false_reject_rate": 0.01},
        "status": "candidate",
        "reason": None,
        **changes,
    }
    record_version(engine, version=version, created_at=created_at, **fields)


def versions_by_name(engine: Engine) -> dict[str, dict[str, Any]]:
    return {row["version"]: row for row in list_versions(engine)}


# --- confirmed images ----------------------------------------------------------------------------------------


def test_confirmed_images_filter_on_the_operator_label_snapshot_and_training_and_come_in_label_order(
    engine: Engine,
) -> None:
    add_inspections(
        engine,
        [
            {"id": "a", "label": "normal", "labelled_at": at(2)},
            {"id": "c", "label": "normal", "labelled_at": at(1)},
            {"id": "b", "label": "normal", "labelled_at": at(1), "camera": "cam2", "verdict": "defect"},
            {"id": "d", "label": "normal", "labelled_at": at(0), "snapshot": None},  # no image to train on
            {"id": "e", "label": "normal", "labelled_at": at(3), "trained_into": "v1"},
            {"id": "f", "label": "defect", "labelled_at": at(0), "verdict": "normal"},  # the operator's word counts
            {"id": "g"},  # never labelled
        ],
    )

    untrained = confirmed_images(engine, "normal", untrained_only=True)
    assert [image.inspection_id for image in untrained] == ["b", "c", "a"]  # label time, then id
    assert untrained[0] == LabelledImage("b", "cam2", "metal plate", "cam1/b.jpg", at(1))
    assert untrained[0].labelled_at.tzinfo is not None and untrained[0].labelled_at.utcoffset() == timedelta(0)
    everything = confirmed_images(engine, "normal", untrained_only=False)
    assert [image.inspection_id for image in everything] == ["b", "c", "a", "e"]
    assert [image.inspection_id for image in confirmed_images(engine, "defect", untrained_only=True)] == ["f"]


@pytest.mark.parametrize("label", ["Normal", "ok", ""])
def test_confirmed_images_refuse_an_unknown_label(engine: Engine, label: str) -> None:
    with pytest.raises(ValueError, match=r"label must be one of normal, defect; got"):
        confirmed_images(engine, label, untrained_only=True)


# --- mark_trained --------------------------------------------------------------------------------------------


def test_mark_trained_marks_exactly_the_given_ids_across_chunks_and_the_next_gathering_skips_them(
    engine: Engine,
) -> None:
    count = 2 * ID_CHUNK + 203
    ids = [f"i{n:05d}" for n in range(count)]
    add_inspections(engine, [{"id": i, "label": "normal", "labelled_at": at(n / 100)} for n, i in enumerate(ids)])
    chosen = ids[: 2 * ID_CHUNK + 100]

    changed = mark_trained(engine, [*chosen, chosen[0], "not-in-the-store"], "v2")

    assert changed == len(chosen)  # the repeat counted once, the unknown id not at all
    marks = trained_into(engine)
    assert {i for i, version in marks.items() if version == "v2"} == set(chosen)
    assert {i for i, version in marks.items() if version is None} == set(ids[len(chosen) :])
    remaining = confirmed_images(engine, "normal", untrained_only=True)
    assert [image.inspection_id for image in remaining] == ids[len(chosen) :]
    assert mark_trained(engine, [], "v3") == 0


def test_mark_trained_refuses_an_empty_version(engine: Engine) -> None:
    add_inspections(engine, [{"id": "a", "label": "normal", "labelled_at": at(0)}])
    with pytest.raises(ValueError, match="version must be a non-empty string"):
        mark_trained(engine, ["a"], "")
    assert trained_into(engine) == {"a": None}


# --- retrain runs --------------------------------------------------------------------------------------------


def test_a_run_is_started_running_and_finished_with_its_outcome(engine: Engine) -> None:
    first = start_run(engine, "schedule", at(0))
    second = start_run(engine, "mqtt", at(5))
    assert second != first

    assert last_run(engine) == {
        **LINE1,
        "id": second,
        "trigger": "mqtt",
        "started_at": at(5),
        "finished_at": None,
        "status": "running",
        "reason": None,
        "candidate_version": None,
        "metrics": None,
    }
    metrics = {"false_reject_rate": 0.02, "defects_separated": True, "scores": [0.1, 0.2]}
    finish_run(engine, first, "accepted", None, "v2", metrics, at(3))
    finish_run(engine, second, "rejected", "false-reject rate worse by 0.05", "v3", None, at(9))

    runs = {run["id"]: run for run in list_runs(engine)}
    assert runs[first] == {
        **LINE1,
        "id": first,
        "trigger": "schedule",
        "started_at": at(0),
        "finished_at": at(3),
        "status": "accepted",
        "reason": None,
        "candidate_version": "v2",
        "metrics": metrics,
    }
    assert (runs[second]["status"], runs[second]["reason"], runs[second]["finished_at"]) == (
        "rejected",
        "false-reject rate worse by 0.05",
        at(9),
    )
    accepted = last_run(engine, "accepted")
    assert accepted is not None and accepted["id"] == first
    assert last_run(engine, "failed") is None


def test_finishing_an_unknown_run_is_a_database_error(engine: Engine) -> None:
    run = start_run(engine, "cli", at(0))
    with pytest.raises(DatabaseError, match=rf"finishing retrain run {run + 1} failed: no such run"):
        finish_run(engine, run + 1, "failed", "boom", None, None, at(1))
    assert [r["status"] for r in list_runs(engine)] == ["running"]


@pytest.mark.parametrize("status", ["done", "ACCEPTED", ""])
def test_a_run_status_outside_the_list_is_refused(engine: Engine, status: str) -> None:
    run = start_run(engine, "cli", at(0))
    with pytest.raises(ValueError, match=r"status must be one of running, accepted, rejected, failed, skipped"):
        finish_run(engine, run, status, None, None, None, at(1))
    with pytest.raises(ValueError, match="status must be one of"):
        last_run(engine, status)
    assert [r["status"] for r in list_runs(engine)] == ["running"]


def test_naive_datetimes_are_refused_naming_the_argument(engine: Engine) -> None:
    naive = datetime(2026, 3, 2, 8, 0, 0)
    with pytest.raises(ValueError, match="started_at must be a timezone-aware datetime"):
        start_run(engine, "cli", naive)
    run = start_run(engine, "cli", at(0))
    with pytest.raises(ValueError, match="finished_at must be a timezone-aware datetime"):
        finish_run(engine, run, "failed", None, None, None, naive)
    with pytest.raises(ValueError, match="created_at must be a timezone-aware datetime"):
        record(engine, "v1", naive)
    record(engine, "v1", at(0))
    with pytest.raises(ValueError, match="at must be a timezone-aware datetime"):
        activate_version(engine, "v1", naive)


def test_runs_are_listed_newest_first_up_to_the_limit(engine: Engine) -> None:
    assert list_runs(engine) == [] and last_run(engine) is None
    started = [at(m) for m in (10, 0, 30, 20)]
    ids = [start_run(engine, "schedule", when) for when in started]
    tied = start_run(engine, "cli", at(30))  # same start as ids[2]: the later insert comes first

    assert [run["id"] for run in list_runs(engine)] == [tied, ids[2], ids[3], ids[0], ids[1]]
    assert [run["id"] for run in list_runs(engine, limit=2)] == [tied, ids[2]]
    with pytest.raises(ValueError, match="limit must be at least 1"):
        list_runs(engine, limit=0)


# --- model versions ------------------------------------------------------------------------------------------


def test_recording_a_version_twice_updates_it_in_place(engine: Engine) -> None:
    record(engine, "v1", at(0))
    activate_version(engine, "v1", at(1))

    record(
        engine,
        "v1",
        at(2),
        artifact_path="models/v1-retry",
        backbone="ViT-B-16",
        backbone_sha256="c" * 64,
        manifest_sha256="d" * 64,
        thresholds={"cam1": 0.5, "cam2": 0.6},
        metrics=None,
        status="failed",
        reason="gate crashed",
    )

    assert list_versions(engine) == [
        {
            **LINE1,
            "version": "v1",
            "artifact_path": "models/v1-retry",
            "backbone": "ViT-B-16",
            "backbone_sha256": "c" * 64,
            "manifest_sha256": "d" * 64,
            "thresholds": {"cam1": 0.5, "cam2": 0.6},
            "metrics": None,
            "status": "failed",
            "reason": "gate crashed",
            "created_at": at(2),
            "activated_at": at(1),  # only activate_version writes it
        }
    ]


def test_recording_a_version_refuses_an_unknown_status(engine: Engine) -> None:
    with pytest.raises(ValueError, match="status must be one of active, retired, failed, candidate; got 'ready'"):
        record(engine, "v1", at(0), status="ready")
    assert list_versions(engine) == []


def test_activating_a_version_retires_the_previous_active_one(engine: Engine) -> None:
    for n, version in enumerate(("v1", "v2", "v3")):
        record(engine, version, at(n), **({"status": "failed", "reason": "false-reject rate worse"} if n == 2 else {}))
    activate_version(engine, "v1", at(10))

    activate_version(engine, "v2", at(20))

    versions = versions_by_name(engine)
    assert (versions["v2"]["status"], versions["v2"]["activated_at"]) == ("active", at(20))
    assert (versions["v1"]["status"], versions["v1"]["activated_at"]) == ("retired", at(10))
    assert (versions["v3"]["status"], versions["v3"]["reason"]) == ("failed", "false-reject rate worse")

    activate_version(engine, "v1", at(30))  # a rollback is the same call
    versions = versions_by_name(engine)
    assert [(v, versions[v]["status"]) for v in ("v1", "v2", "v3")] == [
        ("v1", "active"),
        ("v2", "retired"),
        ("v3", "failed"),
    ]
    assert versions["v1"]["activated_at"] == at(30)


def test_activating_an_unknown_version_changes_nothing(engine: Engine) -> None:
    record(engine, "v1", at(0))
    activate_version(engine, "v1", at(1))
    before = list_versions(engine)

    with pytest.raises(DatabaseError, match=r"activating model version 'v9' failed: no such version"):
        activate_version(engine, "v9", at(2))

    assert list_versions(engine) == before


def test_versions_are_listed_newest_first(engine: Engine) -> None:
    assert list_versions(engine) == []
    for version, minutes in (("v2", 10), ("v1", 0), ("v3", 20)):
        record(engine, version, at(minutes))
    assert [row["version"] for row in list_versions(engine)] == ["v3", "v2", "v1"]


# --- failures ------------------------------------------------------------------------------------------------

CALLS: dict[str, tuple[Callable[[Engine], object], str]] = {
    "confirmed_images": (lambda e: confirmed_images(e, "normal", True), "reading confirmed normal images"),
    "mark_trained": (lambda e: mark_trained(e, ["a"], "v1"), "marking 1 inspections trained into 'v1'"),
    "start_run": (lambda e: start_run(e, "cli", T0), "starting a retrain run"),
    "finish_run": (lambda e: finish_run(e, 1, "failed", None, None, None, T0), "finishing retrain run 1"),
    "record_version": (lambda e: record(e, "v1", T0), "recording model version 'v1'"),
    "activate_version": (lambda e: activate_version(e, "v1", T0), "activating model version 'v1'"),
    "fail_interrupted_runs": (lambda e: fail_interrupted_runs(e, T0), "closing interrupted retrain runs"),
    "list_versions": (list_versions, "listing model versions"),
    "list_runs": (list_runs, "listing retrain runs"),
    "last_run": (last_run, "reading the last retrain run"),
}


@pytest.mark.parametrize("name", CALLS)
def test_every_query_reports_a_failing_store_as_a_database_error(store_url: str, name: str) -> None:
    """A store without linewatch's schema: the driver's error comes back as a DatabaseError naming what
    was being done, with the password masked."""
    call, what = CALLS[name]
    engine = make_engine(store_url)
    try:
        with pytest.raises(DatabaseError, match=rf"{re.escape(what)} failed: \w+: ") as error:
            call(engine)
    finally:
        engine.dispose()
    assert PASSWORD not in str(error.value)


def test_interrupted_runs_are_closed_as_failed_and_keep_existing_leaves_a_row_alone(engine: Engine) -> None:
    done = start_run(engine, "schedule", at(0))
    finish_run(engine, done, "accepted", "fine", "v2", None, at(1))
    crashed = start_run(engine, "mqtt: new steel", at(2))
    assert fail_interrupted_runs(engine, at(3)) == 1
    runs = {run["id"]: run for run in list_runs(engine)}
    assert (runs[crashed]["status"], runs[crashed]["finished_at"]) == ("failed", at(3))
    assert "interrupted" in runs[crashed]["reason"] and runs[done]["status"] == "accepted"
    assert last_run(engine, trigger="schedule")["id"] == done
    assert last_run(engine, trigger="cli") is None

    record(engine, "v1", at(0), metrics={"gate": {"accepted": True}}, reason="gate passed")
    record(engine, "v1", at(5), metrics=None, reason=None, status="active", keep_existing=True)
    row = versions_by_name(engine)["v1"]
    assert (row["metrics"], row["reason"], row["status"]) == ({"gate": {"accepted": True}}, "gate passed", "candidate")


# --- two lines in one store ----------------------------------------------------------------------------------


def test_each_line_gathers_and_marks_only_its_own_confirmed_images(engine: Engine, line2: Engine) -> None:
    """Both lines have a cam1 and an inspection "shared": each line trains on its own, and marking one line's
    training set leaves the other line's rows of the same ids untrained."""
    add_inspections(
        engine,
        [
            {"id": "shared", "label": "normal", "labelled_at": at(1), "product": "plate"},
            {"id": "line1-only", "label": "normal", "labelled_at": at(2), "product": "plate"},
        ],
    )
    add_inspections(
        line2,
        [
            {"id": "shared", "label": "normal", "labelled_at": at(0), "product": "bolt"},
            {"id": "line2-only", "label": "normal", "labelled_at": at(3), "product": "bolt"},
            {"id": "line2-defect", "label": "defect", "labelled_at": at(4), "product": "bolt"},
        ],
    )

    assert confirmed_images(engine, "normal", untrained_only=True) == [
        LabelledImage("shared", "cam1", "plate", "cam1/shared.jpg", at(1)),
        LabelledImage("line1-only", "cam1", "plate", "cam1/line1-only.jpg", at(2)),
    ]
    assert [image.inspection_id for image in confirmed_images(line2, "normal", untrained_only=True)] == [
        "shared",
        "line2-only",
    ]
    assert confirmed_images(engine, "defect", untrained_only=False) == []

    assert mark_trained(engine, ["shared", "line2-only"], "v2") == 1  # line2-only is not this line's

    assert trained_into(engine) == {"shared": "v2", "line1-only": None}
    assert trained_into(line2) == {"shared": None, "line2-only": None, "line2-defect": None}
    assert [image.inspection_id for image in confirmed_images(line2, "normal", untrained_only=True)] == [
        "shared",
        "line2-only",
    ]


def test_the_same_version_on_two_lines_is_two_rows_and_activating_one_retires_nothing_on_the_other(
    engine: Engine, line2: Engine
) -> None:
    record(engine, "v1", at(0), artifact_path="models/line1/v1")
    record(engine, "v2", at(1), artifact_path="models/line1/v2")
    record(line2, "v1", at(2), artifact_path="models/line2/v1")
    activate_version(line2, "v1", at(3))

    activate_version(engine, "v1", at(4))
    activate_version(engine, "v2", at(5))  # retires line1's v1 only

    ours, theirs = versions_by_name(engine), versions_by_name(line2)
    assert {name: (row["status"], row["artifact_path"]) for name, row in ours.items()} == {
        "v1": ("retired", "models/line1/v1"),
        "v2": ("active", "models/line1/v2"),
    }
    assert {name: (row["status"], row["artifact_path"]) for name, row in theirs.items()} == {
        "v1": ("active", "models/line2/v1"),
    }
    assert (theirs["v1"]["activated_at"], theirs["v1"]["line"]) == (at(3), "line2")

    record(line2, "v1", at(6), artifact_path="models/line2/v1-retry", status="failed")  # a replay: line2's row
    assert versions_by_name(engine)["v1"]["artifact_path"] == "models/line1/v1"
    assert versions_by_name(line2)["v1"]["artifact_path"] == "models/line2/v1-retry"
    record(engine, "v2", at(7), artifact_path="elsewhere", keep_existing=True)  # line1's row exists: kept
    assert versions_by_name(engine)["v2"]["artifact_path"] == "models/line1/v2"

    with pytest.raises(DatabaseError, match=r"activating model version 'v2' failed: no such version"):
        activate_version(line2, "v2", at(8))  # line1 has a v2; line2 has none
    assert versions_by_name(line2)["v1"]["status"] == "failed"
    assert versions_by_name(engine)["v2"]["status"] == "active"


def test_each_line_lists_finishes_and_closes_only_its_own_runs(engine: Engine, line2: Engine) -> None:
    ours = start_run(engine, "schedule", at(0))
    theirs = start_run(line2, "schedule", at(1))
    theirs_done = start_run(line2, "cli", at(2))
    finish_run(line2, theirs_done, "skipped", "too few", None, None, at(3))

    assert [run["id"] for run in list_runs(engine)] == [ours]
    assert [run["id"] for run in list_runs(line2)] == [theirs_done, theirs]
    assert last_run(engine, trigger="cli") is None
    assert last_run(line2, "skipped")["id"] == theirs_done
    with pytest.raises(DatabaseError, match=rf"finishing retrain run {theirs} failed: no such run"):
        finish_run(engine, theirs, "failed", "not ours", None, None, at(4))

    assert fail_interrupted_runs(engine, at(5)) == 1  # line2's running run is line2's daemon's business

    assert [(run["id"], run["status"]) for run in list_runs(engine)] == [(ours, "failed")]
    assert [(run["id"], run["status"]) for run in list_runs(line2)] == [(theirs_done, "skipped"), (theirs, "running")]

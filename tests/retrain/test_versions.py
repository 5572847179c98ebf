"""The on-disk model registry: activation, history, rollback, publishing, pruning and the training lock."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from linewatch.anople.files import MANIFEST
from linewatch.retrain.versions import (
    ACTIVE_FILE,
    HISTORY_LIMIT,
    LOCK_FILE,
    ModelRegistry,
    RegistryBusy,
    RegistryError,
    model_version,
)


def fake_artifact(path: Path, created_at: str = "2026-01-01T00:00:00+00:00") -> Path:
    path.mkdir(parents=True)
    (path / MANIFEST).write_text(json.dumps({"created_at": created_at}))
    return path


@pytest.fixture
def setup(tmp_path: Path) -> tuple[ModelRegistry, Path, Path]:
    """A registry under models/line1 whose configured model lives outside it, like a fresh install."""
    root = tmp_path / "models" / "line1"
    initial = fake_artifact(tmp_path / "shipped" / "initial", "2025-06-01T00:00:00+00:00")
    return ModelRegistry(root, initial), root, initial


def version(root: Path, day: int) -> Path:
    return fake_artifact(root / f"202603{day:02d}T020000Z", f"2026-03-{day:02d}T02:00:00+00:00")


def test_initial_is_active_until_something_is_activated(setup) -> None:
    registry, root, initial = setup
    assert registry.active() == initial
    assert registry.history() == [initial]
    assert not (root / ACTIVE_FILE).exists()
    with pytest.raises(RegistryError, match="no previously active"):
        registry.rollback_target(None)


def test_activation_persists_for_a_new_registry_object(setup) -> None:
    registry, root, initial = setup
    v1 = version(root, 1)
    registry.activate(v1)
    fresh = ModelRegistry(root, initial)
    assert fresh.active() == v1
    assert fresh.history() == [v1, initial]
    assert [entry.active for entry in fresh.versions()] == [False, True]


def test_history_is_newest_first_and_deduplicated(setup) -> None:
    registry, root, initial = setup
    v1, v2, v3 = version(root, 1), version(root, 2), version(root, 3)
    for path in (v1, v2, v3, v1):
        registry.activate(path)
    assert registry.history() == [v1, v3, v2, initial]
    registry.activate(root / ".." / "line1" / v2.name)  # another spelling of the same folder
    assert registry.history() == [v2, v1, v3, initial]


def test_history_is_capped(setup) -> None:
    registry, root, _ = setup
    paths = [fake_artifact(root / f"v{i:03d}") for i in range(HISTORY_LIMIT + 5)]
    for path in paths:
        registry.activate(path)
    history = registry.history()
    assert len(history) == HISTORY_LIMIT
    assert history[0] == paths[-1] and history[-1] == paths[5]


def test_paths_under_root_are_relative_so_the_folder_can_move(setup, tmp_path: Path) -> None:
    registry, root, initial = setup
    v1, v2 = version(root, 1), version(root, 2)
    registry.activate(v1)
    registry.activate(v2)
    stored = json.loads((root / ACTIVE_FILE).read_text())
    assert stored == {"active": v2.name, "history": [v2.name, v1.name, str(initial)]}

    moved = tmp_path / "other_pc" / "line1"
    moved.parent.mkdir()
    shutil.move(root, moved)
    registry = ModelRegistry(moved, initial)
    assert registry.active() == moved / v2.name
    assert registry.history() == [moved / v2.name, moved / v1.name, initial]
    assert registry.rollback_target(None) == moved / v1.name


def test_corrupt_active_json_is_an_error_naming_the_file(setup) -> None:
    registry, root, _ = setup
    v1 = version(root, 1)
    for content in ("{not json", "[]", '{"active": 3}', '{"active": "x", "history": [1]}', "\xff\xfe"):
        (root / ACTIVE_FILE).write_text(content, encoding="latin-1")
        with pytest.raises(RegistryError, match=str(root / ACTIVE_FILE)):
            registry.active()
        with pytest.raises(RegistryError, match="corrupt"):
            registry.activate(v1)  # never overwrites what it cannot read
        with pytest.raises(RegistryError, match="corrupt"):
            registry.history()


def test_active_folder_gone_is_an_error_not_a_silent_fallback(setup) -> None:
    registry, root, initial = setup
    v1 = version(root, 1)
    registry.activate(v1)
    shutil.rmtree(v1)
    with pytest.raises(RegistryError, match=f"{v1}.*does not exist"):
        registry.active()
    # One rollback repairs it.
    target = registry.rollback_target(None)
    assert target == initial
    registry.activate(target)
    assert registry.active() == initial


def test_rollback_target_default_and_explicit(setup) -> None:
    registry, root, initial = setup
    v1, v2, v3 = version(root, 1), version(root, 2), version(root, 3)
    registry.activate(v1)
    registry.activate(v2)
    assert registry.rollback_target(None) == v1
    assert registry.rollback_target(v1.name) == v1
    assert registry.rollback_target(initial.name) == initial  # history entry outside root, by name
    assert registry.rollback_target(v3.name) == v3  # under root, never activated
    registry.activate(registry.rollback_target(None))
    assert registry.rollback_target(None) == v2  # two rollbacks toggle between the last two


def test_rollback_target_by_version_id_checks_the_hash(setup) -> None:
    registry, root, initial = setup
    v1, v2 = version(root, 1), version(root, 2)
    registry.activate(v1)
    registry.activate(v2)
    recorded = model_version(v1)
    assert registry.rollback_target(recorded) == v1
    assert registry.rollback_target(model_version(initial)) == initial
    (v1 / MANIFEST).write_text(json.dumps({"created_at": "changed"}))
    with pytest.raises(RegistryError, match="changed since"):
        registry.rollback_target(recorded)


def test_rollback_target_refusals(setup) -> None:
    registry, root, _ = setup
    v1, v2 = version(root, 1), version(root, 2)
    registry.activate(v1)
    registry.activate(v2)
    with pytest.raises(RegistryError, match=rf"no version 'nope'.*available:.*{v1.name}@"):
        registry.rollback_target("nope")
    with pytest.raises(RegistryError, match="already the active"):
        registry.rollback_target(v2.name)
    with pytest.raises(RegistryError, match="already the active"):
        registry.rollback_target(model_version(v2))
    for bad in ("", "..", "../line1", ".staging-x", "a/b"):
        with pytest.raises(RegistryError):
            registry.rollback_target(bad)
    (v1 / MANIFEST).unlink()
    with pytest.raises(RegistryError, match=f"no {MANIFEST}"):
        registry.rollback_target(None)


def test_model_version_matches_the_manifest_hash(setup) -> None:
    _, root, _ = setup
    v1 = version(root, 1)
    digest = hashlib.sha256((v1 / MANIFEST).read_bytes()).hexdigest()[:10]
    assert model_version(v1) == f"{v1.name}@{digest}"


def test_new_version_dir_is_utc_and_unique(setup) -> None:
    registry, root, _ = setup
    now = datetime(2026, 3, 1, 4, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    first = registry.new_version_dir(now)
    assert first == root / "20260301T020000Z" and not first.exists()
    assert registry.new_version_dir(now) == first  # not created, so still free
    registry.staging_dir(first)
    assert registry.new_version_dir(now).name == "20260301T020000Z-2"  # its staging folder is taken
    fake_artifact(root / "20260301T020000Z-2")
    assert registry.new_version_dir(now).name == "20260301T020000Z-3"
    with pytest.raises(ValueError, match="timezone-aware"):
        registry.new_version_dir(datetime(2026, 3, 1))


def test_staging_is_fresh_hidden_and_published_atomically(setup) -> None:
    registry, root, _ = setup
    final = registry.new_version_dir(datetime(2026, 3, 1, tzinfo=UTC))
    staging = registry.staging_dir(final)
    assert staging == root / f".staging-{final.name}" and staging.is_dir()
    (staging / "junk").write_text("left over")
    staging = registry.staging_dir(final)
    assert list(staging.iterdir()) == []
    assert registry.versions()[0].name == "initial"  # staging is hidden from listings
    assert len(registry.versions()) == 1

    with pytest.raises(RegistryError, match=f"no {MANIFEST}"):
        registry.publish(staging, final)
    (staging / MANIFEST).write_text(json.dumps({"created_at": "2026-03-01T00:00:00+00:00"}))
    (staging / "learned.safetensors").write_bytes(b"x")
    registry.publish(staging, final)
    assert not staging.exists()
    assert sorted(p.name for p in final.iterdir()) == [MANIFEST, "learned.safetensors"]

    again = registry.staging_dir(final)
    (again / MANIFEST).write_text("{}")
    with pytest.raises(RegistryError, match="never overwritten"):
        registry.publish(again, final)
    with pytest.raises(RegistryError, match="not directly under"):
        registry.publish(again, root.parent / "elsewhere")
    with pytest.raises(RegistryError, match="not directly under"):
        registry.staging_dir(root / "a" / "b")


def test_activate_refuses_folders_without_a_manifest(setup, tmp_path: Path) -> None:
    registry, root, _ = setup
    with pytest.raises(RegistryError, match="not a directory"):
        registry.activate(root / "missing")
    (root / "empty").mkdir(parents=True)
    with pytest.raises(RegistryError, match=f"has no {MANIFEST}"):
        registry.activate(root / "empty")


def test_versions_lists_root_initial_and_outside_history(setup, tmp_path: Path) -> None:
    registry, root, initial = setup
    v2, v1 = version(root, 2), version(root, 1)
    outside = fake_artifact(tmp_path / "usb" / "vendor", "2026-02-01T00:00:00+00:00")
    (root / "not_a_version").mkdir()
    (root / ".hidden").mkdir()
    (root / ".hidden" / MANIFEST).write_text("{}")
    no_date = fake_artifact(root / "undated")
    (no_date / MANIFEST).write_text("{}")
    registry.activate(outside)
    registry.activate(v1)
    entries = registry.versions()
    assert [e.name for e in entries] == ["undated", "initial", "vendor", v1.name, v2.name]
    assert [e.created_at for e in entries][:2] == ["", "2025-06-01T00:00:00+00:00"]
    assert [e.name for e in entries if e.active] == [v1.name]
    assert entries[1].path == initial and entries[2].path == outside


def test_prune_keeps_active_history_window_initial_and_outside(setup, tmp_path: Path) -> None:
    registry, root, initial = setup
    outside = fake_artifact(tmp_path / "usb" / "vendor", "2026-01-15T00:00:00+00:00")
    days = [version(root, day) for day in range(1, 8)]
    registry.activate(outside)
    for path in days[:5]:
        registry.activate(path)  # history: d5 d4 d3 d2 d1 outside initial
    rejected_old = fake_artifact(root / "20260301T120000Z", "2026-03-01T12:00:00+00:00")  # never activated
    (root / "stray").mkdir()  # not a version: left alone
    with pytest.raises(ValueError, match="at least 1"):
        registry.prune(0)

    deleted = registry.prune(keep=2)
    assert sorted(p.name for p in deleted) == sorted([days[0].name, days[1].name, rejected_old.name])
    survivors = sorted(p.name for p in root.iterdir())
    assert survivors == sorted([ACTIVE_FILE, "stray", *(d.name for d in days[2:])])
    assert initial.is_dir() and outside.is_dir()  # outside root: never deleted, even beyond the window
    assert registry.active() == days[4]
    assert registry.rollback_target(None) == days[3]


def test_prune_never_follows_symlinks_out_of_root(setup, tmp_path: Path) -> None:
    registry, root, _ = setup
    precious = fake_artifact(tmp_path / "precious", "2000-01-01T00:00:00+00:00")
    v1 = version(root, 1)
    (root / "linked").symlink_to(precious)
    registry.activate(precious)
    registry.activate(v1)
    registry.activate(version(root, 2))
    registry.activate(version(root, 3))  # precious falls out of keep=1 and is older than the active one
    registry.prune(keep=1)
    assert (precious / MANIFEST).is_file() and (root / "linked").is_symlink()


def test_prune_removes_staging_leftovers_only_when_no_run_holds_the_lock(setup) -> None:
    registry, root, initial = setup
    leftover = registry.staging_dir(root / "20260301T020000Z")
    other = ModelRegistry(root, initial)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with other.training_lock():
            holding.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    holding.wait(5)
    assert registry.prune(keep=1) == []  # a run in another thread may be writing it
    assert leftover.is_dir()
    release.set()
    thread.join()
    assert registry.prune(keep=1) == [leftover]
    again = registry.staging_dir(root / "20260302T020000Z")
    with registry.training_lock():
        assert registry.prune(keep=1) == [again]  # our own run's leftovers


def test_discard_refusals_and_success(setup, tmp_path: Path) -> None:
    registry, root, initial = setup
    v1, v2, candidate = version(root, 1), version(root, 2), version(root, 3)
    registry.activate(v1)
    registry.activate(v2)
    with pytest.raises(RegistryError, match="active model"):
        registry.discard(v2)
    with pytest.raises(RegistryError, match="activation history"):
        registry.discard(v1)
    with pytest.raises(RegistryError, match="not a version folder directly under"):
        registry.discard(initial)
    with pytest.raises(RegistryError, match="not a version folder directly under"):
        registry.discard(root)
    with pytest.raises(RegistryError, match="not a real directory"):
        registry.discard(root / ACTIVE_FILE)
    (root / "link").symlink_to(tmp_path / "shipped")
    with pytest.raises(RegistryError, match="not a real directory"):
        registry.discard(root / "link")
    assert (tmp_path / "shipped" / "initial" / MANIFEST).is_file()

    registry.discard(candidate)
    assert not candidate.exists()
    registry.discard(candidate)  # already gone: fine
    staging = registry.staging_dir(root / "20260304T020000Z")
    registry.discard(staging)
    assert not staging.exists()


def test_initial_under_root_is_never_discarded(tmp_path: Path) -> None:
    root = tmp_path / "line1"
    initial = fake_artifact(root / "shipped")
    registry = ModelRegistry(root, initial)
    with pytest.raises(RegistryError, match="initial model"):
        registry.discard(initial)
    registry.activate(version(root, 1))
    assert registry.prune(keep=1) == []
    assert json.loads((root / ACTIVE_FILE).read_text())["history"] == ["20260301T020000Z", "shipped"]


def test_training_lock_excludes_a_second_thread(setup) -> None:
    registry, root, initial = setup
    other = ModelRegistry(root, initial)  # a separate object: exclusion must not depend on sharing one
    with registry.training_lock():
        assert (root / LOCK_FILE).is_file()
        errors: list[BaseException] = []

        def try_lock() -> None:
            try:
                with other.training_lock():
                    pass
            except RegistryBusy as exc:
                errors.append(exc)

        thread = threading.Thread(target=try_lock)
        thread.start()
        thread.join()
        assert len(errors) == 1 and LOCK_FILE in str(errors[0])
        with pytest.raises(RegistryBusy), other.training_lock():  # nor is it reentrant in the same thread
            pass
    with other.training_lock():  # released on exit
        pass


def test_training_lock_released_when_the_body_raises(setup) -> None:
    registry, _, _ = setup
    with pytest.raises(KeyError), registry.training_lock():
        raise KeyError("boom")
    with registry.training_lock():
        pass


_FLOCK_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("busy")
else:
    print("free")
"""


def test_training_lock_excludes_other_processes(setup) -> None:
    registry, root, initial = setup

    def probe() -> str:
        run = subprocess.run(
            [sys.executable, "-c", _FLOCK_PROBE, str(root / LOCK_FILE)], capture_output=True, text=True, timeout=30
        )
        return run.stdout.strip()

    with registry.training_lock():
        assert probe() == "busy"
    assert probe() == "free"

    holder = subprocess.Popen(
        [sys.executable, "-c", _FLOCK_PROBE + "sys.stdout.flush(); sys.stdin.read()", str(root / LOCK_FILE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "free"
        with pytest.raises(RegistryBusy, match="another process"), ModelRegistry(root, initial).training_lock():
            pass
    finally:
        holder.communicate("", timeout=30)
    with registry.training_lock():
        pass


def test_the_daemon_lock_is_seen_by_other_registries_and_refuses_a_second_daemon(tmp_path: Path) -> None:
    first = ModelRegistry(tmp_path / "line", tmp_path / "initial")
    other = ModelRegistry(tmp_path / "line", tmp_path / "initial")
    assert not other.daemon_running()
    fd = first.hold_daemon_lock()
    try:
        assert other.daemon_running()
        with pytest.raises(RegistryBusy, match=f"another linewatch daemon \\(pid {os.getpid()}\\) serves this line"):
            other.hold_daemon_lock()
    finally:
        os.close(fd)
    assert not other.daemon_running()

"""The on-disk model registry of one line: version folders under ``models/<line>/``, which one is active,
the activation history that rollback walks, and the lock that keeps two retraining runs apart.

Pure filesystem (stdlib only); nothing here loads a model. Layout of ``root`` (= ``models/<line>``)::

    20260301T020000Z/        a published version: an artifact directory holding anople.json
    20260302T020000Z-2/      a second version published within the same second
    .staging-20260303T020000Z/   a version being written; dot-prefixed so listings skip it
    active.json              {"active": ..., "history": [...]} — absent until something was activated
    .retrain.lock            flock target of :meth:`ModelRegistry.training_lock`; never delete it

Decisions:

- Until something is activated the configured ``[model].path`` (``initial``) is active. The first
  activation records it in the history, so rolling back to it is always possible.
- Paths under ``root`` are stored in ``active.json`` relative to ``root`` and everything else absolute,
  so the whole ``models/<line>`` folder can be moved or copied to another PC and keeps working.
- ``active.json`` naming a folder that is gone or has no anople.json is an error, not a fallback to
  ``initial``: silently serving an older model after a disk mishap is worse than refusing to start. The
  error names the folder; :meth:`ModelRegistry.rollback_target` still works then, so one rollback
  repairs it. A corrupt ``active.json`` is an error naming the file, never ignored.
- A version id is ``NAME@HASH`` (:func:`model_version`): asking to roll back to an id whose folder's
  manifest no longer hashes to ``HASH`` is refused, because the folder now holds a different model.
- ``publish`` fsyncs the staged files before the rename and the root after it, so a power cut never
  leaves a published version with empty files or a rename that did not happen.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from linewatch.anople.files import MANIFEST, model_version

ACTIVE_FILE = "active.json"
LOCK_FILE = ".retrain.lock"
DAEMON_LOCK_FILE = ".daemon.lock"
STAGING_PREFIX = ".staging-"
HISTORY_LIMIT = 50
VERSION_FORMAT = "%Y%m%dT%H%M%SZ"

# One thread lock per lock file, shared by every ModelRegistry of this process, and which thread holds it.
_guard = threading.Lock()
_thread_locks: dict[Path, threading.Lock] = {}
_holders: dict[Path, int] = {}


class RegistryError(ValueError):
    """The registry folder (or a version in it) cannot be used as asked; the message names the path and why."""


class RegistryBusy(RuntimeError):
    """Another process or thread holds the training lock of this registry."""


@dataclass(frozen=True)
class VersionEntry:
    name: str  # directory name
    path: Path
    created_at: str  # from anople.json "created_at" ("" if missing or unreadable)
    active: bool


def _abs(path: Path) -> Path:
    """Absolute and normalised without following symlinks, so the same folder compares equal however named."""
    return Path(os.path.abspath(path))


def _has_manifest(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def _created_at(path: Path) -> str:
    """For ordering and display only, so an unreadable manifest yields "" instead of failing a listing."""
    try:
        manifest = json.loads((path / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return ""
    value = manifest.get("created_at") if isinstance(manifest, dict) else None
    return value if isinstance(value, str) else ""


def _describe(path: Path) -> str:
    return model_version(path) if _has_manifest(path) else f"{path} (no {MANIFEST})"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(directory: Path) -> None:
    for folder, _dirs, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _remove(path: Path) -> None:
    """Delete a folder, or only the link/file itself: never follow a symlink into someone else's folder."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


class ModelRegistry:
    """The model versions of one line under ``root`` (``models/<line>``); ``initial`` is the configured model."""

    def __init__(self, root: Path, initial: Path) -> None:
        self.root = _abs(root)
        self.initial = _abs(initial)
        self.active_file = self.root / ACTIVE_FILE

    # -- active.json -------------------------------------------------------------------------------------

    def _encode(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix() if self._under_root(path) else str(path)

    def _decode(self, stored: str) -> Path:
        path = Path(stored)
        return _abs(path if path.is_absolute() else self.root / path)

    def _under_root(self, path: Path) -> bool:
        path = _abs(path)
        return path != self.root and path.is_relative_to(self.root)

    def _load(self) -> list[Path] | None:
        """The activation chain, active first and without duplicates; None when nothing was ever activated."""
        try:
            raw = self.active_file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryError(f"{self.active_file}: cannot read it: {exc}") from exc
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise RegistryError(f"{self.active_file}: corrupt, not JSON ({exc}); fix or delete it") from exc
        if not isinstance(data, dict):
            raise RegistryError(f"{self.active_file}: corrupt, expected a JSON object; fix or delete it")
        active, history = data.get("active"), data.get("history", [])
        if not isinstance(active, str) or not active:
            raise RegistryError(f"{self.active_file}: corrupt, 'active' must be a non-empty path string")
        if not isinstance(history, list) or not all(isinstance(item, str) and item for item in history):
            raise RegistryError(f"{self.active_file}: corrupt, 'history' must be a list of path strings")
        chain: list[Path] = []
        for item in [active, *history]:
            path = self._decode(item)
            if path not in chain:
                chain.append(path)
        return chain

    def _chain(self) -> list[Path]:
        return self._load() or [self.initial]

    def _write(self, data: dict[str, object]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".active-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=2)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.active_file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)

    # -- queries -----------------------------------------------------------------------------------------

    def active(self) -> Path:
        """The active model folder. Raises when active.json names a folder that is gone (see module doc)."""
        chain = self._load()
        if chain is None:
            return self.initial
        path = chain[0]
        if not _has_manifest(path):
            problem = f"has no {MANIFEST}" if path.is_dir() else "does not exist"
            raise RegistryError(
                f"{self.active_file} names {path} as the active model, but it {problem}; restore that folder "
                f"or roll back to another version (not falling back to {self.initial} silently)"
            )
        return path

    def history(self) -> list[Path]:
        """Activation history, newest first (the active one first); ``[initial]`` when nothing was activated."""
        return self._chain()

    def versions(self) -> list[VersionEntry]:
        """Every version folder directly under root, the initial model and history entries outside root,
        sorted by created_at then name. Hidden (dot) folders, such as staging ones, are skipped."""
        chain = self._chain()
        paths: list[Path] = []
        if self.root.is_dir():
            paths += [
                _abs(child)
                for child in self.root.iterdir()
                if not child.name.startswith(".") and child.is_dir() and _has_manifest(child)
            ]
        paths.append(self.initial)
        paths += [path for path in chain if not self._under_root(path) and _has_manifest(path)]
        unique = list(dict.fromkeys(paths))
        entries = [VersionEntry(path.name, path, _created_at(path), path == chain[0]) for path in unique]
        return sorted(entries, key=lambda entry: (entry.created_at, entry.name))

    def _available(self) -> str:
        return ", ".join(_describe(entry.path) for entry in self.versions()) or "none"

    # -- writing versions --------------------------------------------------------------------------------

    def new_version_dir(self, now: datetime) -> Path:
        """``root/<UTC timestamp>``, suffixed ``-2``, ``-3``... while that name or its staging folder is taken.
        Not created: :meth:`staging_dir` and :meth:`publish` do that."""
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError(f"now must be timezone-aware, got naive {now.isoformat()}")
        base = now.astimezone(UTC).strftime(VERSION_FORMAT)
        name, number = base, 1
        while os.path.lexists(self.root / name) or os.path.lexists(self.root / f"{STAGING_PREFIX}{name}"):
            number += 1
            name = f"{base}-{number}"
        return self.root / name

    def _direct_child(self, path: Path, what: str) -> Path:
        path = _abs(path)
        if path.parent != self.root:
            raise RegistryError(f"{what} {path} is not directly under the registry folder {self.root}")
        return path

    def staging_dir(self, final: Path) -> Path:
        """A fresh, empty ``root/.staging-<final name>`` to write the new version into (leftovers removed)."""
        final = self._direct_child(final, "version folder")
        staging = self.root / f"{STAGING_PREFIX}{final.name}"
        _remove(staging)
        staging.mkdir(parents=True)
        return staging

    def publish(self, staging: Path, final: Path) -> None:
        """Atomically rename a complete staging folder to its final name; a version is never overwritten."""
        staging = self._direct_child(staging, "staging folder")
        final = self._direct_child(final, "version folder")
        if not _has_manifest(staging):
            raise RegistryError(f"{staging} has no {MANIFEST}: refusing to publish an incomplete model")
        if os.path.lexists(final):
            raise RegistryError(f"{final} already exists: a published version is never overwritten")
        _fsync_tree(staging)
        os.replace(staging, final)
        _fsync_dir(self.root)

    def activate(self, path: Path) -> None:
        """Make ``path`` active and put it first in the history (deduplicated, at most HISTORY_LIMIT entries).

        Written atomically (temporary file, fsync, rename, fsync of root): a crash leaves the old or the new
        active.json, never half of one."""
        target = _abs(path)
        if not target.is_dir():
            raise RegistryError(f"cannot activate {target}: not a directory")
        if not _has_manifest(target):
            raise RegistryError(f"cannot activate {target}: it has no {MANIFEST}")
        chain = [target, *(item for item in self._chain() if item != target)][:HISTORY_LIMIT]
        self._write({"active": self._encode(target), "history": [self._encode(item) for item in chain]})

    # -- rollback ----------------------------------------------------------------------------------------

    def rollback_target(self, version: str | None) -> Path:
        """The folder to activate for a rollback; validated but not activated.

        ``None`` means the previously active version (history[1]), so two rollbacks in a row toggle between
        the last two. Otherwise ``version`` is a folder name under root, the name of a history entry or of the
        initial model (looked up in that order), or a ``NAME@HASH`` id whose hash must still match."""
        chain = self._chain()
        if version is None:
            if len(chain) < 2:
                raise RegistryError(
                    f"{self.root}: no previously active version to roll back to; available: {self._available()}"
                )
            target = chain[1]
        else:
            target = self._find(version, chain)
        if target == chain[0]:
            raise RegistryError(f"{target} is already the active model")
        if not _has_manifest(target):
            raise RegistryError(f"cannot roll back to {target}: it has no {MANIFEST} (deleted or damaged)")
        return target

    def _find(self, version: str, chain: list[Path]) -> Path:
        name, digest = version.rsplit("@", 1) if "@" in version else (version, None)
        if not name or name in (".", "..") or name.startswith(".") or "/" in name or os.sep in name:
            raise RegistryError(f"{version!r} is not a version name or NAME@HASH id")
        candidates = [self.root / name] if (self.root / name).is_dir() else []
        candidates += [path for path in chain if path.name == name]
        if self.initial.name == name:
            candidates.append(self.initial)
        candidates = list(dict.fromkeys(candidates))
        if not candidates:
            raise RegistryError(f"no version {version!r} in {self.root}; available: {self._available()}")
        if digest is None:
            return candidates[0]
        for candidate in candidates:
            if _has_manifest(candidate) and model_version(candidate) == version:
                return candidate
        found = ", ".join(_describe(candidate) for candidate in candidates)
        raise RegistryError(
            f"{version}: the folder by that name changed since that id was recorded (now {found}); "
            "refusing to activate a different model under the same name"
        )

    # -- deleting ----------------------------------------------------------------------------------------

    def _deletable(self, path: Path) -> bool:
        """Last line of defence: a real directory whose real location is inside the real root."""
        return (
            not path.is_symlink()
            and path.is_dir()
            and path.resolve().is_relative_to(self.root.resolve())
            and path.resolve() != self.root.resolve()
        )

    def prune(self, keep: int) -> list[Path]:
        """Delete old version folders under root; returns what was deleted.

        Kept always: the active version, the ``keep`` versions activated before it (history[1..keep], the
        rollback targets), the initial model, anything outside root, hidden entries, symlinks, and folders
        without anople.json. Deleted: version folders under root that were once active but fell out of that
        window, and version folders never activated that are older (created_at, then name) than the active
        one — rejected or crashed candidates; a never-activated folder newer than the active one is kept,
        since it may be a candidate still being gated or one put there to roll forward to.
        Leftover ``.staging-*`` folders are deleted too, but only when no retraining run holds the training
        lock (this thread's own hold counts as free), so a run in progress never loses its staging folder.
        """
        if keep < 1:
            raise ValueError(f"keep must be at least 1 (one version to roll back to), got {keep}")
        if not self.root.is_dir():
            return []
        chain = self._chain()
        active = chain[0]
        protected = {*chain[: keep + 1], self.initial}
        active_key = (_created_at(active), active.name)
        deleted: list[Path] = []
        staging: list[Path] = []
        for child in sorted(self.root.iterdir()):
            path = _abs(child)
            if child.name.startswith(STAGING_PREFIX):
                staging.append(path)
                continue
            if child.name.startswith(".") or path in protected or not self._deletable(path):
                continue
            if not _has_manifest(path):
                continue
            if path in chain or (_created_at(path), path.name) < active_key:
                shutil.rmtree(path)
                deleted.append(path)
        if staging:
            deleted += self._remove_staging(staging)
        return deleted

    def _remove_staging(self, staging: list[Path]) -> list[Path]:
        with _guard:
            ours = _holders.get(self._lock_key()) == threading.get_ident()
        if ours:
            return self._remove_all(staging)
        try:
            with self.training_lock():
                return self._remove_all(staging)
        except RegistryBusy:
            return []  # a run is writing one of them; a later prune gets the leftovers

    def _remove_all(self, paths: list[Path]) -> list[Path]:
        removed = []
        for path in paths:
            if os.path.lexists(path) and (path.is_symlink() or self._deletable(path)):
                _remove(path)
                removed.append(path)
        return removed

    def discard(self, path: Path) -> None:
        """Delete a candidate or staging folder directly under root that was not accepted. Refuses the active
        version, any history entry, the initial model, symlinks, files and anything outside root. A folder
        that is already gone is fine, so cleanup after a failed run may call it unconditionally."""
        target = _abs(path)
        if target.parent != self.root:
            raise RegistryError(f"refusing to delete {target}: not a version folder directly under {self.root}")
        if target == self.initial:
            raise RegistryError(f"refusing to delete {target}: it is the configured initial model")
        chain = self._chain()
        if target == chain[0]:
            raise RegistryError(f"refusing to delete {target}: it is the active model")
        if target in chain:
            raise RegistryError(f"refusing to delete {target}: it is in the activation history (a rollback target)")
        if not os.path.lexists(target):
            return
        if not self._deletable(target):
            raise RegistryError(f"refusing to delete {target}: not a real directory inside {self.root}")
        shutil.rmtree(target)

    # -- locking -----------------------------------------------------------------------------------------

    def _lock_key(self) -> Path:
        return (self.root / LOCK_FILE).resolve()

    def hold_daemon_lock(self) -> int:
        """Taken by the daemon for its whole life, so ``linewatch retrain`` and ``model rollback`` never
        change the versions offline under a daemon whose HTTP port did not answer (still starting, port 0).
        Returns the descriptor; closing it releases the lock (so does the process ending, however).
        RegistryBusy when another daemon already serves this line."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / DAEMON_LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise RegistryBusy(f"{path}: another linewatch daemon{who} serves this line") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def daemon_running(self) -> bool:
        """Whether a daemon holds :meth:`hold_daemon_lock` (this process's own included)."""
        path = self.root / DAEMON_LOCK_FILE
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    @contextlib.contextmanager
    def training_lock(self) -> Iterator[None]:
        """Exclusive, non-blocking: raises :class:`RegistryBusy` at once if another run holds it.

        ``flock`` on ``root/.retrain.lock`` excludes other processes; since flock locks belong to an open file
        description, two opens in one process also exclude each other on a local filesystem (checked on
        ext4), but on NFS flock is emulated with POSIX locks, which never conflict within a process. A
        per-file thread lock shared by every registry object of this process therefore guards threads too.
        The lock file holds the holder's pid for the busy message; it is never deleted, since a new file
        would be a new lock."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / LOCK_FILE
        key = self._lock_key()
        with _guard:
            thread_lock = _thread_locks.setdefault(key, threading.Lock())
        if not thread_lock.acquire(blocking=False):
            raise RegistryBusy(f"{lock_path}: another retraining run in this process holds the training lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError as exc:
                    holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                    who = f" (pid {holder})" if holder.isdigit() else ""
                    raise RegistryBusy(f"{lock_path}: another process{who} holds the training lock") from exc
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                with _guard:
                    _holders[key] = threading.get_ident()
                try:
                    yield
                finally:
                    with _guard:
                        _holders.pop(key, None)
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        finally:
            thread_lock.release()

"""Operating commands of the ``linewatch`` CLI: feedback from a shell and database migrations.

They work next to a running daemon: the journal is SQLite in WAL mode with a busy timeout, so a label
appended here is picked up by the daemon's forwarders like any other record.
"""

from __future__ import annotations

import argparse
import getpass

from linewatch.clock import SystemClock
from linewatch.config import load_config
from linewatch.daemon.feedback import submit
from linewatch.feedback import FeedbackError, feedback_from_document
from linewatch.pipeline.journal.outbox import Journal
from linewatch.pipeline.journal.records import JournalError
from linewatch.types import LabelTarget


def cmd_label(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path = config.journal_path
    if not path.exists():
        raise ValueError(f"no journal at {path}: has the daemon run with {args.config}?")
    clock = SystemClock()
    try:
        journal = Journal(path, clock)
    except JournalError as error:
        raise ValueError(f"[journal] path: {error}") from None
    with journal:
        targets = [t for t in LabelTarget if journal.camera_of(t, args.id) is not None]
        if not targets:
            raise ValueError(f"no inspection or event with id {args.id!r} in {path}")
        if len(targets) > 1:
            raise ValueError(f"{args.id!r} names both an inspection and an event; label it over MQTT or HTTP")
        document = {f"{targets[0]}_id": args.id, "label": args.label, "user": args.user or _login_name()}
        try:  # the same checks as MQTT and HTTP feedback
            label = submit(journal, clock, feedback_from_document(document), "cli")
        except FeedbackError as error:
            raise ValueError(str(error)) from None
    print(f"{label.target} {label.target_id} (camera {label.camera}) labelled {label.label} by {label.user}; journaled")
    return 0


def _login_name() -> str | None:
    """Who runs the command, when the system knows (a container's arbitrary uid may have no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from linewatch.sinks.db import DatabaseError, LineScope
    from linewatch.sinks.db_migrate import upgrade_database

    config = load_config(args.config)
    try:
        result = upgrade_database(config.store_url, config.backup_dir, scope=LineScope.of(config.site))
    except DatabaseError as error:
        raise ValueError(str(error)) from None
    if result.from_revision == result.to_revision:
        print(f"database already at revision {result.to_revision}")
    else:
        print(f"database upgraded from {result.from_revision or 'empty'} to {result.to_revision}")
    if result.backup is not None:
        print(f"backup of the previous file: {result.backup}")
    return 0

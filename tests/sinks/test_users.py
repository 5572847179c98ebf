"""Accounts in the store: every change leaves an action naming who made it, and the last admin stays."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from linewatch.sinks.db import make_engine
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.db_schema import ActionRecord
from linewatch.sinks.users import AccountError, add_user, authenticate, list_users, remove_user, set_password, set_role

PASSWORD = "long enough password"


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[Engine]:
    upgrade_database(store_url, tmp_path / "backups")
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


def _actions(engine: Engine) -> list[tuple[str, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(ActionRecord.kind, ActionRecord.actor, ActionRecord.detail).order_by(ActionRecord.at)
        )
        return [tuple(row) for row in rows]


def test_every_account_change_is_recorded_with_who_made_it_and_no_secret(store: Engine) -> None:
    add_user(store, "root-admin", "admin", PASSWORD, "cli: root")
    add_user(store, "erin", "operator", PASSWORD, "web: root-admin")
    set_role(store, "erin", "engineer", "web: root-admin")
    set_password(store, "erin", "another long password", "web: root-admin")
    remove_user(store, "erin", "cli: root")
    assert _actions(store) == [
        ("user_added", "cli: root", "root-admin (admin)"),
        ("user_added", "web: root-admin", "erin (operator)"),
        ("user_role_changed", "web: root-admin", "erin (engineer)"),
        ("user_password_changed", "web: root-admin", "erin"),
        ("user_removed", "cli: root", "erin"),
    ]
    assert PASSWORD not in repr(_actions(store))


def test_the_last_admin_can_be_neither_removed_nor_demoted_while_others_remain(store: Engine) -> None:
    add_user(store, "boss", "admin", PASSWORD, "test")
    add_user(store, "op", "operator", PASSWORD, "test")
    with pytest.raises(AccountError, match="last admin"):
        remove_user(store, "boss", "test")
    with pytest.raises(AccountError, match="last admin"):
        set_role(store, "boss", "engineer", "test")
    assert [(a.name, a.role) for a in list_users(store)] == [("boss", "admin"), ("op", "operator")]
    set_role(store, "op", "admin", "test")  # a second admin: now the first may go
    set_role(store, "boss", "viewer", "test")
    with pytest.raises(AccountError, match="last admin"):
        remove_user(store, "op", "test")
    remove_user(store, "boss", "test")
    remove_user(store, "op", "test")  # alone, the last account may go: the page falls back to the token
    assert list_users(store) == []


def test_a_refused_change_changes_nothing_and_records_nothing(store: Engine) -> None:
    add_user(store, "boss", "admin", PASSWORD, "test")
    before = _actions(store)
    for change in (
        lambda: set_role(store, "nobody", "viewer", "test"),
        lambda: set_role(store, "boss", "superuser", "test"),
        lambda: set_password(store, "boss", "short", "test"),
        lambda: remove_user(store, "nobody", "test"),
    ):
        with pytest.raises(AccountError):
            change()
    assert _actions(store) == before
    assert authenticate(store, "boss", PASSWORD) == "admin"

"""The operator page's accounts in the main store (table ``users``): names, roles and argon2id password
hashes (argon2-cffi, the maintained binding of the Password Hashing Competition's winner, with its
recommended parameters; the hash string carries them, so a later change of parameters still verifies old
hashes and rehashes them at the next login).

Roles, each allowed what the ones before it may (``USER_ROLES``): ``viewer`` looks; ``operator`` labels,
saves normal samples, switches cameras and changes their product; ``engineer`` retrains and rolls back;
``admin`` manages the accounts (``linewatch user``, the page's Accounts view). Once the store holds one
account, the page logs in by name and password only; until then the ``[http] token`` login stays (see
docs/http.md).

Every change is written with an ``actions`` row naming who made it, in the same transaction: an account
change and its record exist together or not at all. Accounts are plant-wide (one login for every line of a
shared store) but actions belong to a line: the row goes to the line whose engine made the change
(:func:`linewatch.sinks.db.scope_of`), whose page then lists it. While any account remains, one admin
remains: the last one cannot be removed or demoted, so the page never locks its managers out (the command
line could still repair that, but nobody should have to).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, Engine, delete, func, select, update

from linewatch.sinks.db import masked, scope_of, translated, write_transaction
from linewatch.sinks.db_schema import USER_ROLES, ActionRecord, User

MIN_PASSWORD_LENGTH = 10
MAX_NAME_LENGTH = 64
_HASHER = PasswordHasher()
# Verified when the name is unknown, so a wrong name costs as long as a wrong password (no name probing).
_DUMMY_HASH = _HASHER.hash("linewatch: no such user")


class AccountError(ValueError):
    """A request about accounts that cannot be carried out; the message says why."""


@dataclass(frozen=True)
class Account:
    name: str
    role: str
    created_at: datetime
    changed_at: datetime


def role_allows(role: str | None, needed: str) -> bool:
    """Whether ``role`` may do what ``needed`` may (roles are ordered, USER_ROLES)."""
    return role in USER_ROLES and USER_ROLES.index(role) >= USER_ROLES.index(needed)


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise AccountError(f"a user name is 1 to {MAX_NAME_LENGTH} printable characters, got {name!r}")
    return name


def check_role(role: str) -> str:
    if role not in USER_ROLES:
        raise AccountError(f"role must be one of {', '.join(USER_ROLES)}, got {role!r}")
    return role


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    return password


def add_user(engine: Engine, name: str, role: str, password: str, by: str, now: datetime | None = None) -> Account:
    """A new account; ``by`` is who added it, as the actions record it ("cli: root", "web: erin")."""
    name, role = check_name(name), check_role(role)
    digest = _HASHER.hash(check_password(password))
    now = now or datetime.now(UTC)
    with translated(masked(engine.url), "adding a user"), write_transaction(engine) as conn:
        if conn.execute(select(User.name).where(User.name == name)).first() is not None:
            raise AccountError(f"user {name!r} exists already; use passwd or remove it first")
        conn.execute(User.__table__.insert().values(name=name, role=role, password_hash=digest,
                                                   created_at=now, changed_at=now))  # fmt: skip
        _record(conn, "user_added", by, now, f"{name} ({role})")
    return Account(name, role, now, now)


def remove_user(engine: Engine, name: str, by: str, now: datetime | None = None) -> None:
    with translated(masked(engine.url), "removing a user"), write_transaction(engine) as conn:
        _keep_an_admin(conn, name, None)
        if conn.execute(delete(User).where(User.name == name)).rowcount == 0:
            raise AccountError(f"no user {name!r}")
        _record(conn, "user_removed", by, now or datetime.now(UTC), name)


def set_role(engine: Engine, name: str, role: str, by: str, now: datetime | None = None) -> None:
    role = check_role(role)
    now = now or datetime.now(UTC)
    with translated(masked(engine.url), "changing a role"), write_transaction(engine) as conn:
        _keep_an_admin(conn, name, role)
        if conn.execute(update(User).where(User.name == name).values(role=role, changed_at=now)).rowcount == 0:
            raise AccountError(f"no user {name!r}")
        _record(conn, "user_role_changed", by, now, f"{name} ({role})")


def set_password(engine: Engine, name: str, password: str, by: str, now: datetime | None = None) -> None:
    digest = _HASHER.hash(check_password(password))
    now = now or datetime.now(UTC)
    with translated(masked(engine.url), "changing a password"), write_transaction(engine) as conn:
        changed = conn.execute(update(User).where(User.name == name).values(password_hash=digest, changed_at=now))
        if changed.rowcount == 0:
            raise AccountError(f"no user {name!r}")
        _record(conn, "user_password_changed", by, now, name)


def _keep_an_admin(conn: Connection, name: str, new_role: str | None) -> None:
    """Refuses to remove (``new_role`` None) or demote the last admin while other accounts remain."""
    roles = {name: role for name, role in conn.execute(select(User.name, User.role))}
    if roles.get(name) != "admin" or new_role == "admin":
        return
    admins = sum(1 for role in roles.values() if role == "admin")
    others = len(roles) - 1
    if admins == 1 and others > 0:
        change = "removed" if new_role is None else "demoted"
        raise AccountError(f"{name!r} is the last admin and cannot be {change} while other accounts remain; "
                           "make another account admin first")  # fmt: skip


def _record(conn: Connection, kind: str, by: str, at: datetime, detail: str) -> None:
    """The ``actions`` row of an account change, in the change's own transaction (no secret in ``detail``)."""
    conn.execute(ActionRecord.__table__.insert().values(**scope_of(conn).columns(), action_id=uuid.uuid4().hex,
                                                        kind=kind, actor=by, at=at, camera=None,
                                                        detail=detail))  # fmt: skip


def list_users(engine: Engine) -> list[Account]:
    with translated(masked(engine.url), "listing users"), engine.connect() as conn:
        rows = conn.execute(select(User.name, User.role, User.created_at, User.changed_at).order_by(User.name))
        return [Account(*row) for row in rows]


def has_accounts(engine: Engine) -> bool:
    with translated(masked(engine.url), "reading the users"), engine.connect() as conn:
        return bool(conn.execute(select(func.count()).select_from(User)).scalar_one())


def authenticate(engine: Engine, name: str, password: str) -> str | None:
    """The user's role when ``password`` is theirs, else None (unknown names take as long as wrong passwords)."""
    with translated(masked(engine.url), "checking a login"), engine.connect() as conn:
        row = conn.execute(select(User.role, User.password_hash).where(User.name == name)).first()
    try:
        _HASHER.verify(row.password_hash if row is not None else _DUMMY_HASH, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    if _HASHER.check_needs_rehash(row.password_hash):  # new parameters: no account change, so no action row
        with translated(masked(engine.url), "rehashing a password"), write_transaction(engine) as conn:
            conn.execute(update(User).where(User.name == name).values(password_hash=_HASHER.hash(password)))
    return str(row.role)


def role_of(engine: Engine, name: str) -> str | None:
    """The user's role now (a removed user has none), so a change takes effect at the next request."""
    with translated(masked(engine.url), "reading a role"), engine.connect() as conn:
        return conn.execute(select(User.role).where(User.name == name)).scalar_one_or_none()

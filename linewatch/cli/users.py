"""``linewatch user add|passwd|role|remove|list``: the operator page's accounts in the SQL store
(linewatch/sinks/users.py). The store is brought to this version's schema first, as ``db upgrade`` does.
Each change is recorded as done by ``cli: <the login name running the command>``."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from pathlib import Path

from sqlalchemy import Engine

from linewatch.config import load_config
from linewatch.sinks.db import DatabaseError, LineScope, make_engine
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.users import add_user, list_users, remove_user, set_password, set_role
from linewatch.web.logins import LOGINS_FILE, LoginRegistry


def cmd_user(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        upgraded = upgrade_database(config.store_url, config.backup_dir, scope=LineScope.of(config.site))
        if upgraded.from_revision != upgraded.to_revision:
            print(f"database upgraded from {upgraded.from_revision or 'empty'} to {upgraded.to_revision}")
        engine = make_engine(config.store_url, LineScope.of(config.site))
        try:
            return _carry_out(args, engine, config.site.data_dir / LOGINS_FILE)
        finally:
            engine.dispose()
    except DatabaseError as error:
        raise ValueError(str(error)) from None


def _carry_out(args: argparse.Namespace, engine: Engine, logins: Path) -> int:
    action = args.user_command
    by = f"cli: {getpass.getuser()}"
    if action == "list":
        accounts = list_users(engine)
        if not accounts:
            print("no accounts: the page logs in with [http] token (add one: linewatch user add NAME --role admin)")
        for account in accounts:
            print(f"{account.name:<24} {account.role:<9} changed {account.changed_at.isoformat(timespec='seconds')}")
        return 0
    if action == "remove":
        remove_user(engine, args.name, by)
        print(f"removed {args.name}; {_end_sessions(logins, args.name)} page sessions ended")
        return 0
    if action == "role":
        set_role(engine, args.name, args.role, by)
        print(f"{args.name} is now {args.role} (the page applies it within 10 s)")
        return 0
    password = _password(args.password_stdin)
    if action == "add":
        account = add_user(engine, args.name, args.role, password, by)
        print(f"added {account.name} ({account.role}); the page now logs in by name and password")
    else:
        set_password(engine, args.name, password, by)
        print(f"password of {args.name} changed; {_end_sessions(logins, args.name)} page sessions ended")
    return 0


def _end_sessions(logins: Path, name: str) -> int:
    """End the account's logged-in page sessions (a password thought stolen must not stay in use)."""
    if not logins.exists():
        return 0
    registry = LoginRegistry(logins, idle_s=0.0)
    try:
        return registry.end_user(name, time.time())
    finally:
        registry.close()


def _password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise ValueError("--password-stdin: nothing on stdin")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise ValueError("no terminal to ask for the password: pass it with --password-stdin")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the two passwords differ; nothing changed")
    return first

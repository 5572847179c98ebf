"""``linewatch user add|passwd|remove|list``: the operator page's accounts in the SQL store
(linewatch/sinks/users.py). The store is brought to this version's schema first, as ``db upgrade`` does."""

from __future__ import annotations

import argparse
import getpass
import sys

from sqlalchemy import Engine

from linewatch.config import load_config
from linewatch.sinks.db import DatabaseError, make_engine
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.users import add_user, list_users, remove_user, set_password


def cmd_user(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        upgraded = upgrade_database(config.store_url, config.backup_dir)
        if upgraded.from_revision != upgraded.to_revision:
            print(f"database upgraded from {upgraded.from_revision or 'empty'} to {upgraded.to_revision}")
        engine = make_engine(config.store_url)
        try:
            return _carry_out(args, engine)
        finally:
            engine.dispose()
    except DatabaseError as error:
        raise ValueError(str(error)) from None


def _carry_out(args: argparse.Namespace, engine: Engine) -> int:
    action = args.user_command
    if action == "list":
        accounts = list_users(engine)
        if not accounts:
            print("no accounts: the page logs in with [http] token (add one: linewatch user add NAME --role admin)")
        for account in accounts:
            print(f"{account.name:<24} {account.role:<9} changed {account.changed_at.isoformat(timespec='seconds')}")
        return 0
    if action == "remove":
        remove_user(engine, args.name)
        print(f"removed {args.name}")
        return 0
    password = _password(args.password_stdin)
    if action == "add":
        account = add_user(engine, args.name, args.role, password)
        print(f"added {account.name} ({account.role}); the page now logs in by name and password")
    else:
        set_password(engine, args.name, password)
        print(f"password of {args.name} changed")
    return 0


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

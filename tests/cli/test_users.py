"""`linewatch user add|passwd|remove|list`: accounts in the SQL store, passwords hashed, errors named."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from linewatch.cli.main import main
from linewatch.config import load_config
from linewatch.sinks.db import make_engine
from linewatch.sinks.users import authenticate


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[site]\ndata_dir = "{tmp_path / "data"}"\n')
    return path


def _run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = ""
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_add_list_passwd_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    code, out, _ = _run(monkeypatch, capsys, "user", "list", "--config", str(config))
    assert code == 0 and "no accounts" in out and "database upgraded from empty" in out
    code, out, _ = _run(monkeypatch, capsys, "user", "add", "ana", "--role", "engineer", "--password-stdin",
                        "--config", str(config), stdin="first password 1\n")  # fmt: skip
    assert code == 0 and "added ana (engineer)" in out
    code, out, _ = _run(monkeypatch, capsys, "user", "list", "--config", str(config))
    assert code == 0 and out.split()[:2] == ["ana", "engineer"]
    engine = make_engine(load_config(config).store_url)
    try:
        assert authenticate(engine, "ana", "first password 1") == "engineer"
        code, _, _ = _run(monkeypatch, capsys, "user", "passwd", "ana", "--password-stdin", "--config", str(config),
                          stdin="second password 2\n")  # fmt: skip
        assert code == 0
        assert authenticate(engine, "ana", "first password 1") is None
        assert authenticate(engine, "ana", "second password 2") == "engineer"
        with engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT password_hash FROM users").scalar_one()
        assert stored.startswith("$argon2id$") and "second" not in stored
        code, out, _ = _run(monkeypatch, capsys, "user", "remove", "ana", "--config", str(config))
        assert code == 0 and "removed ana" in out
        assert authenticate(engine, "ana", "second password 2") is None
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (["add", "bo", "--role", "operator", "--password-stdin"], "short\n", "at least 10 characters"),
        (["add", "bo", "--role", "operator"], "", "pass it with --password-stdin"),
        (["passwd", "nobody", "--password-stdin"], "long enough password\n", "no user 'nobody'"),
        (["remove", "nobody"], "", "no user 'nobody'"),
        (["add", " ", "--role", "viewer", "--password-stdin"], "long enough password\n", "a user name is 1 to 64"),
    ],
)
def test_bad_requests_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], stdin: str,
    message: str,
) -> None:  # fmt: skip
    code, _, err = _run(monkeypatch, capsys, "user", *argv, "--config", str(_config(tmp_path)), stdin=stdin)
    assert code == 2 and message in err


def test_an_account_cannot_be_added_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(_config(tmp_path))
    add = ["user", "add", "cy", "--role", "viewer", "--password-stdin", "--config", config]
    assert _run(monkeypatch, capsys, *add, stdin="long enough password\n")[0] == 0
    code, _, err = _run(monkeypatch, capsys, *add, stdin="another password 3\n")
    assert code == 2 and "user 'cy' exists already" in err

"""Logged-in sessions held on the server: a logout or an idle spell ends them whatever the browser keeps."""

from __future__ import annotations

from pathlib import Path

from linewatch.web.auth import SECRET_BYTES, SessionKeeper
from linewatch.web.logins import TOUCH_S, LoginRegistry

SECRET = b"s" * SECRET_BYTES
TOKEN = "line-token-0123456789abcdef"
NOW = 1_800_000_000.0
IDLE_S = 600.0


def _keeper(tmp_path: Path) -> SessionKeeper:
    return SessionKeeper(SECRET, TOKEN, 3600, LoginRegistry(tmp_path / "logins.sqlite3", IDLE_S))


def test_a_logout_ends_the_session_even_for_a_copied_cookie(tmp_path: Path) -> None:
    keeper = _keeper(tmp_path)
    session = keeper.issue("ana", True, NOW)
    cookie = keeper.encode(session)
    assert keeper.decode(cookie, NOW + 1) == session
    keeper.end(session, NOW + 2)
    assert keeper.decode(cookie, NOW + 3) is None  # the signature still holds; the server said no


def test_an_idle_session_ends_and_use_keeps_one_open(tmp_path: Path) -> None:
    keeper = _keeper(tmp_path)
    busy, idle = keeper.issue("ana", True, NOW), keeper.issue("bo", True, NOW)
    for minute in range(1, 30):  # used every minute for half an hour: open
        assert keeper.decode(keeper.encode(busy), NOW + 60 * minute) is not None
    assert keeper.decode(keeper.encode(idle), NOW + IDLE_S + TOUCH_S) is None
    assert keeper.decode(keeper.encode(busy), NOW + 29 * 60 + IDLE_S - 1) is not None


def test_the_absolute_limit_holds_however_busy(tmp_path: Path) -> None:
    keeper = _keeper(tmp_path)
    session = keeper.issue("ana", True, NOW)
    for seconds in range(300, 3600, 300):  # used every five minutes
        assert keeper.decode(keeper.encode(session), NOW + seconds) is not None
    assert keeper.decode(keeper.encode(session), NOW + 3599) is not None
    assert keeper.decode(keeper.encode(session), NOW + 3600) is None


def test_logins_survive_a_restart_and_a_new_login_is_a_new_session(tmp_path: Path) -> None:
    first = _keeper(tmp_path)
    session = first.issue("ana", True, NOW)
    again = first.issue("ana", True, NOW + 5)
    assert again.nonce != session.nonce
    restarted = _keeper(tmp_path)  # the daemon started again: same file, same secret
    assert restarted.decode(first.encode(session), NOW + 10) == session
    restarted.end(session, NOW + 11)
    assert restarted.decode(first.encode(again), NOW + 12) == again  # ending one login leaves the other


def test_sessions_that_grant_nothing_are_not_stored(tmp_path: Path) -> None:
    """Before a login (token set) a session only carries the CSRF nonce; on a token-less port every session is
    what a request without a cookie gets anyway. Neither is written, so cookie-less requests cannot fill
    the disk, and both decode without a row."""
    keeper = _keeper(tmp_path)
    anonymous = keeper.issue(None, False, NOW)
    assert keeper.decode(keeper.encode(anonymous), NOW + 1) == anonymous
    open_port = SessionKeeper(SECRET, None, 3600, LoginRegistry(tmp_path / "open.sqlite3", IDLE_S))
    named = open_port.issue("ana", True, NOW)
    assert open_port.decode(open_port.encode(named), NOW + IDLE_S * 2) == named

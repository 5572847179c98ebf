"""Sessions, CSRF tokens, the origin check, login names and redirect targets of the operator page."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from linewatch.web.auth import SECRET_BYTES, SessionKeeper, load_secret, operator_name, safe_next, same_origin

SECRET = b"s" * SECRET_BYTES
TOKEN = "line-token-0123456789"
NOW = 1_800_000_000.0


def test_a_session_survives_the_round_trip_through_its_cookie() -> None:
    keeper = SessionKeeper(SECRET, TOKEN, 3600)
    session = keeper.issue("Ana <ops>", True, NOW)
    assert keeper.decode(keeper.encode(session), NOW + 10) == session
    assert session.expires == int(NOW + 3600)


def test_forged_malformed_or_expired_cookies_are_no_session() -> None:
    keeper = SessionKeeper(SECRET, TOKEN, 3600)
    cookie = keeper.encode(keeper.issue("ana", True, NOW))
    payload, signature = cookie.split(".")
    assert keeper.decode(cookie, NOW + 3600) is None  # expired at its expiry
    assert keeper.decode(payload + "." + signature[::-1], NOW) is None
    assert keeper.decode(payload[:-2] + "." + signature, NOW) is None
    assert keeper.decode("", NOW) is None and keeper.decode(None, NOW) is None
    assert keeper.decode("a.b.c", NOW) is None
    other = SessionKeeper(b"t" * SECRET_BYTES, TOKEN, 3600)  # another line's (or a rotated) secret
    assert other.decode(cookie, NOW) is None


def test_changing_the_token_ends_every_session() -> None:
    cookie = SessionKeeper(SECRET, TOKEN, 3600).encode(SessionKeeper(SECRET, TOKEN, 3600).issue("ana", True, NOW))
    assert SessionKeeper(SECRET, TOKEN + "-rotated", 3600).decode(cookie, NOW) is None


def test_a_signed_but_wrongly_shaped_payload_is_no_session() -> None:
    keeper = SessionKeeper(SECRET, None, 3600)
    payload = "WzEsMiwzXQ"  # base64url of [1,2,3]
    assert keeper.decode(f"{payload}.{keeper._sign(payload)}", NOW) is None


def test_without_a_token_every_session_is_authenticated_and_with_one_only_after_login() -> None:
    open_keeper = SessionKeeper(SECRET, None, 3600)
    assert open_keeper.issue(None, False, NOW).authenticated and not open_keeper.token_required
    keeper = SessionKeeper(SECRET, TOKEN, 3600)
    assert not keeper.issue(None, False, NOW).authenticated and keeper.token_required
    assert keeper.token_ok(TOKEN) and not keeper.token_ok(TOKEN[:-1]) and not open_keeper.token_ok("")


def test_csrf_tokens_belong_to_their_session() -> None:
    keeper = SessionKeeper(SECRET, None, 3600)
    first, second = keeper.issue(None, True, NOW), keeper.issue(None, True, NOW)
    assert first.nonce != second.nonce  # every issue (a login included) gets a fresh nonce
    assert keeper.csrf_ok(first, keeper.csrf_token(first))
    assert not keeper.csrf_ok(first, keeper.csrf_token(second))
    assert not keeper.csrf_ok(first, None) and not keeper.csrf_ok(None, keeper.csrf_token(first))
    assert not keeper.csrf_ok(first, first.nonce)  # the nonce itself (readable in the cookie) is not the token


@pytest.mark.parametrize(
    ("headers", "host", "allowed"),
    [
        ({}, "127.0.0.1:9108", True),  # a script or an old browser: the CSRF token alone decides
        ({"sec-fetch-site": "same-origin"}, "127.0.0.1:9108", True),
        ({"sec-fetch-site": "none"}, "127.0.0.1:9108", True),  # typed into the address bar
        ({"sec-fetch-site": "cross-site"}, "127.0.0.1:9108", False),
        ({"sec-fetch-site": "same-site"}, "127.0.0.1:9108", False),  # another port of this host
        ({"origin": "http://127.0.0.1:9108"}, "127.0.0.1:9108", True),
        ({"origin": "http://evil.example"}, "127.0.0.1:9108", False),
        ({"origin": "http://127.0.0.1:9109"}, "127.0.0.1:9108", False),
        ({"origin": "null"}, "127.0.0.1:9108", False),
        ({"origin": "http://127.0.0.1:9108"}, None, False),
        ({"sec-fetch-site": "same-origin", "origin": "null"}, "127.0.0.1:9108", True),  # Chromium, strict referrer
        ({"sec-fetch-site": "cross-site", "origin": "http://127.0.0.1:9108"}, "127.0.0.1:9108", False),
    ],
)
def test_same_origin(headers: dict[str, str], host: str | None, allowed: bool) -> None:
    assert same_origin(headers, host) is allowed


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/review", "/review"),
        ("/history?camera=cam1&label=normal", "/history?camera=cam1&label=normal"),
        (None, "/"),
        ("", "/"),
        ("//evil.example/x", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("review", "/"),
        ("javascript:alert(1)", "/"),
    ],
)
def test_the_login_only_returns_to_paths_of_this_site(target: str | None, expected: str) -> None:
    assert safe_next(target) == expected


def test_operator_names() -> None:
    assert operator_name("  Ana  ") == "Ana"
    assert operator_name("") is None and operator_name(None) is None and operator_name("   ") is None
    for bad in ("x" * 65, "ana\nroot", "tab\there"):
        with pytest.raises(ValueError, match="printable"):
            operator_name(bad)


def test_the_secret_is_made_once_private_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "web-secret"
    first = load_secret(path)
    assert len(first) == SECRET_BYTES and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret(path) == first
    assert [entry.name for entry in tmp_path.iterdir()] == ["web-secret"]  # no temporary file left behind


def test_a_truncated_secret_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "web-secret"
    path.write_bytes(b"short")
    with pytest.raises(OSError, match="web-secret"):
        load_secret(path)

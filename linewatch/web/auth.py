"""Who may use the operator's page, and proof that a button press came from it (CSRF).

Decisions:

- One signed cookie per browser (``linewatch_session``): a random nonce, the operator's name (recorded with
  every label), whether the browser logged in, and an expiry. It is HMAC-signed, never encrypted: it holds
  nothing secret. HttpOnly, so scripts cannot read it; SameSite=Lax, so other sites' posts do not carry it
  (a link from an HMI still arrives logged in, see linewatch/web/login.py); Secure under HTTPS.
- Wrong tokens, at the login and in bearer headers, are throttled per client address
  (linewatch/sinks/throttle.py), with the JSON routes' attempts in the same count.
- With ``[http] token`` set (required beyond loopback), the page asks for that token once per session at
  ``/login``; scripts may send it as a bearer header instead. Without a token (loopback), anyone on the
  machine may use the page, as they may use the JSON routes; the login form then only asks for a name.
- The signing key is derived from a random secret kept in the data folder (0600, created once) and the
  token: sessions survive a daemon restart, and changing the token ends every session.
- With a token, a logged-in session is also held open on the server (linewatch/web/logins.py): the logout
  ends it there, and so does ``[web] idle_minutes`` without a request; ``session_hours`` is the absolute
  limit. Each login starts a new session (a new nonce), never reusing one an attacker may have seen.
- CSRF: every POST must carry the token derived from the session's nonce (HMAC, so a cookie planted by
  another local service cannot come with a matching token) in the ``X-CSRF-Token`` header or the ``csrf``
  form field, and must not be cross-site by ``Sec-Fetch-Site``/``Origin``. A script authenticated by the
  bearer header needs neither: a browser never adds that header by itself.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from linewatch.sinks.db_schema import USER_ROLES
from linewatch.web.logins import LoginRegistry

SESSION_COOKIE = "linewatch_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"
SECRET_BYTES = 32
MAX_NAME_LENGTH = 64


@dataclass(frozen=True)
class Session:
    nonce: str  # random per session; the CSRF token is derived from it
    user: str | None  # the operator's name, recorded with labels
    authenticated: bool  # logged in (token or account), or no login is required
    expires: int  # unix seconds
    role: str = "admin"  # an account's role (linewatch/sinks/users.py); the token and an open port give all
    account: bool = False  # logged in with an account's password (not the token, not a name on an open port)


def load_secret(path: Path) -> bytes:
    """The page's signing secret, created (0600) on first use. The new secret is written whole to a temporary
    file and linked into place, so a crash midway leaves no short secret behind, and two processes starting
    together end up with the same one. OSError names the file when it cannot be read or written: the page must
    not fall back to a key that changes at every start without saying so."""
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_bytes(SECRET_BYTES))
                handle.flush()
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # another process was first: its secret stands
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    secret = path.read_bytes()
    if len(secret) < SECRET_BYTES:
        raise OSError(f"{path}: the web page's secret is truncated; delete the file to make a new one")
    return secret


class SessionKeeper:
    """Issues, signs and checks sessions and their CSRF tokens."""

    def __init__(
        self, secret: bytes, token: str | None, lifetime_s: float, logins: LoginRegistry | None = None
    ) -> None:
        self.token = token
        self.lifetime_s = lifetime_s
        self.logins = logins  # with a token: logged-in sessions live only while it holds them open
        self._key = hmac.new(secret, b"linewatch-web|" + (token or "").encode(), hashlib.sha256).digest()

    # Whether the store holds accounts (then the page logs in by name and password); set by the site.
    accounts: Callable[[], bool] = staticmethod(lambda: False)

    @property
    def token_required(self) -> bool:
        return self.token is not None

    @property
    def login_required(self) -> bool:
        """A token is set, or accounts exist: the page is for those who log in."""
        return self.token_required or self.accounts()

    def issue(
        self, user: str | None, authenticated: bool, now: float, role: str = "admin", account: bool = False
    ) -> Session:
        """A new session (a new nonce: a login never keeps the nonce an attacker may have seen before it)."""
        nonce, expires = secrets.token_urlsafe(16), int(now + self.lifetime_s)
        required = self.login_required
        session = Session(nonce, user, authenticated or not required, expires, role, account)
        if authenticated and required and self.logins is not None:
            self.logins.start(session.nonce, user, now, session.expires)
        return session

    def end(self, session: Session | None, now: float) -> None:
        """The logout: the session is closed on the server, so its cookie no longer logs anyone in."""
        if session is not None and self.logins is not None:
            self.logins.end(session.nonce, now)

    def end_user(self, user: str, now: float) -> int:
        """End every open logged-in session of ``user`` (a new password, a removed account); how many."""
        return self.logins.end_user(user, now) if self.logins is not None else 0

    def encode(self, session: Session) -> str:
        fields = [session.nonce, session.user, session.authenticated, session.expires, session.role, session.account]
        body = json.dumps(fields, separators=(",", ":"))
        payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return f"{payload}.{self._sign(payload)}"

    def decode(self, cookie: str | None, now: float) -> Session | None:
        """The session a cookie carries; None when it is missing, forged, malformed or expired."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, signature = cookie.split(".")
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):  # bytes: any text compares
            return None
        try:
            padded = payload + "=" * (-len(payload) % 4)
            nonce, user, authenticated, expires, role, account = json.loads(base64.urlsafe_b64decode(padded))
        except (ValueError, TypeError):
            return None
        valid = (
            isinstance(nonce, str)
            and (user is None or isinstance(user, str))
            and isinstance(authenticated, bool)
            and isinstance(expires, int)
            and role in USER_ROLES
            and isinstance(account, bool)
        )
        if not valid or expires <= now:
            return None
        required = self.login_required
        if authenticated and required and self.logins is not None and not self.logins.alive(nonce, now):
            return None  # logged out, idle too long, or from before the registry: log in again
        return Session(nonce, user, authenticated or not required, expires, role, account)

    def csrf_token(self, session: Session) -> str:
        return self._sign("csrf|" + session.nonce)

    def csrf_ok(self, session: Session | None, offered: str | None) -> bool:
        if session is None or offered is None:
            return False
        return hmac.compare_digest(offered.encode(), self.csrf_token(session).encode())

    def token_ok(self, offered: str) -> bool:
        return self.token is not None and hmac.compare_digest(offered.encode(), self.token.encode())

    def _sign(self, text: str) -> str:
        digest = hmac.new(self._key, text.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def operator_name(value: str | None) -> str | None:
    """A name for the labels; ValueError when it is not 1-64 printable characters (blank means none)."""
    name = (value or "").strip()
    if not name:
        return None
    if len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise ValueError(f"the name must be 1 to {MAX_NAME_LENGTH} printable characters")
    return name


def same_origin(headers: Mapping[str, str], host: str | None) -> bool:
    """Whether a browser request comes from this site. ``Sec-Fetch-Site`` decides where the browser sends it
    (modern browsers; a page cannot set it): same-origin, or none (typed or bookmarked). Otherwise ``Origin``,
    when sent, must name this host; browsers send ``Origin: null`` for some same-site posts (a strict
    referrer policy), so it is not asked for when Sec-Fetch-Site has already answered. Requests with
    neither header (old browsers, scripts) rely on the CSRF token alone."""
    get = headers.get
    fetch_site = get("sec-fetch-site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    origin = get("origin")
    if origin is None:
        return True
    return origin != "null" and host is not None and urlsplit(origin).netloc == host


def safe_next(target: str | None) -> str:
    """Where to go after the login: a path on this site only (never ``//elsewhere`` or a full URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target

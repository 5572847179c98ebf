"""Logged-in sessions on the server side, so that a logout or an idle timeout ends a session whatever the
browser (or someone who copied its cookie) keeps.

The signed cookie (linewatch/web/auth.py) still carries the session; where a login is required (``[http]
token`` set, or accounts in the store), a logged-in session is valid only while this registry holds it
open: started at the login, ended by the logout, and closed when it was not used for ``idle_s`` (the
cookie's own expiry is the absolute limit). Sessions that grant nothing beyond what a request without a
cookie already gets (before a login, or on a token-less loopback port) are not stored, so cookie-less
requests cannot fill the disk.

A small SQLite file in the data folder, apart from the main store: the page's logins keep working while
the main store is down, and survive a restart as the signed cookies do. Rows are keyed by a hash of the
session's nonce, so the file holds nothing a cookie could be rebuilt from. ``last_seen`` is written at
most every ``TOUCH_S``, not on every request.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

LOGINS_FILE = "web-logins.sqlite3"  # in the data folder
TOUCH_S = 30.0  # an open session's last_seen is refreshed at most this often
_SCHEMA = """
CREATE TABLE IF NOT EXISTS logins (
    id TEXT PRIMARY KEY,      -- sha256 of the session nonce
    user TEXT,
    started REAL NOT NULL,    -- unix seconds
    last_seen REAL NOT NULL,
    expires REAL NOT NULL,    -- the cookie's absolute end
    ended REAL                -- the logout, or NULL
)
"""


class LoginRegistry:
    """Open logged-in sessions; thread-safe (page handlers run on several worker threads)."""

    def __init__(self, path: Path, idle_s: float) -> None:
        self.idle_s = idle_s
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as error:
            raise OSError(f"{path}: cannot open the page's login registry ({error})") from error

    def start(self, nonce: str, user: str | None, now: float, expires: float) -> None:
        with self._lock:
            self._db.execute("DELETE FROM logins WHERE ended IS NOT NULL OR expires <= ? OR last_seen <= ?",
                             (now, now - self.idle_s))  # fmt: skip
            self._db.execute(
                "INSERT OR REPLACE INTO logins (id, user, started, last_seen, expires) VALUES (?, ?, ?, ?, ?)",
                (_key(nonce), user, now, now, expires),
            )

    def alive(self, nonce: str, now: float) -> bool:
        """Whether the session is open (not logged out, used within ``idle_s``, not expired); marks it used."""
        with self._lock:
            row = self._db.execute(
                "SELECT last_seen, expires, ended FROM logins WHERE id = ?", (_key(nonce),)
            ).fetchone()
            if row is None:
                return False
            last_seen, expires, ended = row
            if ended is not None or expires <= now or now - last_seen > self.idle_s:
                return False
            if now - last_seen >= TOUCH_S:
                self._db.execute("UPDATE logins SET last_seen = ? WHERE id = ?", (now, _key(nonce)))
            return True

    def end(self, nonce: str, now: float) -> None:
        with self._lock:
            self._db.execute("UPDATE logins SET ended = ? WHERE id = ? AND ended IS NULL", (now, _key(nonce)))

    def end_user(self, user: str, now: float) -> int:
        """End every open session of ``user`` (a changed password, a removed account); how many there were.
        Safe from another process (``linewatch user passwd``): SQLite serialises the writers."""
        with self._lock:
            cursor = self._db.execute("UPDATE logins SET ended = ? WHERE user = ? AND ended IS NULL", (now, user))
            return cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _key(nonce: str) -> str:
    return hashlib.sha256(nonce.encode()).hexdigest()

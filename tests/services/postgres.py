"""A real, throwaway PostgreSQL for tests and benchmarks, started from the Debian server binaries.

Loaded as a pytest plugin (``pytest_plugins = ["tests.services.postgres"]`` in tests/conftest.py, or
``-p tests.services.postgres``). Fixtures:

- ``postgres_server`` (session): one server on a free loopback port; tests that stop it must start it again.
- ``postgres_url`` (per test): a fresh, empty database on that server, so tests never see each other's rows.
- ``store_url`` (per test, parametrized): the same test against an SQLite file and against PostgreSQL.

The server lives in its own folder under the system temp dir (not pytest's tmp_path: that is private to
root, and the server runs as the ``postgres`` user when the tests run as root, because initdb and postgres
refuse to run as root). It listens on 127.0.0.1 only, with its unix socket inside that folder, password
authentication over TCP, and (unless ``durable``) fsync off: tests want speed, not crash safety.
``stop()`` and ``start()`` keep the port and the data, which is what outage tests need; only the very first
start moves to a new free port if its port was taken meanwhile (tests.services.ports says why that can happen).
A server that cannot be set up or started deletes its folder (``cleanup``) on the way out.

Missing binaries fail loudly (``make test`` installs the ``postgresql`` package): a skipped PostgreSQL test
would silently drop the plants' configuration from the test run.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.services.ports import FIRST_START_TRIES, address_in_use, free_port

USER = "linewatch"
PASSWORD = "test-secret-pw"
START_TIMEOUT_S = 30
RESTART_PAUSE_S = 0.2


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries (or no postgres user to run them as root)."""


def find_bindir() -> Path:
    """The newest installed server's bin folder: ``pg_config --bindir`` if it has initdb, else the highest
    /usr/lib/postgresql/<version>/bin, else initdb on the PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    versions = [p for p in Path("/usr/lib/postgresql").glob("*") if re.fullmatch(r"\d+(\.\d+)?", p.name)]
    candidates += [p / "bin" for p in sorted(versions, key=lambda p: float(p.name), reverse=True)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found; install them: apt-get install postgresql "
        "(make test does this)"
    )


class PostgresServer:
    """One PostgreSQL cluster in a temp folder. ``start``/``stop`` may be repeated; ``cleanup`` deletes it."""

    def __init__(self, durable: bool = False) -> None:
        self.bindir = find_bindir()
        self.durable = durable
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresUnavailable("running as root needs the 'postgres' user (the Debian package)") from exc
        self.root = Path(tempfile.mkdtemp(prefix="linewatch-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.running = False
        self._started = False  # once started, the port is kept: clients of outage tests reconnect to it
        try:
            password_file = self.root / "password"
            password_file.write_text(PASSWORD + "\n")
            if self._as_postgres:
                for path in (self.root, password_file):
                    os.chown(path, owner.pw_uid, owner.pw_gid)
            self._run(
                "initdb", "-D", self.data, "-U", USER, f"--pwfile={password_file}", "--auth-local=trust",
                "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
            password_file.unlink()
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    @property
    def url(self) -> str:
        """URL of the server's default database (``postgres``): for administration."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Start on the same port as before; a first start whose port was taken retries on a new free port, a
        restart retries on its own port after a pause (clients must find the server where it was)."""
        for attempt in range(1, FIRST_START_TRIES + 1):
            options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
            if not self.durable:
                options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            try:
                self._run(
                    "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start"
                )
            except RuntimeError as exc:
                if attempt == FIRST_START_TRIES or not address_in_use(str(exc)):
                    raise
                if self._started:
                    time.sleep(RESTART_PAUSE_S)
                else:
                    self.port = free_port()
                continue
            self.running = self._started = True
            return

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut, like a server going away under the daemon."""
        if self.running:
            self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
            self.running = False

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        conninfo = f"host=127.0.0.1 port={self.port} user={USER} password={PASSWORD} dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _run(self, program: str, *args: str | Path) -> None:
        """Run a server program (as ``postgres`` when root); RuntimeError with its output and what it added to
        the server log (the log is appended to by every start: older lines would mislead)."""
        command = [str(self.bindir / program), *map(str, args)]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        logged = self.log.stat().st_size if self.log.exists() else 0
        result = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, "LC_ALL": "C"})
        if result.returncode != 0:
            output = result.stderr.strip() or result.stdout.strip()
            raise RuntimeError(f"{program} failed ({result.returncode}): {output}\n{self._log_since(logged)}")

    def _log_since(self, offset: int) -> str:
        try:
            with self.log.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")[-2000:]
        except OSError:
            return ""


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database (not dropped: the whole cluster is deleted at the end of the session)."""
    if not postgres_server.running:  # a previous outage test failed before starting it again
        postgres_server.start()
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The main store's URL: an SQLite file in tmp_path, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'linewatch.sqlite3'}"
    return str(request.getfixturevalue("postgres_url"))

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
``stop()`` and ``start()`` keep the port and the data, which is what outage tests need.

Missing binaries fail loudly (``make test`` installs the ``postgresql`` package): a skipped PostgreSQL test
would silently drop the plants' configuration from the test run.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

USER = "linewatch"
PASSWORD = "test-secret-pw"
START_TIMEOUT_S = 30


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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        self.running = False

    @property
    def url(self) -> str:
        """URL of the server's default database (``postgres``): for administration."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start")
        self.running = True

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
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _run(self, program: str, *args: str | Path) -> None:
        command = [str(self.bindir / program), *map(str, args)]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, "LC_ALL": "C"})
        if result.returncode != 0:
            log_tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}\n{log_tail}"
            )


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

"""A real, throwaway Mosquitto broker for tests, plus a subscriber that records what it sees.

Loaded as a pytest plugin (``pytest_plugins = [..., "tests.services.mosquitto"]`` in tests/conftest.py, or
``-p tests.services.mosquitto``). Fixtures:

- ``mosquitto`` (session): one broker on a free 127.0.0.1 port. Tests that ``stop()`` it must ``start()`` it
  again (the per-test ``broker`` fixture restarts it if a failed test left it down).
- ``broker`` (per test): the same broker, guaranteed running.
- ``mqtt_prefix`` (per test): a topic prefix of its own, so tests sharing the broker never see each
  other's retained messages.

The broker persists to its own temp folder (``persistence true``), so a ``stop()``/``start()`` pair keeps
sessions, subscriptions, queued QoS 1 messages and retained messages, like a plant broker restarting; it
comes back on the SAME port, which is what outage tests need (only the very first start moves to a new free
port if its port was taken meanwhile: tests.services.ports says why that can happen). ``stop()`` is a clean
SIGTERM (Mosquitto writes its database then); ``kill()`` is a crash that loses what was not saved yet.

TLS: ``MosquittoBroker(tls=[TlsListener(...), ...])`` adds TLS listeners on ports of their own
(``tls_ports``, in the same order) next to the plain one; tests/services/certs.py makes the certificates and
:func:`make_password_file` the password file. The broker then runs with ``per_listener_settings true``, so a
listener's password file binds only that listener and the plain one stays anonymous. Brokers made without
``tls`` get exactly the configuration they always had.

As root, Mosquitto would drop privileges to the ``mosquitto`` user and then fail to write its database in a
root-owned temp folder: the config says ``user root`` in that case (ignored when not running as root).

A missing ``mosquitto`` binary fails the fixture loudly (``make test`` installs the package): a skipped
MQTT test would silently drop the broker side of the daemon from the test run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.services.ports import FIRST_START_TRIES, address_in_use, free_port

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
RESTART_PAUSE_S = 0.2
# Logged once the listeners are open: connecting alone could reach whatever else took the port.
_RUNNING = re.compile(r"mosquitto version \S+ running")


class MosquittoUnavailable(RuntimeError):
    """No mosquitto binary on this machine."""


@dataclass(frozen=True)
class TlsListener:
    """One TLS listener: the broker's certificate and key, the CA that client certificates must chain to,
    whether a client certificate is required, and a password file (with one, clients without a valid
    username and password are refused; without one, anyone who completes the TLS handshake may connect)."""

    cafile: Path
    certfile: Path
    keyfile: Path
    require_certificate: bool = False
    password_file: Path | None = None

    def config_lines(self, host: str, port: int) -> list[str]:
        lines = [
            f"listener {port} {host}",
            f"cafile {self.cafile}",
            f"certfile {self.certfile}",
            f"keyfile {self.keyfile}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
        ]
        if self.password_file is None:
            return [*lines, "allow_anonymous true"]
        return [*lines, f"password_file {self.password_file}", "allow_anonymous false"]


def find_mosquitto() -> Path:
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise MosquittoUnavailable(
            "the mosquitto broker binary was not found (looked on PATH and in /usr/sbin); install it: "
            "apt-get install mosquitto (make test does this)"
        )
    return Path(found)


def make_password_file(path: Path, username: str, password: str) -> None:
    """Write a Mosquitto password file with one user, hashed by ``mosquitto_passwd`` (the broker's own tool,
    so the hash format is always one this broker reads). MosquittoUnavailable if the tool is missing."""
    tool = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path="/usr/sbin:/usr/local/sbin")
    if tool is None:
        raise MosquittoUnavailable("mosquitto_passwd was not found (it comes with the mosquitto package)")
    done = subprocess.run([tool, "-c", "-b", str(path), username, password], capture_output=True, check=False)
    if done.returncode != 0:  # its output never echoes the password
        raise RuntimeError(f"mosquitto_passwd failed ({done.returncode}): {done.stderr.decode(errors='replace')}")
    path.chmod(0o600)  # newer Mosquitto versions warn about password files that others can read


class MosquittoBroker:
    """One Mosquitto process with its config, database and log in a temp folder. ``start``/``stop`` may be
    repeated and keep the ports; ``cleanup`` stops it and deletes the folder. ``tls`` adds TLS listeners,
    whose ports are ``tls_ports`` (same order); ``extra_config`` lines go at the end of its config."""

    host = "127.0.0.1"

    def __init__(self, tls: Sequence[TlsListener] = (), extra_config: Sequence[str] = ()) -> None:
        self.binary = find_mosquitto()
        self.extra_config = tuple(extra_config)  # more lines for mosquitto.conf (benchmarks: queue limits)
        self.root = Path(tempfile.mkdtemp(prefix="linewatch-mosquitto-"))
        self.config = self.root / "mosquitto.conf"
        self.log = self.root / "mosquitto.log"
        self.tls_listeners = tuple(tls)
        self.port = free_port()
        self.tls_ports = self._draw_tls_ports()
        self._process: subprocess.Popen[bytes] | None = None
        self._started = False  # once started, the port is kept: clients of outage tests reconnect to it

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _draw_tls_ports(self) -> list[int]:
        ports: list[int] = []
        while len(ports) < len(self.tls_listeners):
            port = free_port()
            if port != self.port and port not in ports:  # nothing is bound yet: the same port may come twice
                ports.append(port)
        return ports

    def _write_config(self) -> None:
        lines = ["per_listener_settings true"] if self.tls_listeners else []
        lines += [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.root}/",
            "persistence_file mosquitto.db",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        for listener, port in zip(self.tls_listeners, self.tls_ports, strict=True):
            lines += listener.config_lines(self.host, port)
        if os.geteuid() == 0:
            lines.append("user root")
        lines += self.extra_config
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        """Start on the same port as before; a first start whose port was taken retries on a new free port, a
        restart retries on its own port after a pause (clients must find the broker where it was)."""
        if self.running:
            return
        for attempt in range(1, FIRST_START_TRIES + 1):
            failure = self._launch()
            if failure is None:
                self._started = True
                return
            if attempt == FIRST_START_TRIES or not address_in_use(failure):
                raise RuntimeError(f"mosquitto did not start on port {self.port}: {failure}")
            if self._started:
                time.sleep(RESTART_PAUSE_S)
            else:
                self.port = free_port()
                self.tls_ports = self._draw_tls_ports()

    def _launch(self) -> str | None:
        """One start attempt: None once the broker listens, else why not (its stderr and what it logged)."""
        self._write_config()
        logged = self.log.stat().st_size if self.log.exists() else 0  # Mosquitto appends to its log
        self._process = subprocess.Popen(
            [str(self.binary), "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.running and time.monotonic() < deadline:
            if _RUNNING.search(self._log_since(logged)) and self._accepts():
                return None
            time.sleep(0.02)
        if self.running:
            self._process.kill()
            stderr = self._reap() + f"\nnot listening after {START_TIMEOUT_S} s"
        else:
            stderr = self._reap()
        return f"{stderr}\n{self._log_since(logged)}".strip()

    def stop(self) -> None:
        """Clean shutdown (SIGTERM): clients are cut without a DISCONNECT, so their wills are published to
        whoever is still connected (nobody, here); the database with sessions and retained messages is saved."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Crash (SIGKILL): nothing is saved since the last autosave."""
        self._signal(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (no PUBACK), like a hung broker. Keep it
        shorter than the clients' keepalive, then ``resume()``."""
        assert self._process is not None, "broker not running"
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def forget(self) -> None:
        """Delete the saved database (while stopped): the next start has no sessions and no retained
        messages, like a broker reinstalled or crashed before its autosave."""
        assert not self.running, "stop the broker first"
        (self.root / "mosquitto.db").unlink(missing_ok=True)

    def cleanup(self) -> None:
        try:
            self.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _signal(self, sig: signal.Signals) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(sig)
            self._process.send_signal(signal.SIGCONT)  # a paused broker must run to act on SIGTERM
        self._reap()

    def _reap(self) -> str:
        assert self._process is not None
        try:
            _, stderr = self._process.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            _, stderr = self._process.communicate()
        self._process = None
        return stderr.decode(errors="replace").strip()

    def _accepts(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def _log_since(self, offset: int) -> str:
        try:
            with self.log.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")[-2000:]
        except OSError:
            return ""


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8")


class MqttWatcher:
    """A paho subscriber (QoS 1) that records every message it receives, in order, and can wait for one to
    show up: ``wait_for(lambda seen: ...)``. Use as a context manager. It reconnects quickly after a broker
    restart; ``persistent=True`` gives it a persistent session, so the broker queues what is published while
    it is away (an HMI that must not miss an alert). ``port`` picks another listener than the plain one (a
    TLS one: ``broker.tls_ports[i]``) and ``configure`` prepares the client before it connects (``tls_set``,
    ``username_pw_set``)."""

    def __init__(
        self,
        broker: MosquittoBroker,
        *topics: str,
        persistent: bool = False,
        port: int | None = None,
        configure: Callable[[mqtt.Client], object] | None = None,
    ) -> None:
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:10]}", clean_session=not persistent
        )
        if configure is not None:
            configure(self._client)
        self._client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]
        self._topics = topics
        self._lock = threading.Condition()
        self._subscribed = threading.Event()
        self.messages: list[Seen] = []
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port if port is None else port, keepalive=10)
        self._client.loop_start()
        if topics and not self._subscribed.wait(START_TIMEOUT_S):
            raise TimeoutError(f"watcher could not subscribe to {topics}")

    def _on_connect(
        self, client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object
    ) -> None:
        if self._topics:
            client.subscribe([(topic, 1) for topic in self._topics])

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Seen(message.topic, bytes(message.payload), bool(message.retain), message.qos))
            self._lock.notify_all()

    def on(self, topic: str) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.messages if seen.topic == topic]

    def wait_for(self, predicate: Callable[[Seen], bool], timeout: float = 5.0) -> Seen:
        """The first recorded message (also one already seen) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for seen in self.messages:
                    if predicate(seen):
                        return seen
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    recent = [(seen.topic, seen.payload[:80]) for seen in self.messages[-10:]]
                    raise TimeoutError(f"no matching message within {timeout} s; last seen: {recent}")
                self._lock.wait(remaining)

    def wait_until(self, condition: Callable[[list[Seen]], bool], timeout: float = 5.0) -> list[Seen]:
        """Wait until ``condition(all messages so far)`` holds; returns a copy of the messages."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not condition(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not met within {timeout} s; {len(self.messages)} messages seen")
                self._lock.wait(remaining)
            return list(self.messages)

    def publish(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1) -> None:
        self._client.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(START_TIMEOUT_S)

    def publish_all(self, messages: Sequence[tuple[str, bytes | str]], qos: int = 1) -> None:
        """Publish them back to back (a flood), then wait until the broker has acknowledged every one."""
        infos = [self._client.publish(topic, payload, qos=qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(START_TIMEOUT_S)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``condition`` until it holds; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoBroker]:
    try:
        broker = MosquittoBroker()
    except MosquittoUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        broker.start()
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture
def broker(mosquitto: MosquittoBroker) -> MosquittoBroker:
    if not mosquitto.running:  # a previous outage test failed before starting it again
        mosquitto.start()
    return mosquitto


@pytest.fixture
def mqtt_prefix() -> str:
    return f"lwtest/{uuid.uuid4().hex[:10]}/line1"

"""The MQTT link over real TLS: a throwaway CA (tests/services/certs.py) and a Mosquitto of its own with two
TLS listeners, one that demands a client certificate and one that demands a username and password.

What a fake paho client cannot show: that the files the config names are loaded into a handshake a real
broker accepts (the server name 127.0.0.1 checked against the certificate), that the wrong CA or a missing
client certificate keeps the link down without crashing it, and that the broker's refusal of a password is
logged without the password.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from linewatch.config import MqttSection
from linewatch.pipeline.journal.records import JournalRecord, event_payload
from linewatch.sinks.mqtt import MqttForwarder, MqttLink
from linewatch.sinks.mqtt_payloads import Topics
from linewatch.types import Event, EventType, VerdictLabel
from tests.services.certs import OpensslUnavailable, TestPki, make_pki
from tests.services.mosquitto import (
    MosquittoBroker,
    MosquittoUnavailable,
    MqttWatcher,
    TlsListener,
    make_password_file,
    wait_until,
)
from tests.sinks.mqtt_fakes import RecordingHandlers

USERNAME = "line1"
PASSWORD = f"pw-{uuid.uuid4().hex}"  # unique, so finding it in a log cannot be a coincidence
HOLD_S = 0.5  # after a refusal: several reconnect attempts (0.05 to 0.2 s apart), none may succeed
NO_CLIENT_CERT = "peer did not return a certificate"  # what Mosquitto (OpenSSL) logs for that refusal


@dataclass(frozen=True)
class TlsBroker:
    broker: MosquittoBroker
    pki: TestPki
    cert_port: int  # TLS, client certificate required
    password_port: int | None  # TLS, username and password required; None if no password file could be made
    no_password_file: str  # why password_port is None

    def log_text(self) -> str:
        return self.broker.log.read_text(errors="replace")

    def client_tls(self, client: mqtt.Client) -> None:
        """Set up a watcher like a plant HMI with its own certificate from the plant CA."""
        client.tls_set(ca_certs=str(self.pki.ca.cert), certfile=str(self.pki.client.cert),
                       keyfile=str(self.pki.client.key))  # fmt: skip


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    folder = tmp_path_factory.mktemp("mqtt-tls")
    try:
        pki = make_pki(folder)
    except OpensslUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    server = {"cafile": pki.ca.cert, "certfile": pki.server.cert, "keyfile": pki.server.key}
    listeners = [TlsListener(**server, require_certificate=True)]
    no_password_file = ""
    try:
        make_password_file(folder / "passwords", USERNAME, PASSWORD)
        listeners.append(TlsListener(**server, password_file=folder / "passwords"))
    except MosquittoUnavailable as exc:
        no_password_file = str(exc)
    try:
        broker = MosquittoBroker(tls=listeners)
    except MosquittoUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        broker.start()
        password_port = broker.tls_ports[1] if len(listeners) == 2 else None
        yield TlsBroker(broker, pki, broker.tls_ports[0], password_port, no_password_file)
    finally:
        broker.cleanup()


@pytest.fixture
def password_port(tls: TlsBroker) -> int:
    if tls.password_port is None:
        pytest.skip(f"no password file: {tls.no_password_file}")
    return tls.password_port


@pytest.fixture
def start_link(mqtt_prefix: str) -> Iterator[Callable[..., MqttLink]]:
    """Start links with TLS on and fast reconnects; every link started is stopped after the test."""
    links: list[MqttLink] = []

    def start(port: int, **section: Any) -> MqttLink:
        mqtt_section = MqttSection(
            host=MosquittoBroker.host, port=port, tls=True, keepalive_s=5, ack_timeout_s=2.0,
            reconnect_min_s=0.05, reconnect_max_s=0.2, **section,
        )  # fmt: skip
        link = MqttLink(mqtt_section, mqtt_prefix, f"lw-tls-{uuid.uuid4().hex[:10]}", RecordingHandlers())
        links.append(link)
        link.start()  # never raises for a broker that refuses us: the link keeps retrying
        return link

    yield start
    for link in links:
        link.stop()


def defect_event(camera: str) -> JournalRecord:
    event = Event(
        event_id=f"ev-{camera}-tls", type=EventType.NEW, seq=1, camera=camera, product="metal plate",
        frame_ts=datetime(2026, 1, 1, 8, tzinfo=UTC), score=0.9, threshold=0.5, label=VerdictLabel.DEFECT,
        model_version="v1", inspection_id=f"{camera}-boot-1",
    )  # fmt: skip
    return JournalRecord(1, "event", f"{event.event_id}:1", camera, event_payload(event), "")


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("linewatch") and r.levelno >= logging.WARNING]


def test_a_client_certificate_link_says_online_and_its_events_reach_a_tls_subscriber(
    tls: TlsBroker, start_link: Callable[..., MqttLink], mqtt_prefix: str
) -> None:
    pki = tls.pki
    link = start_link(tls.cert_port, ca_file=pki.ca.cert, cert_file=pki.client.cert, key_file=pki.client.key)
    assert link.wait_connected(5)
    wait_until(lambda: link.stats.published >= 1)  # "online" acknowledged, so stored before the watcher subscribes
    topics = Topics(mqtt_prefix)
    with MqttWatcher(
        tls.broker, topics.available, topics.defect("cam1"), port=tls.cert_port, configure=tls.client_tls
    ) as watcher:
        online = watcher.wait_for(lambda seen: seen.topic == topics.available)
        assert (online.text, online.retain) == ("online", True)  # retained: this subscriber came after it
        assert MqttForwarder(link, "plant", "line1").send([defect_event("cam1")]) == 1  # the broker's PUBACK
        seen = watcher.wait_for(lambda seen: seen.topic == topics.defect("cam1"))
    assert (seen.qos, seen.retain) == (1, False)
    message = json.loads(seen.payload)
    assert (message["event_id"], message["seq"], message["site"]) == ("ev-cam1-tls", 1, "plant")
    assert link.stats.connects == 1


def test_a_broker_certificate_from_another_ca_keeps_the_link_down_and_is_logged(
    tls: TlsBroker, start_link: Callable[..., MqttLink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pki = tls.pki
    link = start_link(tls.cert_port, ca_file=pki.other_ca.cert, cert_file=pki.client.cert, key_file=pki.client.key)
    wait_until(lambda: bool(refusals(caplog)))
    assert f"127.0.0.1:{tls.cert_port}" in refusals(caplog)[0].getMessage()
    assert not link.wait_connected(HOLD_S)
    assert (link.connected, link.stats.connects) == (False, 0)


def test_without_a_client_certificate_the_broker_refuses_the_link(
    tls: TlsBroker, start_link: Callable[..., MqttLink]
) -> None:
    already = tls.log_text().count(NO_CLIENT_CERT)
    link = start_link(tls.cert_port, ca_file=tls.pki.ca.cert)
    wait_until(lambda: tls.log_text().count(NO_CLIENT_CERT) > already)  # refused for that reason, not another
    assert not link.wait_connected(HOLD_S)
    assert (link.connected, link.stats.connects) == (False, 0)


@pytest.mark.parametrize("case", ["wrong CA", "no client certificate"])
def test_a_tls_refusal_is_logged_with_its_cause(
    tls: TlsBroker, start_link: Callable[..., MqttLink], caplog: pytest.LogCaptureFixture, case: str
) -> None:
    caplog.set_level(logging.DEBUG)
    pki = tls.pki
    if case == "wrong CA":
        start_link(tls.cert_port, ca_file=pki.other_ca.cert, cert_file=pki.client.cert, key_file=pki.client.key)
        wait_until(lambda: bool(refusals(caplog)))
        assert "certificate verify failed" in refusals(caplog)[0].getMessage()
    else:
        link = start_link(tls.cert_port, ca_file=pki.ca.cert)
        assert not link.wait_connected(HOLD_S)
        assert refusals(caplog)


def test_the_right_password_is_accepted_over_tls_and_never_logged(
    tls: TlsBroker, password_port: int, start_link: Callable[..., MqttLink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    link = start_link(password_port, ca_file=tls.pki.ca.cert, username=USERNAME, password=PASSWORD)
    assert link.wait_connected(5)
    wait_until(lambda: f" as {link.client_id} " in tls.log_text())
    connected = next(line for line in tls.log_text().splitlines() if f" as {link.client_id} " in line)
    assert f"u'{USERNAME}'" in connected  # the broker logs the user it accepted
    link.stop()
    assert caplog.records and PASSWORD not in caplog.text


def test_a_wrong_password_is_refused_logged_and_not_revealed(
    tls: TlsBroker, password_port: int, start_link: Callable[..., MqttLink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = f"wrong-{PASSWORD}"
    link = start_link(password_port, ca_file=tls.pki.ca.cert, username=USERNAME, password=wrong)
    wait_until(lambda: bool(refusals(caplog)))
    assert "Not authorized" in refusals(caplog)[0].getMessage()
    assert not link.wait_connected(HOLD_S)
    link.stop()
    assert link.stats.connects == 0
    assert PASSWORD not in caplog.text  # nor the wrong one, which contains it

"""deploy/mosquitto/ (the plant broker example) run by a real Mosquitto: TLS, passwords and the ACL.

The broker runs the shipped linewatch.conf with only the lines that name the plant's files and port replaced
(listener, cafile, certfile, keyfile, password_file, acl_file: test certificates, a password file with every
user of the ACL, free loopback ports) and test-only lines appended (database and log in the test's folder,
``user root`` under root). The ACL is the shipped file, unchanged. So a grant missing from the shipped files,
or one too many, fails here. The daemon is linewatch's own MqttLink with the user, topic prefix and client id
of deploy/linewatch.example.toml; the other roles are paho clients (MqttWatcher), all over TLS.

Mosquitto refuses silently: it acknowledges a denied MQTT 3.1.1 publish and drops it. So every "does not
arrive" is ordered against a barrier: the denied publishes are all acknowledged before an allowed one goes
out, and Mosquitto, one thread, queues messages for a subscriber in the order it takes them in, so once the
allowed one has arrived, a denied one that had got through would be there already.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from linewatch.config import MqttSection
from linewatch.sinks.mqtt_link import MqttLink
from linewatch.sinks.mqtt_payloads import Topics
from linewatch.types import LabelTarget, VerdictLabel
from tests.services.certs import OpensslUnavailable, TestPki, make_pki
from tests.services.mosquitto import (
    MosquittoBroker,
    MosquittoUnavailable,
    MqttWatcher,
    make_password_file,
    wait_until,
)
from tests.sinks.mqtt_fakes import RecordingHandlers

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "mosquitto"
SHIPPED_CONF = DEPLOY / "linewatch.conf"
SHIPPED_ACL = DEPLOY / "linewatch.acl"
EXAMPLE = tomllib.loads((ROOT / "deploy" / "linewatch.example.toml").read_text())
SITE, LINE = EXAMPLE["site"]["site"], EXAMPLE["site"]["line"]
PREFIX = f"linewatch/{SITE}/{LINE}"  # linewatch's default prefix
CLIENT_ID = f"linewatch-{SITE}-{LINE}"  # linewatch's default client id (Config.mqtt_client_id)
CAMERA = EXAMPLE["cameras"][0]["name"]
OTHER_LINE = f"linewatch/{SITE}/press-line-4"
TOPICS = Topics(PREFIX)
INSPECTION = "insp-1"  # RecordingHandlers knows it

DAEMON = EXAMPLE["mqtt"]["username"]
OPERATORS = ("operator-anna", "operator-jonas")
SUPERVISOR = "linewatch-admin"
READERS = ("scada", "mes")
# Every user of the shipped ACL and what it may send. A user added to the ACL without a row here fails
# test_the_acl_the_example_config_and_this_test_name_the_same_users.
MAY_SEND = {
    DAEMON: frozenset[str](),
    **{name: frozenset({"feedback"}) for name in OPERATORS},
    SUPERVISOR: frozenset({"feedback", "enabled", "product", "trigger", "retrain"}),
    **{name: frozenset[str]() for name in READERS},
}


def acl_users() -> list[str]:
    return [line.split(maxsplit=1)[1] for line in SHIPPED_ACL.read_text().splitlines() if line.startswith("user ")]


def shipped_config(values: dict[str, str]) -> list[str]:
    """linewatch.conf line by line with the value of each option in ``values`` replaced, everything else as
    shipped. Each replaced option must occur exactly once, so the test cannot drift from the file."""
    lines, found = [], dict.fromkeys(values, 0)
    for line in SHIPPED_CONF.read_text().splitlines():
        option = line.split(" ", 1)[0]
        if option in values:
            found[option] += 1
            line = f"{option} {values[option]}"
        lines.append(line)
    wrong = {option: count for option, count in found.items() if count != 1}
    assert not wrong, f"{SHIPPED_CONF} must set each of these options once (found that often): {wrong}"
    return lines


def published_topics(topics: Topics, camera: str) -> list[str]:
    """Every topic linewatch publishes: each topic ``Topics`` names except its command subscriptions. Read
    off the class, so a topic added there is checked against the ACL without editing this test."""
    names = [name for name in vars(Topics) if not name.startswith("_") and name != "subscriptions"]
    found = [getattr(topics, name) for name in names]
    return [topic(camera) if callable(topic) else topic for topic in found]


class ShippedBroker(MosquittoBroker):
    """A MosquittoBroker (start, stop, port retries, cleanup) whose config is the shipped linewatch.conf;
    ``port`` is its TLS listener."""

    def __init__(self, pki: TestPki, password_file: Path) -> None:
        super().__init__()
        self.pki = pki
        self.password_file = password_file

    def _write_config(self) -> None:
        lines = shipped_config({
            "listener": f"{self.port} {self.host}",
            "cafile": str(self.pki.ca.cert),
            "certfile": str(self.pki.server.cert),
            "keyfile": str(self.pki.server.key),
            "password_file": str(self.password_file),
            "acl_file": str(SHIPPED_ACL),  # read in place: the very file that ships
        })  # fmt: skip
        lines += [f"persistence_location {self.root}/", f"log_dest file {self.log}"]
        if os.geteuid() == 0:  # see tests/services/mosquitto.py
            lines.append("user root")
        self.config.write_text("\n".join(lines) + "\n")


@dataclass(frozen=True)
class Plant:
    broker: ShippedBroker
    passwords: dict[str, str]

    def login(self, user: str) -> Callable[[mqtt.Client], None]:
        """Prepare a client like a plant HMI: the plant CA, a username and its password."""

        def configure(client: mqtt.Client) -> None:
            client.tls_set(ca_certs=str(self.broker.pki.ca.cert))
            client.username_pw_set(user, self.passwords[user])

        return configure

    def client(self, user: str, *topics: str) -> MqttWatcher:
        """Connected as ``user``, subscribed to ``topics`` (all of linewatch's by default); what the ACL lets it
        read is what it receives."""
        return MqttWatcher(self.broker, *(topics or ("linewatch/#",)), configure=self.login(user))

    def daemon(self, handlers: RecordingHandlers) -> MqttLink:
        """linewatch's link as deploy/linewatch.example.toml configures it, started; stop it after use."""
        section = MqttSection(
            host=self.broker.host, port=self.broker.port, tls=True, ca_file=self.broker.pki.ca.cert,
            username=DAEMON, password=self.passwords[DAEMON], keepalive_s=5, ack_timeout_s=2.0,
            reconnect_min_s=0.05, reconnect_max_s=0.2,
        )  # fmt: skip
        link = MqttLink(section, PREFIX, CLIENT_ID, handlers)
        link.start()
        return link

    def connack(self, user: str | None, password: str | None, context: ssl.SSLContext | None = None) -> str:
        """What the broker answers a CONNECT over TLS (``context``, or one trusting the plant CA) as ``user``
        (None: anonymous): "Success", a refusal, "no CONNACK" if it closed the connection first, or why the
        connection (the TLS handshake) failed."""
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:10]}")
        answers: list[ReasonCode] = []
        client.on_connect = lambda _client, _data, _flags, reason, _props: answers.append(reason)
        client.tls_set_context(context or ssl.create_default_context(cafile=str(self.broker.pki.ca.cert)))
        if user is not None:
            client.username_pw_set(user, password)
        try:
            client.connect(self.broker.host, self.broker.port, keepalive=5)
        except OSError as exc:  # ssl.SSLError among them: the TLS handshake failed
            return f"no connection: {exc}"
        deadline = time.monotonic() + 5.0
        while not answers and time.monotonic() < deadline:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break  # connection lost
        client.disconnect()
        return str(answers[0]) if answers else "no CONNACK"


def write_password_file(folder: Path, passwords: dict[str, str]) -> Path:
    """One Mosquitto password file for all ``passwords``: a file per user hashed by mosquitto_passwd (so in a
    format this broker reads), joined."""
    parts = []
    for user, password in passwords.items():
        part = folder / f"passwd-{user}"
        make_password_file(part, user, password)
        parts.append(part.read_text())
    joined = folder / "passwd"
    joined.write_text("".join(parts))
    joined.chmod(0o600)
    return joined


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plant]:
    folder = tmp_path_factory.mktemp("plant-broker")
    try:
        pki = make_pki(folder)
    except OpensslUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    passwords = {user: f"pw-{uuid.uuid4().hex}" for user in acl_users()}
    try:
        broker = ShippedBroker(pki, write_password_file(folder, passwords))
    except MosquittoUnavailable as exc:
        pytest.fail(f"needs the mosquitto package (make test installs it): {exc}", pytrace=False)
    try:
        broker.start()
        yield Plant(broker, passwords)
    finally:
        broker.cleanup()


@pytest.fixture
def handlers() -> RecordingHandlers:
    """The daemon's command handlers; each sender addresses the camera named after itself."""
    return RecordingHandlers(known_ids={INSPECTION}, cameras={*MAY_SEND, CAMERA})


@pytest.fixture
def daemon(plant: Plant, handlers: RecordingHandlers) -> Iterator[MqttLink]:
    link = plant.daemon(handlers)
    try:
        assert link.wait_connected(5), "the daemon could not connect with the example's user"
        yield link
    finally:
        link.stop()


def commands_from(sender: str, level: str | None = None) -> dict[str, tuple[str, bytes]]:
    """The three commands, each on the camera named after ``sender``, so the handler's calls say who sent it,
    on the topics that end in ``level`` (the sender's own name by default; "" for the bare topics)."""
    level = sender if level is None else level
    end = f"/{level}" if level else ""
    feedback = {"inspection_id": INSPECTION, "label": "normal"}
    return {
        "feedback": (f"{PREFIX}/{sender}/feedback/set{end}", json.dumps(feedback).encode()),
        "enabled": (f"{PREFIX}/{sender}/enabled/set{end}", b"false"),
        "product": (f"{PREFIX}/{sender}/product/set{end}", json.dumps(sender).encode()),
        "trigger": (f"{PREFIX}/{sender}/trigger{end}", json.dumps({"part_id": sender}).encode()),
        "retrain": (f"{PREFIX}/retrain/set{end}", json.dumps({"reason": sender}).encode()),
    }


def expected_call(kind: str, sender: str) -> tuple[object, ...]:
    if kind == "feedback":
        return ("feedback", sender, LabelTarget.INSPECTION, INSPECTION, VerdictLabel.NORMAL, sender)
    if kind == "enabled":
        return ("set_enabled", sender, False)
    if kind == "product":
        return ("select_product", sender, sender)
    if kind == "trigger":
        return ("trigger", sender, sender)
    return ("retrain", sender)


def test_the_acl_the_example_config_and_this_test_name_the_same_users() -> None:
    assert sorted(acl_users()) == sorted(MAY_SEND)
    assert f"listener {EXAMPLE['mqtt']['port']}" in SHIPPED_CONF.read_text().splitlines()
    # the command topics this test builds by hand are the ones linewatch subscribes to
    assert set(TOPICS.subscriptions) == {
        f"{PREFIX}/+/feedback/set/#", f"{PREFIX}/+/enabled/set/#", f"{PREFIX}/+/product/set/#",
        f"{PREFIX}/+/trigger/#", f"{PREFIX}/retrain/set/#",
    }  # fmt: skip


def test_commands_reach_the_daemon_only_from_the_users_allowed_to_send_them(
    plant: Plant, daemon: MqttLink, handlers: RecordingHandlers
) -> None:
    for sender in MAY_SEND:  # the daemon's own user too: it must not be able to command itself
        with plant.client(sender) as client:
            for topic, payload in commands_from(sender).values():
                client.publish(topic, payload)  # returns on PUBACK, which a denied publish gets too
            # nobody may send unnamed (the bare topics) or in another's name
            for level in ("", "operator-jonas" if sender != "operator-jonas" else "operator-anna"):
                for topic, payload in commands_from(sender, level).values():
                    client.publish(topic, payload)
    barrier = f"barrier-{uuid.uuid4().hex[:8]}"
    with plant.client(SUPERVISOR) as supervisor:
        supervisor.publish(commands_from(SUPERVISOR)["retrain"][0], json.dumps({"reason": barrier}))
    wait_until(lambda: ("retrain", barrier) in handlers.calls)

    expected = {expected_call(kind, sender) for sender, kinds in MAY_SEND.items() for kind in kinds}
    received = [call for call in handlers.calls if call != ("retrain", barrier)]
    let_through, held_back = set(received) - expected, expected - set(received)
    assert (sorted(map(repr, let_through)), sorted(map(repr, held_back))) == ([], [])
    assert len(received) == len(expected)  # and none twice
    assert daemon.stats.received == len(expected) + 1  # nothing denied even reached it to be rejected
    assert daemon.stats.rejected == {}
    assert set(handlers.senders) == {f"mqtt: {SUPERVISOR}"}  # each recorded under the name the broker vouched for


def test_everything_the_daemon_publishes_reaches_every_reader_of_its_line(plant: Plant, daemon: MqttLink) -> None:
    topics = published_topics(TOPICS, CAMERA)
    assert {TOPICS.available, TOPICS.defect(CAMERA), TOPICS.enabled(CAMERA), TOPICS.retrain_state} <= set(topics)
    assert len(topics) >= 7  # available, model/state, retrain/state and four per camera
    token = uuid.uuid4().hex.encode()
    readers = [plant.client(user) for user in MAY_SEND if user != DAEMON]
    try:
        for topic in topics:
            daemon.publish(topic, token).wait_for_publish(5)
        for reader in readers:
            reader.wait_until(lambda seen: {m.topic for m in seen if m.payload == token} == set(topics))
    finally:
        for reader in readers:
            reader.close()


def test_only_the_daemon_publishes_state_and_only_for_its_own_line(plant: Plant, daemon: MqttLink) -> None:
    token = uuid.uuid4().hex
    with plant.client("scada") as scada:  # reads every line of the site
        daemon.publish(f"{OTHER_LINE}/{CAMERA}/defect", f"{token} other line".encode()).wait_for_publish(5)
        for user in MAY_SEND:
            if user != DAEMON:
                with plant.client(user) as spoofer:
                    spoofer.publish(TOPICS.defect(CAMERA), f"{token} {user}")
                    spoofer.publish(TOPICS.available, f"{token} {user}")
        daemon.publish(TOPICS.defect(CAMERA), f"{token} barrier".encode()).wait_for_publish(5)
        scada.wait_for(lambda seen: seen.text == f"{token} barrier")
        seen = [(m.topic, m.text) for m in scada.messages if m.text.startswith(token)]
    assert seen == [(TOPICS.defect(CAMERA), f"{token} barrier")]


def test_strangers_are_refused(plant: Plant) -> None:
    assert plant.connack("scada", plant.passwords["scada"]) == "Success"
    assert plant.connack(None, None) == "Not authorized"
    assert plant.connack("scada", "wrong") == "Not authorized"
    assert plant.connack("operator-nobody", "whatever") == "Not authorized"


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"])
def test_tls_1_2_and_1_3_are_accepted(plant: Plant, version: ssl.TLSVersion) -> None:
    """tls_version tlsv1.2 is a minimum on Mosquitto 2, not the only version."""
    context = ssl.create_default_context(cafile=str(plant.broker.pki.ca.cert))
    context.minimum_version = context.maximum_version = version
    assert plant.connack("mes", plant.passwords["mes"], context) == "Success"


def test_a_command_sent_while_the_daemon_is_away_survives_a_broker_restart(
    plant: Plant, daemon: MqttLink, handlers: RecordingHandlers
) -> None:
    """persistence true and the daemon's persistent session: the broker saves the queued command on a clean
    stop and hands it over when the daemon comes back with the same client id."""
    daemon.stop()
    sender = OPERATORS[0]
    with plant.client(sender) as operator:
        operator.publish(*commands_from(sender)["feedback"])
    plant.broker.stop()
    plant.broker.start()
    later = RecordingHandlers(known_ids={INSPECTION}, cameras={sender})
    back = plant.daemon(later)
    try:
        wait_until(lambda: bool(later.calls))
        assert later.calls == [expected_call("feedback", sender)]
    finally:
        back.stop()
    assert handlers.calls == []

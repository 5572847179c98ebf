"""The OPC UA server against a real asyncua client over Basic256Sha256 SignAndEncrypt: values and
notifications after ``part_done``, methods and their refusals, and who is let in (accounts, roles, client
certificates, anonymous); the server certificate is generated once and reused."""

from __future__ import annotations

import asyncio
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto import cert_gen
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import Engine

from linewatch.config import OpcUaSection
from linewatch.plant.opcua import OpcUaError, OpcUaServer
from linewatch.plant.opcua_security import CERT_FILE, KEY_FILE, thumbprint
from linewatch.plant.parts import PartResult
from linewatch.sinks.db import make_engine
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.users import add_user

PASSWORD = "correct horse battery"
CLIENT_URI = "urn:linewatch:test:client"
DEADLINE_S = 1.0


class FakeControl:
    """The daemon's side, recording what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def stations(self) -> list[str]:
        return ["st1"]

    def products(self) -> list[str]:
        return ["bracket A", "bracket B"]

    def station_state(self, station: str) -> str:
        return "ready"

    def last_part(self, station: str) -> PartResult | None:
        return None

    def part_counts(self, station: str) -> dict[str, int]:
        return {"OK": 2, "NOK": 1, "incomplete": 0}

    def trigger(self, station: str, part_id: str | None, by: str) -> None:
        self.calls.append(("trigger", station, str(part_id), by))

    def select_product(self, station: str, product: str, by: str) -> None:
        if product not in self.products():
            raise ValueError(f"no product {product!r}; the model knows {', '.join(self.products())}")
        self.calls.append(("select_product", station, product, by))

    def acknowledge(self, station: str, by: str) -> None:
        self.calls.append(("acknowledge", station, by))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def client_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, name, {}, [x509.UniformResourceIdentifier(CLIENT_URI)], [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    cert_path, key_path = folder / f"{name}.der", folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return cert_path, key_path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    folder = tmp_path_factory.mktemp("store")
    url = f"sqlite:///{folder / 'store.sqlite3'}"
    upgrade_database(url, folder / "backups")
    engine = make_engine(url)
    add_user(engine, "olga", "operator", PASSWORD, "test")
    add_user(engine, "vera", "viewer", PASSWORD, "test")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("clients")
    return {name: client_certificate(folder, name) for name in ("trusted", "stranger")}


@pytest.fixture(scope="module")
def running(
    tmp_path_factory: pytest.TempPathFactory, store: Engine, certs: dict[str, tuple[Path, Path]]
) -> Iterator[tuple[OpcUaServer, FakeControl]]:
    data_dir = tmp_path_factory.mktemp("data")
    (data_dir / "opcua" / "trusted").mkdir(parents=True)
    shutil.copy(certs["trusted"][0], data_dir / "opcua" / "trusted" / "client.der")
    control = FakeControl()
    server = OpcUaServer(OpcUaSection(enabled=True, port=free_port()), control, store, data_dir, site="s", line="l")
    server.start()
    yield server, control
    server.stop()


async def connect(
    server: OpcUaServer, cert: tuple[Path, Path] | None, user: str | None = None, password: str = PASSWORD
) -> Client:
    client = Client(server.endpoint, timeout=5)
    client.application_uri = CLIENT_URI
    if cert is not None:
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            str(cert[0]),
            str(cert[1]),
            server_certificate=str(server.cert_dir / CERT_FILE),
        )
    if user is not None:
        client.set_user(user)
        client.set_password(password)
    await client.connect()
    return client


async def refusal(
    server: OpcUaServer, cert: tuple[Path, Path] | None, user: str | None, password: str = PASSWORD
) -> int:
    """The status code a connection attempt is refused with."""
    with pytest.raises(ua.UaStatusCodeError) as refused:
        client = await connect(server, cert, user, password)
        await client.disconnect()
    return refused.value.code


async def station(client: Client, server: OpcUaServer) -> tuple[Any, int]:
    index = await client.get_namespace_index(server.namespace)
    return client.get_node(ua.NodeId("st1", index)), index


async def value(client: Client, server: OpcUaServer, name: str) -> Any:
    index = await client.get_namespace_index(server.namespace)
    return await client.get_node(ua.NodeId(f"st1.{name}", index)).read_value()


class Changes:
    """Subscription handler: every notified value, in order."""

    def __init__(self) -> None:
        self.values: asyncio.Queue[Any] = asyncio.Queue()

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.values.put_nowait(val)


def test_an_operator_reads_results_subscribes_and_calls_methods(
    running: tuple[OpcUaServer, FakeControl], certs: dict[str, tuple[Path, Path]]
) -> None:
    server, control = running

    async def scenario() -> None:
        client = await connect(server, certs["trusted"], "olga")
        try:
            node, index = await station(client, server)
            assert await value(client, server, "ResultCount") == 3  # the daemon's counts at start
            assert await value(client, server, "State") == "ready"
            changes = Changes()
            subscription = await client.create_subscription(10, changes)
            await subscription.subscribe_data_change(client.get_node(ua.NodeId("st1.LastResult", index)))
            assert await asyncio.wait_for(changes.values.get(), DEADLINE_S) == ""  # before the first part

            at = datetime(2026, 3, 1, 8, 30, 0, 250000, tzinfo=UTC)
            server.part_done(PartResult("st1", "P-7", "NOK", 1.4, "cam2 saw a defect", at, "v3", "bracket A", ("i1",)))
            started = time.perf_counter()
            assert await asyncio.wait_for(changes.values.get(), DEADLINE_S) == "NOK"
            print(f"part_done -> notification: {(time.perf_counter() - started) * 1000:.1f} ms")
            expected = {
                "LastPartId": "P-7",
                "LastScore": 1.4,
                "LastReason": "cam2 saw a defect",
                "LastTime": at,
                "ModelVersion": "v3",
                "Product": "bracket A",
                "ResultCount": 4,
                "OkCount": 2,
                "NokCount": 2,
                "IncompleteCount": 0,
            }
            assert {name: await value(client, server, name) for name in expected} == expected

            server.set_state("st1", "running")
            deadline = time.monotonic() + DEADLINE_S
            while await value(client, server, "State") != "running":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)

            await node.call_method(f"{index}:Trigger", "P-1")
            await node.call_method(f"{index}:SelectProduct", "bracket B")
            await node.call_method(f"{index}:Acknowledge")
            assert control.calls == [
                ("trigger", "st1", "P-1", "opcua: olga"),
                ("select_product", "st1", "bracket B", "opcua: olga"),
                ("acknowledge", "st1", "opcua: olga"),
            ]
            assert await value(client, server, "Product") == "bracket B"

            with pytest.raises(ua.UaStatusCodeError) as refused:
                await node.call_method(f"{index}:SelectProduct", "bracket Z")
            assert refused.value.code == ua.StatusCodes.BadInvalidArgument
            method = await node.get_child(f"{index}:SelectProduct")
            request = ua.CallMethodRequest(
                ObjectId=node.nodeid,
                MethodId=method.nodeid,
                InputArguments=[ua.Variant("bracket Z", ua.VariantType.String)],
            )
            (result,) = await client.uaclient.call([request])
            assert result.InputArgumentDiagnosticInfos[0].AdditionalInfo == (
                "no product 'bracket Z'; the model knows bracket A, bracket B"
            )
            assert len(control.calls) == 3
        finally:
            await client.disconnect()

    asyncio.run(scenario())


def test_a_viewer_reads_but_may_not_call(
    running: tuple[OpcUaServer, FakeControl], certs: dict[str, tuple[Path, Path]]
) -> None:
    server, control = running

    async def scenario() -> None:
        client = await connect(server, certs["trusted"], "vera")
        try:
            node, index = await station(client, server)
            assert await value(client, server, "ResultCount") >= 3
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await node.call_method(f"{index}:Trigger", "P-2")
            assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
        finally:
            await client.disconnect()

    calls_before = list(control.calls)
    asyncio.run(scenario())
    assert control.calls == calls_before


def test_no_session_without_an_account_a_password_or_a_trusted_certificate(
    running: tuple[OpcUaServer, FakeControl], certs: dict[str, tuple[Path, Path]]
) -> None:
    server, _ = running
    assert asyncio.run(refusal(server, certs["trusted"], None)) == ua.StatusCodes.BadIdentityTokenRejected
    assert (
        asyncio.run(refusal(server, certs["trusted"], "olga", "wrong password!")) == ua.StatusCodes.BadUserAccessDenied
    )
    assert asyncio.run(refusal(server, certs["trusted"], "nobody")) == ua.StatusCodes.BadUserAccessDenied
    assert asyncio.run(refusal(server, certs["stranger"], "olga")) == ua.StatusCodes.BadCertificateUntrusted
    stranger = thumbprint(certs["stranger"][0].read_bytes())
    assert (server.cert_dir / "rejected" / f"{stranger}.der").read_bytes() == certs["stranger"][0].read_bytes()


def test_the_certificate_is_generated_once_and_a_taken_port_is_named(
    tmp_path: Path, store: Engine, certs: dict[str, tuple[Path, Path]]
) -> None:
    first = OpcUaServer(
        OpcUaSection(enabled=True, port=free_port()), FakeControl(), store, tmp_path, site="s", line="l"
    )
    first.start()
    first.stop()
    cert = (tmp_path / "opcua" / CERT_FILE).read_bytes()
    assert stat.S_IMODE((tmp_path / "opcua" / KEY_FILE).stat().st_mode) == 0o600

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        section = OpcUaSection(enabled=True, port=taken.getsockname()[1])
        with pytest.raises(OpcUaError, match=r"opcua\.host, opcua\.port"):
            OpcUaServer(section, FakeControl(), store, tmp_path, site="s", line="l").start()

    # anonymous reading without security, when allowed: also the second start, on the same certificate
    section = OpcUaSection(enabled=True, port=free_port(), allow_anonymous=True, allow_unsecured=True)
    second = OpcUaServer(section, FakeControl(), store, tmp_path, site="s", line="l")
    second.start()
    try:
        assert (tmp_path / "opcua" / CERT_FILE).read_bytes() == cert

        async def scenario() -> None:
            client = await connect(second, None)
            try:
                endpoints = await client.get_endpoints()
                assert {thumbprint(endpoint.ServerCertificate) for endpoint in endpoints} == {thumbprint(cert)}
                node, index = await station(client, second)
                assert await value(client, second, "ResultCount") == 3
                with pytest.raises(ua.UaStatusCodeError) as refused:
                    await node.call_method(f"{index}:Trigger", "P-3")
                assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
            finally:
                await client.disconnect()
            assert await refusal(second, None, "olga") == ua.StatusCodes.BadUserAccessDenied  # no password unsecured

        asyncio.run(scenario())
    finally:
        second.stop()

    with pytest.raises(OpcUaError, match="names the application"):
        OpcUaServer(
            OpcUaSection(enabled=True, port=free_port()), FakeControl(), store, tmp_path, site="s", line="renamed"
        ).start()

"""The daemon's OPC UA server end to end (issue 19): an operator's asyncua client triggers a station of two
triggered cameras, reads the part verdict the daemon judged from both cameras' frames, changes the station's
product over, and acknowledges; a client without an account is refused."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from asyncua import ua

from linewatch.config import load_config
from linewatch.daemon.app import App
from linewatch.pipeline.journal.records import action_from_payload, part_from_payload
from linewatch.sinks.db import make_engine
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.users import add_user
from tests.daemon.test_app import _wait_for, daemon_model, journal_records, write_config  # noqa: F401
from tests.plant.test_opcua import PASSWORD, client_certificate, connect, free_port, refusal

STATIONS = """
[[stations]]
name = "st1"
cameras = ["cam0", "cam1"]
deadline_ms = 2000
"""


def test_an_operator_triggers_and_reads_a_part_over_opc_ua(
    daemon_model: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    port = free_port()
    path = write_config(tmp_path, daemon_model, cameras=2, fps=30.0, outputs=f"[mqtt]\nenabled = false\n\n[http]\n"
                        f"port = 0\n\n[opcua]\nenabled = true\nport = {port}\n")  # fmt: skip
    path.write_text(path.read_text().replace('policy = "queue"', 'policy = "queue"\ntrigger = "triggered"') + STATIONS)
    config = load_config(path)
    upgrade_database(config.store_url, tmp_path / "backups")
    engine = make_engine(config.store_url)
    add_user(engine, "olga", "operator", PASSWORD, "test")
    engine.dispose()
    cert = client_certificate(tmp_path, "plc")
    (config.site.data_dir / "opcua" / "trusted").mkdir(parents=True)
    shutil.copy(cert[0], config.site.data_dir / "opcua" / "trusted" / "plc.der")
    app = App(config)
    app.start()
    try:
        server = app.opcua
        assert server is not None

        async def scenario() -> tuple[str, str, int]:
            client = await connect(server, cert, "olga")
            try:
                index = await client.get_namespace_index(server.namespace)
                station = client.get_node(ua.NodeId("st1", index))
                await station.call_method(ua.NodeId("st1.Trigger", index), "P-42")
                result = client.get_node(ua.NodeId("st1.LastPartId", index))
                for _ in range(100):
                    if await result.read_value() == "P-42":
                        break
                    await asyncio.sleep(0.05)
                verdict = await client.get_node(ua.NodeId("st1.LastResult", index)).read_value()
                count = await client.get_node(ua.NodeId("st1.ResultCount", index)).read_value()
                await station.call_method(ua.NodeId("st1.Acknowledge", index))
                with pytest.raises(ua.UaStatusCodeError) as refused:
                    await station.call_method(ua.NodeId("st1.SelectProduct", index), "bracket Q")
                assert refused.value.code == ua.StatusCodes.BadInvalidArgument
                return await result.read_value(), verdict, count
            finally:
                await client.disconnect()

        part_id, verdict, count = asyncio.run(scenario())
        assert asyncio.run(refusal(server, cert, None)) == ua.StatusCodes.BadIdentityTokenRejected
    finally:
        app.stop()
    assert (part_id, count) == ("P-42", 1) and verdict in ("OK", "NOK")
    (part,) = [part_from_payload(r.payload) for r in journal_records(config.journal_path, "part")]
    assert (part.part_id, part.verdict, len(part.inspections)) == ("P-42", verdict, 2)
    actions = [action_from_payload(r.payload) for r in journal_records(config.journal_path, "action")]
    assert [(a.kind, a.by) for a in actions] == [("nok_acknowledged", "opcua: olga")]

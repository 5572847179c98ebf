"""Trigger to part verdict: how long a PLC waits for OK/NOK, over MQTT and (with --opcua) over OPC UA.

A real daemon (the App, tiny random-weight model, SQLite store, evidence writer) with one station of
``--cameras`` triggered synthetic cameras, a throwaway Mosquitto (tests.services.mosquitto), and a client
that sends ``--parts`` triggers, one every ``--interval-ms``, each with its own part id:

- MQTT: publish ``<station>/trigger`` (QoS 1) -> the verdict on ``<station>/part``, measured at the client;
- OPC UA (``--opcua``): call the station's Trigger method over Basic256Sha256 SignAndEncrypt -> the
  LastPartId data change of that part at the same client.

Target (issue 19): p99 under 100 ms with the tiny model.

    python benchmarks/part_latency.py                       # 200 parts over MQTT, 2 cameras, 1 every 100 ms
    python benchmarks/part_latency.py --opcua --parts 100
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt

from linewatch.anople.backbone import TINY_MODEL, load_random_backbone
from linewatch.anople.settings import AnoPLeSettings
from linewatch.config import (
    CameraSection,
    Config,
    HttpSection,
    ModelSection,
    MqttSection,
    OpcUaSection,
    ScoringSection,
    SiteSection,
    StationSection,
)
from linewatch.daemon.app import App
from linewatch.daemon.lifecycle import apply_cpu_threads
from linewatch.images import write_image
from linewatch.model.training import ProductSource, train_artifact
from linewatch.pipeline.camera.synthetic import SyntheticProduct
from linewatch.plant.opcua_security import CERT_FILE
from linewatch.sinks.db import make_engine
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.users import add_user

PRODUCT = "bracket"
STATION = "st1"
SIDE = 240
PASSWORD = "benchmark password"


def _model(root: Path) -> Path:
    product = SyntheticProduct(style_seed=0, width=SIDE, height=SIDE)
    rng = np.random.default_rng(0)
    folder = root / "normals"
    for index in range(4):
        write_image(folder / f"{index}.png", product.normal(rng).image)
    out = root / "model"
    train_artifact([ProductSource(PRODUCT, sorted(folder.glob("*.png")))], load_random_backbone(TINY_MODEL, 0),
                   AnoPLeSettings(steps=3), out, shots=2, seed=0, target_frr=0.05, log=lambda _line: None)  # fmt: skip
    return out


def _config(root: Path, model: Path, cameras: int, broker_port: int, threads: int, opcua: bool) -> Config:
    names = [f"cam{i}" for i in range(cameras)]
    return Config(
        site=SiteSection(site="bench", line="l1", data_dir=root / "data"),
        model=ModelSection(path=model, backbone=TINY_MODEL, pretrained="none"),
        scoring=ScoringSection(batch_max_size=8, batch_max_wait_ms=0, cpu_threads=threads),
        mqtt=MqttSection(host="127.0.0.1", port=broker_port, keepalive_s=5, reconnect_min_s=0.05, reconnect_max_s=0.2),
        http=HttpSection(port=0),
        cameras=[
            CameraSection(
                name=name,
                source="synthetic",
                product=PRODUCT,
                trigger="triggered",
                width=SIDE,
                height=SIDE,
                seed=i,
                policy="queue",
            )
            for i, name in enumerate(names)
        ],
        stations=[StationSection(name=STATION, cameras=names, deadline_ms=2000)],
        opcua=OpcUaSection(enabled=opcua, port=_free_port()),
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def over_mqtt(port: int, prefix: str, parts: int, interval_s: float, app: App) -> tuple[list[float], list[float]]:
    """Seconds from each trigger's publish to its part message at one paho client, and to its part verdict
    journaled in the daemon (the listener runs right after the commit; same process, same clock)."""
    sent: dict[str, float] = {}
    journaled: dict[str, float] = {}
    app.parts.listeners.append(lambda result: journaled.setdefault(result.part_id, time.monotonic()))
    took: dict[str, float] = {}
    done = threading.Event()

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        part_id = json.loads(message.payload)["part_id"]
        if part_id in sent and part_id not in took:
            took[part_id] = time.monotonic() - sent[part_id]
            if len(took) == parts:
                done.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="part-latency", protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(f"{prefix}/{STATION}/part", qos=1)
    time.sleep(0.5)
    for n in range(parts):
        part_id = f"B-{n}"
        sent[part_id] = time.monotonic()
        client.publish(f"{prefix}/{STATION}/trigger/bench", json.dumps({"part_id": part_id}), qos=1)
        time.sleep(interval_s)
    done.wait(30)
    client.loop_stop()
    client.disconnect()
    if len(took) < parts:
        raise SystemExit(f"only {len(took)} of {parts} part verdicts arrived over MQTT")
    return list(took.values()), [journaled[part_id] - sent[part_id] for part_id in took]


def over_opcua(app: App, root: Path, parts: int, interval_s: float) -> list[float]:
    """Seconds from each Trigger call's start to the LastPartId data change naming its part, at one asyncua
    client (an operator account, its certificate trusted, Basic256Sha256 SignAndEncrypt, publishing every 10 ms)."""
    import asyncio

    from asyncua import Client, ua
    from asyncua.crypto import cert_gen
    from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import ExtendedKeyUsageOID

    server = app.opcua
    assert server is not None
    uri = "urn:linewatch:bench:client"
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, "bench", {}, [x509.UniformResourceIdentifier(uri)], [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    cert_path, key_path = root / "bench.der", root / "bench.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    server.trusted_dir.mkdir(parents=True, exist_ok=True)
    (server.trusted_dir / "bench.der").write_bytes(cert_path.read_bytes())

    async def run() -> list[float]:
        client = Client(server.endpoint, timeout=10)
        client.application_uri = uri
        await client.set_security(SecurityPolicyBasic256Sha256, str(cert_path), str(key_path),
                                  server_certificate=str(server.cert_dir / CERT_FILE))  # fmt: skip
        client.set_user("bench")
        client.set_password(PASSWORD)
        await client.connect()
        seen: dict[str, float] = {}

        class Changes:
            def datachange_notification(self, _node: object, value: object, _data: object) -> None:
                seen.setdefault(str(value), time.monotonic())

        try:
            index = await client.get_namespace_index(server.namespace)
            station = client.get_node(ua.NodeId(STATION, index))
            subscription = await client.create_subscription(10, Changes())
            await subscription.subscribe_data_change(client.get_node(ua.NodeId(f"{STATION}.LastPartId", index)))
            sent: dict[str, float] = {}
            for n in range(parts):
                part_id = f"U-{n}"
                sent[part_id] = time.monotonic()
                await station.call_method(ua.NodeId(f"{STATION}.Trigger", index), part_id)
                await asyncio.sleep(interval_s)
            for _ in range(300):
                if all(part_id in seen for part_id in sent):
                    break
                await asyncio.sleep(0.01)
            missing = [part_id for part_id in sent if part_id not in seen]
            if missing:
                raise SystemExit(f"{len(missing)} of {parts} part verdicts never reached the OPC UA client")
            return [seen[part_id] - sent[part_id] for part_id in sent]
        finally:
            await client.disconnect()

    return asyncio.run(run())


def report(channel: str, seconds: list[float]) -> None:
    ms = sorted(1000 * s for s in seconds)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(f"{channel}: {len(ms)} parts, median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, max {ms[-1]:.1f} ms "
          f"({'meets' if p99 < 100 else 'MISSES'} the 100 ms p99 target)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=int, default=200)
    parser.add_argument("--cameras", type=int, default=2)
    parser.add_argument("--interval-ms", type=float, default=100.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the scorer")
    parser.add_argument("--opcua", action="store_true", help="also trigger over OPC UA (Trigger method)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.services.mosquitto import MosquittoBroker  # the tests' throwaway broker, on a free port

    broker = MosquittoBroker()
    broker.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            config = _config(root, _model(root), args.cameras, broker.port, args.threads, args.opcua)
            apply_cpu_threads(config)
            if args.opcua:  # the client logs in as an operator
                upgrade_database(config.store_url, root / "backups")
                engine = make_engine(config.store_url)
                add_user(engine, "bench", "operator", PASSWORD, "benchmark")
                engine.dispose()
            app = App(config)
            app.start()
            try:
                to_client, to_journal = over_mqtt(
                    broker.port, config.mqtt_prefix, args.parts, args.interval_ms / 1000, app
                )
                report("trigger (MQTT) to part verdict journaled", to_journal)
                report("trigger to part verdict at the MQTT client", to_client)
                if args.opcua:
                    report("Trigger call to LastPartId at the OPC UA client",
                           over_opcua(app, root, args.parts, args.interval_ms / 1000))  # fmt: skip
            finally:
                app.stop()
    finally:
        broker.cleanup()


if __name__ == "__main__":
    main()

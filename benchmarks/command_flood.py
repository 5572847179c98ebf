"""Labels/s linewatch takes from a flood of MQTT feedback commands, and how many are lost.

A throwaway Mosquitto (tests.services.mosquitto, default queue limits unless --queue) and the daemon's own
path: MqttLink -> the command worker -> daemon.feedback.submit_many -> a durable journal (WAL,
synchronous=FULL) in a temporary folder on this disk (not tmpfs: the fsync is the cost). One publisher
sends ``--labels`` labels at QoS 1 as fast as the broker takes them, on known inspections of 4 cameras;
the run ends when every label is handled or nothing moves for 5 s.

    python benchmarks/command_flood.py                     # 5000 labels, MQTT 5 and 3.1.1
    python benchmarks/command_flood.py --labels 20000 --queue 100000 --protocol 5

Issue 15 measured about 36 labels/s on the previous design (one fsync per label on paho's thread), with the
broker silently dropping what passed its queue limit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import paho.mqtt.client as mqtt

from linewatch.clock import SystemClock
from linewatch.config import MqttSection
from linewatch.daemon.feedback import submit_many
from linewatch.feedback import FeedbackError
from linewatch.pipeline.journal.outbox import Journal
from linewatch.sinks.mqtt import LabelCommand, MqttLink, RejectedPayload
from linewatch.types import Verdict, VerdictLabel

if TYPE_CHECKING:
    from tests.services.mosquitto import MosquittoBroker

CAMERAS = ("cam1", "cam2", "cam3", "cam4")
STALL_S = 5.0
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


class JournalHandlers:
    """The App's MQTT handlers, reduced to feedback: the same submit_many on the same journal."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.clock = SystemClock()
        self.calls = 0

    def feedback(self, commands: Sequence[LabelCommand]) -> list[RejectedPayload | None]:
        self.calls += 1
        outcomes = submit_many(self.journal, self.clock, [(c.request, c.camera) for c in commands], "mqtt")
        return [RejectedPayload(o.reason, str(o)) if isinstance(o, FeedbackError) else None for o in outcomes]

    def set_enabled(self, camera: str, enabled: bool, by: str) -> None:
        raise RejectedPayload("unexpected")

    def select_product(self, camera: str, product: str, by: str) -> None:
        raise RejectedPayload("unexpected")

    def trigger(self, name: str, part_id: str | None, by: str) -> str:
        raise RejectedPayload("unexpected")

    def retrain(self, reason: str | None, by: str) -> dict[str, Any]:
        raise RejectedPayload("unexpected")


def inspection(camera: str, seq: int) -> Verdict:
    return Verdict(
        inspection_id=f"{camera}-boot-{seq}", camera=camera, product="metal plate", seq=seq,
        frame_ts=T0 + timedelta(milliseconds=seq), captured_mono=float(seq), score=0.2, threshold=0.5,
        label=VerdictLabel.NORMAL, model_version="v1",
    )  # fmt: skip


def journal_inspections(journal: Journal, per_camera: int) -> None:
    verdicts = [inspection(camera, seq) for camera in CAMERAS for seq in range(1, per_camera + 1)]
    for start in range(0, len(verdicts), 1000):
        journal.append_batch(verdicts[start : start + 1000], [])


def run_case(broker: MosquittoBroker, protocol: Literal["5", "3.1.1"], labels: int, folder: Path) -> dict[str, Any]:
    prefix = f"bench/{uuid.uuid4().hex[:8]}/line1"
    journal = Journal(folder / f"journal-{protocol}.sqlite3", SystemClock())
    journal.register_forwarder("bench")
    journal_inspections(journal, labels // len(CAMERAS) + 1)
    handlers = JournalHandlers(journal)
    section = MqttSection(host=broker.host, port=broker.port, protocol=protocol, reconnect_max_s=1.0)
    link = MqttLink(section, prefix, f"bench-{uuid.uuid4().hex[:8]}", handlers)
    link.start()
    if not link.wait_connected(10):
        raise RuntimeError("linewatch's link did not connect")
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{uuid.uuid4().hex[:8]}")
    publisher.max_inflight_messages_set(1000)
    publisher.max_queued_messages_set(0)  # unlimited: paho queues what is not in flight yet
    publisher.connect(broker.host, broker.port)
    publisher.loop_start()
    start = time.monotonic()
    infos = []
    for n in range(labels):
        camera, seq = CAMERAS[n % len(CAMERAS)], n // len(CAMERAS) + 1
        document = {"inspection_id": f"{camera}-boot-{seq}", "label": "normal", "user": "flood"}
        infos.append(publisher.publish(f"{prefix}/{camera}/feedback/set", json.dumps(document), qos=1))
    for info in infos:
        info.wait_for_publish(60)
    published_s = time.monotonic() - start
    last, last_change = -1, time.monotonic()
    while link.stats.received < labels and time.monotonic() - last_change < STALL_S:
        if link.stats.received != last:
            last, last_change = link.stats.received, time.monotonic()
        time.sleep(0.02)
    handled_s = (last_change if link.stats.received < labels else time.monotonic()) - start
    publisher.disconnect()
    publisher.loop_stop()
    link.stop()
    journaled = len(journal.read_after("bench", 10 * labels, kinds={"label"}))
    journal.close()
    return {
        "protocol": protocol,
        "published": labels,
        "handled": link.stats.received,
        "journaled": journaled,
        "lost": labels - link.stats.received,
        "publish_s": round(published_s, 2),
        "handle_s": round(handled_s, 2),
        "labels_per_s": round(link.stats.received / handled_s, 1),
        "mean_burst": round(link.stats.received / max(handlers.calls, 1), 1),
        "rejected": {f"{kind}/{reason}": count for (kind, reason), count in link.stats.rejected.items()},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=5000)
    parser.add_argument("--protocol", choices=["5", "3.1.1"], action="append")
    parser.add_argument("--queue", type=int, help="the broker's max_queued_messages (Mosquitto's default: 1000)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.services.mosquitto import MosquittoBroker

    extra = [] if args.queue is None else [f"max_queued_messages {args.queue}"]
    broker = MosquittoBroker(extra_config=extra)
    folder = Path(tempfile.mkdtemp(prefix="linewatch-flood-", dir=Path.cwd()))
    try:
        broker.start()
        for protocol in args.protocol or ["5", "3.1.1"]:
            print(json.dumps(run_case(broker, protocol, args.labels, folder)), flush=True)
    finally:
        broker.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

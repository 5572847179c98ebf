"""docs/mqtt.md's topic table is generated from the registry the daemon uses, and the registry's field lists are
what the payload builders really send."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from linewatch.sinks.mqtt_payloads import (
    EVENT_FIELDS,
    PART_FIELDS,
    PLACEHOLDER,
    TOPIC_SPECS,
    VERDICT_FIELDS,
    Topics,
    event_message,
    part_message,
    verdict_message,
)
from linewatch.sinks.mqtt_reference import BEGIN, END, topic_table, with_current_table
from linewatch.types import EventType, PartResult, VerdictLabel
from tests.sinks.test_mqtt_forwarder import event, verdict

DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"


def test_the_committed_topic_table_is_current() -> None:
    text = DOC.read_text()
    assert with_current_table(text) == text, "run: python -m linewatch.sinks.mqtt_reference --write docs/mqtt.md"


def test_every_topic_has_a_row_and_the_rows_parse_as_one_table() -> None:
    block = topic_table()
    rows = [line for line in block.splitlines() if line.startswith("| `P/")]
    assert len(rows) == len(TOPIC_SPECS)
    assert all(row.replace("\\|", "").count("|") == 6 for row in rows)  # five cells: no bare | inside one


def test_the_payload_builders_send_exactly_the_documented_keys() -> None:
    message = event_message(event("cam1", 1, 1, EventType.NEW, 3), "plant", "line-1")
    assert tuple(message) == EVENT_FIELDS
    assert tuple(verdict_message(verdict("cam1", 3, VerdictLabel.DEFECT), "plant", "line-1")) == VERDICT_FIELDS
    part = PartResult("st1", "P-1", "NOK", 1.2, "defect on cam1", datetime(2026, 12, 4, tzinfo=UTC), "v1", "b", ("i",))
    assert tuple(part_message(part, "plant", "line-1")) == PART_FIELDS


def test_the_daemons_topic_names_and_subscriptions_are_the_registry() -> None:
    topics = Topics("linewatch/plant/line-1")
    named = {
        topics.available, topics.model_state, topics.retrain_state, topics.stats,
        topics.status("cam1"), topics.defect("cam1"), topics.verdict("cam1"), topics.enabled("cam1"),
        topics.product("cam1"), topics.part("cam1"),
        *(subscription.replace("+", "cam1").removesuffix("/#") for subscription in topics.subscriptions),
    }  # fmt: skip
    assert named == {f"{topics.prefix}/{PLACEHOLDER.sub('cam1', spec.suffix)}" for spec in TOPIC_SPECS}
    assert set(topics.subscriptions) == {
        f"{topics.prefix}/+/feedback/set/#",
        f"{topics.prefix}/+/enabled/set/#",
        f"{topics.prefix}/+/product/set/#",
        f"{topics.prefix}/+/trigger/#",
        f"{topics.prefix}/retrain/set/#",
    }


def test_a_document_without_its_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="markers"):
        with_current_table("# MQTT\n")
    assert with_current_table(f"head\n{BEGIN}\nold\n{END}\ntail\n") == f"head\n{topic_table()}tail\n"

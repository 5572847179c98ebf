"""What the operator-page tests share: probe rows in a running daemon's store and readers of its pages."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import insert, select

from linewatch.sinks.db import scope_of
from linewatch.sinks.db_schema import DefectEvent, Inspection, LabelRecord, RetrainRun
from linewatch.web.site import CSP
from tests.store_rows import inspection_row
from tests.web.daemon import (  # noqa: F401  (fixtures)
    CAMERA,
    PRODUCT,
    TOKEN,
    Reply,
    WebClient,
    WebDaemon,
    daemon_model,
    token_daemon,
    web_daemon,
)

JPEG_MAGIC = b"\xff\xd8\xff"
HTML = "text/html; charset=utf-8"
PAYLOAD = "\"'><script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
RAW = "<script>alert(1)"
_ITEM = re.compile(r'<article class="review-item[^"]*" id="[^"]+" data-target="(\w+)" data-id="([^"]+)"([^>]*)>')
_EVIDENCE_LINK = re.compile(r'(?:src|href)="(/evidence/[^"]+)"')
_OLDER = re.compile(r'<a href="([^"]+)" rel="next">older</a>')
_NEWEST = re.compile(r'<a href="([^"]+)">newest</a>')


# ---- helpers ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueItem:
    target: str
    target_id: str
    label: str | None


def queue(page: Reply) -> list[QueueItem]:
    """The review items of a page, in page order."""
    assert page.status == 200, (page.status, page.text[:300])
    found = []
    for match in _ITEM.finditer(page.text):
        label = re.search(r'data-label="(\w+)"', match.group(3))
        found.append(QueueItem(match.group(1), match.group(2), label.group(1) if label else None))
    return found


def real_event(daemon: WebDaemon, client: WebClient) -> str:
    """An unlabelled defect episode the daemon recorded (in the journal and the store) that the review page
    shows now."""
    found: list[str] = []

    def shown() -> bool:
        stored = set(daemon.wait_for_events())
        items = queue(client.get("/review"))
        found[:] = [item.target_id for item in items if item.target == "event" and item.target_id in stored]
        return bool(found)

    daemon.wait_until(shown)
    return found[0]


def stored_event(daemon: WebDaemon, event_id: str) -> Any:
    (row,) = daemon.rows(select(DefectEvent).where(DefectEvent.event_id == event_id))
    return row


def stored_labels(daemon: WebDaemon, target_id: str) -> list[Any]:
    return daemon.rows(select(LabelRecord).where(LabelRecord.target_id == target_id))


def operator(daemon: WebDaemon, name: str) -> WebClient:
    """A client logged in (by name; with the token when the daemon has one)."""
    client = daemon.client()
    client.login(name, daemon.token)
    return client


def label_fields(client: WebClient, target: str, target_id: str, label: str, csrf: str | None = None) -> dict[str, str]:
    fields = {"target": target, "target_id": target_id, "label": label}
    fields["csrf"] = client.csrf() if csrf is None else csrf
    return fields


def assert_html_page(reply: Reply, status: int = 200) -> str:
    assert reply.status == status, (reply.status, reply.text[:500])
    assert reply.header("content-type") == HTML
    assert reply.header("content-security-policy") == CSP
    return reply.text


def probe_row(inspection_id: str, frame_ts: datetime, **values: Any) -> dict[str, Any]:
    """An ``inspections`` row on the probe camera and product (no live frame has them), overridable."""
    fields: dict[str, Any] = {
        "camera": "probe",
        "product": "probe",
        "seq": 1,
        "score": 0.5,
        "threshold": 0.6,
        "model_version": "probe@0",
        "snapshot": None,
    }
    return inspection_row(inspection_id, frame_ts, **{**fields, **values})


def evidence_ids(page: str, prefix: str) -> list[str]:
    """Inspection ids of the probe rows on a history page, in page order (their evidence links name them)."""
    ids = []
    for link in _EVIDENCE_LINK.findall(page):
        name = link.rsplit("/", 1)[1]
        if name.startswith(prefix) and not name.endswith("-heatmap.jpg"):
            ids.append(name.rsplit("-", 1)[0])
    return ids


def unescape_href(href: str) -> str:
    return href.replace("&amp;", "&")


# ---- probe rows in the store -----------------------------------------------------------------------------
FILTER_DAY = datetime(2020, 1, 1, tzinfo=UTC)
PAGE_DAY = datetime(2021, 1, 1, tzinfo=UTC)
HOSTILE_DAY = datetime(2022, 1, 1, tzinfo=UTC)
PAGE_ROWS = 230  # 3 pages of 100; 3 rows share each timestamp, so page boundaries split a tie
ID_FORMAT = "page-{:04d}"


@dataclass(frozen=True)
class FilterRow:
    inspection_id: str
    camera: str
    verdict: str
    label: str | None
    frame_ts: datetime


FILTER_ROWS = [
    FilterRow(f"filt-{index}", camera, verdict, label, FILTER_DAY + timedelta(minutes=index))
    for index, (camera, verdict, label) in enumerate(
        [
            ("pa", "normal", None),
            ("pa", "normal", "normal"),
            ("pa", "defect", "defect"),
            ("pa", "defect", "normal"),
            ("pb", "normal", None),
            ("pb", "defect", None),
            ("pb", "defect", "defect"),
            ("pb", "normal", "normal"),
        ]
    )
]


@pytest.fixture(scope="module")
def probe_rows(web_daemon: WebDaemon) -> None:  # noqa: F811
    """History rows of the past (2020 for the filters, 2021 to page through) and rows with hostile text, on the
    daemon's own line (its ``[site]``, not the store rows' default): its page reads no other line's rows."""
    line = scope_of(web_daemon.engine).columns()
    filter_rows = [
        probe_row(
            row.inspection_id,
            row.frame_ts,
            camera=row.camera,
            product="probe-filter",
            verdict=row.verdict,
            label=row.label,
            label_source="cli" if row.label else None,
            label_user="probe" if row.label else None,
            labelled_at=row.frame_ts if row.label else None,
            snapshot=f"{row.camera}/2020-01-01/{row.inspection_id}-{row.verdict}.jpg",
            **line,
        )
        for row in FILTER_ROWS
    ]
    page_rows = [
        probe_row(
            ID_FORMAT.format(index),
            PAGE_DAY + timedelta(seconds=index // 3),
            product="probe-page",
            snapshot=f"probe/2021-01-01/{ID_FORMAT.format(index)}-normal.jpg",
            **line,
        )
        for index in range(PAGE_ROWS)
    ]
    now = datetime.now(UTC)
    hostile_inspection = probe_row(
        "xss-inspection",
        HOSTILE_DAY,
        product=PAYLOAD,
        part_id=PAYLOAD,
        model_version=PAYLOAD,
        label="normal",
        label_source="web",
        label_user=PAYLOAD,
        labelled_at=now,
        snapshot="probe/2022-01-01/xss-inspection-normal.jpg",
        **line,
    )
    neighbour = probe_row("xss-neighbour", HOSTILE_DAY + timedelta(minutes=1), **line)  # a second product: a legend
    hostile_event = {
        **line,
        "event_id": "xss-event",
        "camera": "probe",
        "product": PAYLOAD,
        "started_at": now - timedelta(minutes=5),
        "last_at": now - timedelta(minutes=4),
        "ended_at": now - timedelta(minutes=4),
        "last_type": "end",
        "last_seq": 2,
        "peak_score": 0.9,
        "threshold": 0.5,
        "model_version": PAYLOAD,
        "first_inspection_id": "xss-inspection",
        "last_inspection_id": "xss-inspection",
        "snapshot": None,
        "heatmap": None,
    }
    hostile_run = {
        **line,
        "trigger": PAYLOAD,
        "started_at": now - timedelta(hours=1),
        "finished_at": now - timedelta(hours=1),
        "status": "skipped",
        "reason": PAYLOAD,
        "candidate_version": PAYLOAD,
    }
    with web_daemon.engine.begin() as connection:
        connection.execute(insert(Inspection), [*filter_rows, *page_rows, hostile_inspection, neighbour])
        connection.execute(insert(DefectEvent), [hostile_event])
        connection.execute(insert(RetrainRun), [hostile_run])


def history(client: WebClient, **params: str) -> Reply:
    return client.get("/history?" + urlencode(params))

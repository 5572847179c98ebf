"""The review desk: pages through the whole queue with its size, and hides what was judged on the page
until the store has the label."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from linewatch.web.review import PAGE_ITEMS, ReviewDesk, cursor_text, parse_cursor
from tests.web.test_queries import HOUR, add_inspections, at, engine  # noqa: F401


def test_pages_cover_the_queue_once_with_its_size_and_positions(engine: Engine) -> None:  # noqa: F811
    count = PAGE_ITEMS + 12
    add_inspections(engine, [{"id": f"i-{n:03d}", "frame_ts": at(-n / 10), "score": 0.5} for n in range(count)])
    desk = ReviewDesk(engine, HOUR, 0.1)
    first = desk.page(at(0), None, 0)
    assert (len(first.items), first.waiting, first.first) == (PAGE_ITEMS, count, 1)
    assert first.older is not None
    second = desk.page(at(0), parse_cursor(first.older), PAGE_ITEMS)
    assert (len(second.items), second.waiting, second.first, second.older) == (12, count, PAGE_ITEMS + 1, None)
    shown = [item.target_id for item in first.items + second.items]
    assert shown == [f"i-{n:03d}" for n in range(count)]  # newest first, each once

    desk.judged("inspection", "i-000", "normal")  # the store does not have the label yet
    again = desk.page(at(0), None, 0)
    assert again.items[0].target_id == "i-001" and len(again.items) == PAGE_ITEMS


def test_a_cursor_round_trips_and_bad_ones_are_named(engine: Engine) -> None:  # noqa: F811
    add_inspections(engine, [{"id": "i-1", "frame_ts": at(-1), "score": 0.5}])
    item = ReviewDesk(engine, HOUR, 0.1).page(at(0), None, 0).items[0]
    assert parse_cursor(cursor_text(item)) == (item.ts, "i-1")
    for text, message in [("2026-03-02T08:00:00+00:00", "<time>|<id>"), ("yesterday|i-1", "not an ISO time"),
                          ("2026-03-02T08:00:00|i-1", "UTC offset")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_cursor(text)
    assert at(0) - item.ts == timedelta(minutes=1)

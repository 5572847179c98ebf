"""The review queue as the page shows it: pages of items, the whole queue's size, and what was judged here.

The queue lived as one list capped at 50 items: with 136 waiting in the store, the page showed 50 and did not
say so. Now it shows how many wait in all and pages through them (keyset pages on the queue's own order,
``?after=<time>|<id>``, so a label given meanwhile does not shift what the next page shows).

Labels given on this page are remembered (the newest ``JUDGED_REMEMBERED``) and their items hidden until the
store holds them: during a store outage the label is journaled at once but reaches the store later, and
the queue must not ask the same question again meanwhile.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine

from linewatch.web import queries
from linewatch.web.rows import ReviewItem

PAGE_ITEMS = 50
JUDGED_REMEMBERED = 500


@dataclass(frozen=True)
class ReviewPage:
    items: list[ReviewItem]
    waiting: int  # unjudged items in the store's whole queue (this page's included)
    first: int  # the position of this page's first item in the queue (1-based); 0 when empty
    older: str | None  # the ``after`` value of the next page; None on the last one


def cursor_text(item: ReviewItem) -> str:
    return f"{item.ts.isoformat()}|{item.target_id}"


def parse_cursor(text: str) -> queries.ReviewCursor:
    """The ``after`` parameter back into a cursor; ValueError naming what is wrong."""
    stamp, separator, target_id = text.partition("|")
    if not separator or not target_id:
        raise ValueError("after must be <time>|<id>, as the page's 'older' link gives it")
    try:
        ts = datetime.fromisoformat(stamp)
    except ValueError:
        raise ValueError(f"after: {stamp[:40]!r} is not an ISO time") from None
    if ts.tzinfo is None:
        raise ValueError("after: the time needs its UTC offset")
    return ts, target_id


class ReviewDesk:
    """Reads pages of the queue for the page; remembers labels given here until the store has them."""

    def __init__(self, engine: Engine, window: timedelta, band: float) -> None:
        self._engine = engine
        self._window = window
        self._band = band
        self._judged: OrderedDict[tuple[str, str], str] = OrderedDict()  # (target, id) -> label, oldest first
        self._lock = threading.Lock()

    def page(self, now: datetime, after: queries.ReviewCursor | None, position: int) -> ReviewPage:
        """``position``: how many items came before (the page's own ``first`` is one more)."""
        with self._lock:
            judged = set(self._judged)
        found, waiting = queries.review_page(
            self._engine, now, self._window, self._band, limit=PAGE_ITEMS + 1 + len(judged), after=after
        )
        items = [item for item in found if (item.target, item.target_id) not in judged]
        more = len(items) > PAGE_ITEMS
        items = items[:PAGE_ITEMS]
        older = cursor_text(items[-1]) if more else None
        return ReviewPage(items, waiting, position + 1 if items else 0, older)

    def judged(self, target: str, target_id: str, label: str) -> None:
        with self._lock:
            self._judged[(target, target_id)] = label
            while len(self._judged) > JUDGED_REMEMBERED:
                self._judged.popitem(last=False)

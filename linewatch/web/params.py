"""Reading the page's query and form parameters: every refusal is a :class:`BadInput` naming the parameter,
which the page answers with 400 and that message."""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo

from starlette.datastructures import FormData

from linewatch.feedback import ID_PATTERN, MAX_ID_LENGTH

VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,200}$")  # a version folder name or NAME@HASH


class BadInput(ValueError):
    """A request parameter that cannot be used; the message names it."""


def field(form: FormData, key: str) -> str | None:
    value = form.get(key)
    return value if isinstance(value, str) else None


def choice(form: FormData, key: str, allowed: tuple[str, ...]) -> str:
    value = field(form, key)
    if value not in allowed:
        raise BadInput(f"{key} must be one of {', '.join(allowed)}")
    return value


def identifier(form: FormData, key: str, pattern: re.Pattern[str] = ID_PATTERN) -> str:
    """An id as feedback accepts it (or a version name with ``pattern``)."""
    value = field(form, key)
    if value is None or len(value) > MAX_ID_LENGTH or not pattern.match(value):
        raise BadInput(f"{key} is missing or not an id")
    return value


def optional_id(value: str | None, key: str) -> str | None:
    if not value:
        return None
    if len(value) > MAX_ID_LENGTH or not ID_PATTERN.match(value):
        raise BadInput(f"{key} is not a name")
    return value


def optional_text(value: str | None, key: str) -> str | None:
    if not value or not value.strip():
        return None
    if len(value) > 200 or not value.isprintable():
        raise BadInput(f"{key} must be at most 200 printable characters")
    return value.strip()


def optional_choice(value: str | None, key: str, allowed: tuple[str, ...]) -> str | None:
    if not value:
        return None
    if value not in allowed:
        raise BadInput(f"{key} must be one of {', '.join(allowed)}")
    return value


def local_datetime(value: str | None, key: str, tz: tzinfo) -> datetime | None:
    """A time from a datetime-local input, read in the page's time zone (an explicit offset wins)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"{key} is not a date and time (YYYY-MM-DDTHH:MM)") from None
    return storable(parsed.replace(tzinfo=tz) if parsed.tzinfo is None else parsed, key)


def storable(value: datetime, key: str) -> datetime:
    """The time in UTC, as the store keeps it; a time beyond year 1..9999 there is the caller's mistake."""
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise BadInput(f"{key} is out of range") from None


def cursor(value: str | None) -> tuple[datetime, str] | None:
    if not value:
        return None
    stamp, _, inspection_id = value.partition("|")
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        raise BadInput("before is not a history position") from None
    if at.tzinfo is None or len(inspection_id) > MAX_ID_LENGTH or not ID_PATTERN.match(inspection_id):
        raise BadInput("before is not a history position")
    return storable(at, "before"), inspection_id

"""Checks the configuration's fields share: finite numbers, crontab expressions, time zones, addresses. Apart
from linewatch/config.py (the tree of sections) so that file stays a readable list of settings."""

from __future__ import annotations

import ipaddress
import math
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from linewatch.cron import cron_trigger


def require_number(value: object) -> object:
    """Numbers only, and finite: TOML allows inf and nan, and no setting means anything at either (an
    infinite retention overflows date arithmetic, an infinite session never ends)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number_type", "Input should be a number, not {kind}", {"kind": type(value).__name__})
    if not math.isfinite(value):
        raise PydanticCustomError("finite_number", "Input should be a finite number, not {value}", {"value": value})
    return value


Number = Annotated[float, BeforeValidator(require_number)]


def check_cron(expression: str) -> str:
    """Validate a five-field crontab expression now, so a typo stops the start (exit 78), not the first run."""
    if not expression.strip():
        return ""  # no schedule: retraining runs only when asked for
    try:
        trigger = cron_trigger(expression, "UTC")
    except ValueError as error:
        raise PydanticCustomError(
            "cron", "not a crontab expression (minute hour day month weekday): {problem}", {"problem": str(error)}
        ) from None
    if trigger.get_next_fire_time(None, datetime.now(UTC)) is None:  # e.g. "0 0 31 2 *": no 31 February
        raise PydanticCustomError("cron", "'{expression}' never fires (no such date)", {"expression": expression})
    return expression


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError(
            "timezone", "unknown time zone '{name}'; use an IANA name like Europe/Berlin or UTC", {"name": name}
        ) from None
    return name


def check_public_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"public_url must be an http(s) address without query, got {value!r}")
    return value if value.endswith("/") else value + "/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

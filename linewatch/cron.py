"""Crontab expressions as crontab reads them, for APScheduler 3 (the retraining schedule).

Kept apart from :mod:`linewatch.config`, which validates ``[retrain] schedule`` with it, because the day-of-week
translation is a piece of its own with its own tests.
"""

from __future__ import annotations

from apscheduler.triggers.cron import CronTrigger

_CRON_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # crontab numbering: 0 (and 7) is Sunday


def _cron_days(field: str) -> set[int]:
    """The days (0 = Sunday) a crontab day-of-week field names: lists, ranges, steps, names, 7 for Sunday."""
    days: set[int] = set()
    for part in field.lower().split(","):
        span, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"day-of-week step must be at least 1 in {field!r}")
        if span == "*":
            low, high = 0, 6
        else:
            ends = [_CRON_DAYS.index(end[:3]) if end[:3] in _CRON_DAYS else int(end) for end in span.split("-")]
            if len(ends) > 2 or any(not 0 <= end <= 7 for end in ends):
                raise ValueError(f"day of week must be 0-7 or sun..sat, got {span!r}")
            low, high = ends[0], ends[-1]
            if step_text and len(ends) == 1:
                high = 6  # "1/2": from Monday every second day
        if low > high:
            raise ValueError(f"day-of-week range {span!r} runs backwards")
        days.update(day % 7 for day in range(low, high + 1, step))
    return days


def cron_trigger(expression: str, timezone: str | None) -> CronTrigger:
    """A CronTrigger that reads the day of week as crontab does. APScheduler 3 counts weekdays from
    Monday (0 = Monday), so its own ``from_crontab`` would run "1-5" Tuesday to Saturday; the days are
    named here instead. Raises ValueError naming what is wrong."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
    minute, hour, day, month, weekday = fields
    try:
        days = _cron_days(weekday)
    except ValueError as problem:
        raise ValueError(str(problem)) from None
    names = "*" if len(days) == 7 else ",".join(_CRON_DAYS[d] for d in sorted(days))
    return CronTrigger(minute=minute, hour=hour, day=day, month=month, day_of_week=names, timezone=timezone)

"""The history page's score-over-time plot: inline SVG drawn here, on the server.

The page runs under a strict Content-Security-Policy (scripts only from the daemon's files, ``style-src
'self'``), so the SVG holds no script, no ``style`` attribute and no <style> element. It draws with
presentation attributes, which make it readable unstyled, plus class names that the page's stylesheet can
override (a stylesheet rule beats a presentation attribute):

- ``score-plot``: the <svg>; it has a viewBox and no pixel size, so it scales to its container's width.
- ``grid``, ``axis``: gridlines and the two axis lines; ``ticks-x``, ``ticks-y``: groups of tick labels; ``tz``:
  the time-zone caption under the time axis.
- ``pt-normal``, ``pt-defect``: groups of points by the scorer's verdict (``rolled`` added to the groups of
  hollow squares: minutes some of whose rows store retention deleted, at their highest score); ``lbl-normal``,
  ``lbl-defect`` added to the groups of operator-labelled points, drawn bigger with a ring so that, for
  instance, a false alarm that an operator confirmed normal (``pt-defect lbl-normal``) stands out.
- ``thr`` plus ``thr-0`` .. ``thr-5``: one threshold step line per product (in the group ``thresholds``), colours
  cycling; ``legend``: the legend naming each product's line, drawn only when more than one product is plotted.
- ``empty``: the text of the plot for no points.

Nothing depends on the clock, the locale or dict order, so the same points give byte-identical markup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Literal

from markupsafe import Markup, escape

from linewatch.web.rows import ScorePoint

_VERDICTS = ("normal", "defect")
# Draw order, bottom to top: the many normals first so that defects and labelled points are never hidden by them.
_POINT_GROUPS: tuple[tuple[str, str | None], ...] = (
    ("normal", None),
    ("defect", None),
    ("normal", "normal"),
    ("defect", "normal"),
    ("normal", "defect"),
    ("defect", "defect"),
)
_POINT_FILL = {"normal": "#4878a8", "defect": "#d32f2f"}
_LABEL_RING = {"normal": "#2e7d32", "defect": "#000000"}
_THRESHOLD_COLOURS = ("#e08a00", "#7b3fb5", "#00897b", "#795548", "#c2185b", "#546e7a")

_FONT_PX = 11
_CHAR_PX = 6.2  # width of an average 11 px sans-serif character: a layout estimate, the browser has the last word
_EDGE_PAD = 6.0  # keeps the first and last points off the axis lines
_LEGEND_ROW = 16
_LEGEND_NAME_CHARS = 40  # product names are user text; a long one is cut here rather than run off the plot
_MAX_X_TICKS = 8
_MIN_SPAN = timedelta(minutes=1)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SVG_OPEN = '<svg xmlns="http://www.w3.org/2000/svg" class="score-plot" role="img" font-family="sans-serif"'


def score_plot(points: Sequence[ScorePoint], tz: tzinfo, width: int = 960, height: int = 260) -> Markup:
    """The points as an inline SVG plot: score over time, each product's threshold as a step line.

    ``tz`` is the time zone of the time axis labels. ``width`` and ``height`` set the viewBox (the SVG scales to
    its container); a legend, when there is one, adds rows above ``height``. Points may come in any order.
    Raises ValueError on a naive timestamp, a non-finite score or threshold, or an unknown verdict or label:
    those are bugs upstream, and a plot drawn from them would mislead.
    """
    if width < 240 or height < 120:
        raise ValueError(f"the plot needs at least 240x120, got {width}x{height}")
    if not points:
        return Markup(
            f'{_SVG_OPEN} viewBox="0 0 {width} 40" aria-label="Score over time: no inspections match">'
            f'<text class="empty" x="{width / 2:g}" y="24" text-anchor="middle" font-size="{_FONT_PX + 2}"'
            ' fill="#555555">no inspections match</text></svg>'
        )
    for point in points:
        _check(point)
    ordered = sorted(points, key=lambda p: p.ts)  # stable: ties keep the caller's order, so output is deterministic
    products = list(dict.fromkeys(p.product for p in ordered))  # in order of first appearance
    legend, legend_height = _legend(products, width) if len(products) > 1 else ([], 0)

    y_axis = _y_axis(ordered)
    left = 10.0 + max(len(label) for _, label in y_axis.ticks) * _CHAR_PX
    frame = _Frame(left=left, top=legend_height + 10.0, right=width - 14.0, bottom=legend_height + height - 36.0)
    t0, t1 = _time_range(ordered)
    x = _x_scale(t0, t1, frame)
    y = _y_scale(y_axis.low, y_axis.high, frame)
    x_ticks = _x_ticks(t0, t1, tz, frame.right - frame.left)

    parts = [
        f'{_SVG_OPEN} viewBox="0 0 {width} {height + legend_height}" font-size="{_FONT_PX}"'
        f' aria-label="{escape(_summary(ordered, tz))}">',
        _grid(frame, [x(t) for t, _ in x_ticks], [y(v) for v, _ in y_axis.ticks]),
        *(group for verdict in _VERDICTS for group in _rolled_group(ordered, verdict, x, y)),
        *_point_group(ordered, _POINT_GROUPS[0], x, y),
        _threshold_lines(ordered, products, x, y),
        *(group for key in _POINT_GROUPS[1:] for group in _point_group(ordered, key, x, y)),
        *legend,
        _y_labels(frame, y_axis.ticks, y),
        _x_labels(frame, x_ticks, x, width),
        f'<text class="tz" x="{_n(frame.right)}" y="{_n(frame.bottom + 32)}" text-anchor="end" fill="#555555">'
        f"time ({escape(_tz_name(tz, t0))})</text>",
        "</svg>",
    ]
    return Markup("\n".join(part for part in parts if part))


@dataclass(frozen=True)
class _Frame:
    """The plot area inside the margins, in viewBox units."""

    left: float
    top: float
    right: float
    bottom: float


@dataclass(frozen=True)
class _YAxis:
    low: float
    high: float
    ticks: list[tuple[float, str]]  # value and its label


@dataclass(frozen=True)
class _TickStep:
    """One candidate spacing of time ticks.

    Seconds step in absolute time (a sub-hour step stays on round local times across a DST change, every offset
    being a multiple of 15 minutes); hours, days and months step on the local wall clock, so daily ticks stay at
    local midnight across DST.
    """

    unit: Literal["second", "hour", "day", "month"]
    count: int

    @property
    def approx_seconds(self) -> float:
        return self.count * {"second": 1, "hour": 3600, "day": 86400, "month": 30.44 * 86400}[self.unit]


# Consecutive steps differ by at most about 2x: the smallest step giving at most 8 ticks then gives at least 4.
_TICK_STEPS = (
    *(_TickStep("second", n) for n in (1, 2, 3, 5, 10, 15, 30, 60, 120, 180, 300, 600, 900, 1800)),
    *(_TickStep("hour", n) for n in (1, 2, 3, 6, 12)),
    *(_TickStep("day", n) for n in (1, 2, 4, 7, 14, 21)),
    *(_TickStep("month", n) for n in (1, 2, 3, 6, 12, 24, 36, 60, 120, 240, 360, 600, 1200)),
)


def _check(point: ScorePoint) -> None:
    if point.ts.tzinfo is None or point.ts.utcoffset() is None:
        raise ValueError(f"plot points need timezone-aware times, got {point.ts!r}")
    if not (math.isfinite(point.score) and math.isfinite(point.threshold)):
        raise ValueError(f"plot points need finite scores and thresholds, got {point.score!r}, {point.threshold!r}")
    if point.verdict not in _VERDICTS:
        raise ValueError(f"unknown verdict {point.verdict!r}; expected one of {_VERDICTS}")
    if point.label is not None and point.label not in _VERDICTS:
        raise ValueError(f"unknown label {point.label!r}; expected None or one of {_VERDICTS}")


def _n(value: float) -> str:
    """A coordinate rounded to 0.1, without a trailing ``.0``: a few thousand points stay small."""
    text = f"{value:.1f}".removesuffix(".0")
    return "0" if text == "-0" else text


def _time_range(ordered: Sequence[ScorePoint]) -> tuple[datetime, datetime]:
    """First to last point, in UTC, widened to at least a minute around their middle.

    One instant, or a few frames a fraction of a second apart, then sit mid-plot under readable whole-second ticks.
    """
    t0, t1 = ordered[0].ts.astimezone(UTC), ordered[-1].ts.astimezone(UTC)
    if t1 - t0 < _MIN_SPAN:
        middle = t0 + (t1 - t0) / 2
        return middle - _MIN_SPAN / 2, middle + _MIN_SPAN / 2
    return t0, t1


def _x_scale(t0: datetime, t1: datetime, frame: _Frame) -> Callable[[datetime], float]:
    span = (t1 - t0).total_seconds()
    usable = frame.right - frame.left - 2 * _EDGE_PAD
    return lambda t: frame.left + _EDGE_PAD + (t - t0).total_seconds() / span * usable


def _y_scale(low: float, high: float, frame: _Frame) -> Callable[[float], float]:
    return lambda v: frame.top + (high - v) / (high - low) * (frame.bottom - frame.top)


def _y_axis(ordered: Sequence[ScorePoint]) -> _YAxis:
    """From 0 (or the lowest value, when negative) to 5% above the highest score or threshold, with round ticks."""
    values = [v for p in ordered for v in (p.score, p.threshold)]
    low = min(0.0, *values)
    high = max(0.0, *values) * 1.05
    if high <= low:  # everything is exactly 0
        high = low + 1.0
    raw = (high - low) / 4
    magnitude = 10.0 ** math.floor(math.log10(raw))
    mantissa = next(m for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw * (1 - 1e-9))
    step = mantissa * magnitude
    decimals = max(0, -math.floor(math.log10(step) + 1e-9) + (1 if mantissa == 2.5 else 0))
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    return _YAxis(low, high, [(k * step, f"{k * step + 0.0:.{decimals}f}") for k in range(first, last + 1)])


def _grid(frame: _Frame, xs: list[float], ys: list[float]) -> str:
    grid = "".join(f"M{_n(frame.left)} {_n(v)}H{_n(frame.right)}" for v in ys)
    grid += "".join(f"M{_n(v)} {_n(frame.top)}V{_n(frame.bottom)}" for v in xs)
    axes = f"M{_n(frame.left)} {_n(frame.top)}V{_n(frame.bottom)}H{_n(frame.right)}"
    return (
        f'<path class="grid" fill="none" stroke="#e3e3e3" d="{grid}"/>\n'
        f'<path class="axis" fill="none" stroke="#888888" d="{axes}"/>'
    )


def _point_group(
    ordered: Sequence[ScorePoint],
    key: tuple[str, str | None],
    x: Callable[[datetime], float],
    y: Callable[[float], float],
) -> list[str]:
    """The points with this verdict and label as one <g>: class and colours once per group, not per circle."""
    verdict, label = key
    members = [p for p in ordered if p.verdict == verdict and p.label == label and not p.rolled]
    if not members:
        return []
    if label is None:
        opacity = ' fill-opacity="0.75"' if verdict == "normal" else ""
        head = f'<g class="pt-{verdict}" fill="{_POINT_FILL[verdict]}"{opacity}>'
        radius = "2"
    else:
        head = (
            f'<g class="pt-{verdict} lbl-{label}" fill="{_POINT_FILL[verdict]}"'
            f' stroke="{_LABEL_RING[label]}" stroke-width="1.5">'
        )
        radius = "3.5"
    circles = "".join(f'<circle cx="{_n(x(p.ts))}" cy="{_n(y(p.score))}" r="{radius}"/>' for p in members)
    return [f"{head}{circles}</g>"]


def _rolled_group(
    ordered: Sequence[ScorePoint], verdict: str, x: Callable[[datetime], float], y: Callable[[float], float]
) -> list[str]:
    """Rolled-up minutes of this verdict as hollow squares under the frames: a minute's highest score, its
    frames gone (store retention)."""
    members = [p for p in ordered if p.rolled and p.verdict == verdict]
    if not members:
        return []
    head = f'<g class="pt-{verdict} rolled" fill="none" stroke="{_POINT_FILL[verdict]}" stroke-width="1">'
    squares = "".join(
        f'<rect x="{_n(x(p.ts) - 2.5)}" y="{_n(y(p.score) - 2.5)}" width="5" height="5"/>' for p in members
    )
    return [f"{head}{squares}</g>"]


def _threshold_class(index: int) -> str:
    return f"thr thr-{index % len(_THRESHOLD_COLOURS)}"


def _threshold_lines(
    ordered: Sequence[ScorePoint],
    products: list[str],
    x: Callable[[datetime], float],
    y: Callable[[float], float],
) -> str:
    """One step line per product, over that product's own time span, stepping at the first point with a new value.

    A product seen at a single instant gets a short stub around it, so its threshold stays visible.
    """
    lines = []
    for index, product in enumerate(products):
        own = [p for p in ordered if p.product == product]
        start, end = x(own[0].ts), x(own[-1].ts)
        if _n(start) == _n(end):
            start, end = start - _EDGE_PAD, end + _EDGE_PAD
        current = own[0].threshold
        d = f"M{_n(start)} {_n(y(current))}"
        for p in own[1:]:
            if p.threshold != current:
                current = p.threshold
                d += f"H{_n(x(p.ts))}V{_n(y(current))}"
        d += f"H{_n(end)}"
        colour = _THRESHOLD_COLOURS[index % len(_THRESHOLD_COLOURS)]
        lines.append(
            f'<path class="{_threshold_class(index)}" stroke="{colour}" d="{d}">'
            f"<title>threshold: {escape(product)}</title></path>"
        )
    return '<g class="thresholds" fill="none" stroke-width="1.5" stroke-dasharray="6 3">' + "".join(lines) + "</g>"


def _legend(products: list[str], width: int) -> tuple[list[str], int]:
    """Legend items laid out in rows across the top, wrapping at the width; returns the markup and its height."""
    items, row, cursor = [], 0, 14.0
    for index, product in enumerate(products):
        name = product if len(product) <= _LEGEND_NAME_CHARS else product[: _LEGEND_NAME_CHARS - 1] + "…"
        item_width = 26 + len(name) * _CHAR_PX + 16
        if cursor > 14.0 and cursor + item_width > width - 14:
            row, cursor = row + 1, 14.0
        baseline = 14 + row * _LEGEND_ROW
        colour = _THRESHOLD_COLOURS[index % len(_THRESHOLD_COLOURS)]
        items.append(
            f'<path class="{_threshold_class(index)}" fill="none" stroke="{colour}" stroke-width="1.5"'
            f' stroke-dasharray="6 3" d="M{_n(cursor)} {_n(baseline - 4)}h20"/>'
            f'<text x="{_n(cursor + 26)}" y="{baseline}">{escape(name)}</text>'
        )
        cursor += item_width
    return ['<g class="legend" fill="#333333">' + "".join(items) + "</g>"], (row + 1) * _LEGEND_ROW + 4


def _y_labels(frame: _Frame, ticks: list[tuple[float, str]], y: Callable[[float], float]) -> str:
    texts = "".join(f'<text x="{_n(frame.left - 5)}" y="{_n(y(v) + 4)}">{label}</text>' for v, label in ticks)
    return f'<g class="ticks-y" text-anchor="end" fill="#555555">{texts}</g>'


def _x_labels(frame: _Frame, ticks: list[tuple[datetime, str]], x: Callable[[datetime], float], width: int) -> str:
    """Labels centred under their ticks, except where centring would push one past the edge of the viewBox."""
    texts = []
    for t, label in ticks:
        position, half = x(t), len(label) * _CHAR_PX / 2
        anchor = ' text-anchor="end"' if position + half > width - 2 else ""
        anchor = ' text-anchor="start"' if position - half < 2 else anchor
        texts.append(f'<text x="{_n(position)}" y="{_n(frame.bottom + 15)}"{anchor}>{label}</text>')
    return f'<g class="ticks-x" text-anchor="middle" fill="#555555">{"".join(texts)}</g>'


def _x_ticks(t0: datetime, t1: datetime, tz: tzinfo, plot_width: float) -> list[tuple[datetime, str]]:
    """Round local times between t0 and t1: the smallest step giving at most 8 ticks that fit the width."""
    span = (t1 - t0).total_seconds()
    for step in _TICK_STEPS[:-1]:
        fmt = _tick_format(step, t0, t1, tz)
        label_width = len(fmt(t0.astimezone(tz))) * _CHAR_PX + 16
        fitting = max(2, min(_MAX_X_TICKS, int(plot_width // label_width)))
        if span / step.approx_seconds > 2 * fitting + 2:  # far too many ticks: skip before generating them
            continue
        ticks = _ticks_for(step, t0, t1, tz)
        if len(ticks) <= fitting:
            return [(t, fmt(t.astimezone(tz))) for t in ticks]
    coarsest = _TICK_STEPS[-1]  # a span of centuries: these ticks, however many
    fmt = _tick_format(coarsest, t0, t1, tz)
    return [(t, fmt(t.astimezone(tz))) for t in _ticks_for(coarsest, t0, t1, tz)]


def _tick_format(step: _TickStep, t0: datetime, t1: datetime, tz: tzinfo) -> Callable[[datetime], str]:
    """Label format by span: seconds for a few minutes, HH:MM within a day, the day too over days, dates beyond."""
    if step.unit == "month":
        return lambda t: f"{_MONTHS[t.month - 1]} {t.year}"
    if step.unit == "day":
        if t0.astimezone(tz).year == t1.astimezone(tz).year:
            return lambda t: f"{t.day:02d} {_MONTHS[t.month - 1]}"
        return lambda t: f"{t.day:02d} {_MONTHS[t.month - 1]} {t.year}"
    if step.unit == "second" and step.count < 60:
        return lambda t: f"{t:%H:%M:%S}"
    if t1 - t0 <= timedelta(days=1):
        return lambda t: f"{t:%H:%M}"
    return lambda t: f"{t.day:02d} {_MONTHS[t.month - 1]} {t:%H:%M}"


def _ticks_for(step: _TickStep, t0: datetime, t1: datetime, tz: tzinfo) -> list[datetime]:
    """The UTC instants of the ticks of this step within [t0, t1], on round times of the local clock."""
    local = t0.astimezone(tz)
    if step.unit == "second":
        offset = local.utcoffset() or timedelta(0)
        local_seconds = t0.timestamp() + offset.total_seconds()
        first = math.ceil(local_seconds / step.count) * step.count - offset.total_seconds()
        count = math.floor((t1.timestamp() - first) / step.count) + 1
        return [datetime.fromtimestamp(first + i * step.count, UTC) for i in range(max(0, count))]
    naive = local.replace(tzinfo=None)
    if step.unit == "month":
        index = naive.year * 12 + naive.month - 1
        index -= index % step.count
        return _wall_clock_ticks(datetime(index // 12, index % 12 + 1, 1), step.count, t0, t1, tz)
    if step.unit == "hour":
        start = naive.replace(minute=0, second=0, microsecond=0)
        start -= timedelta(hours=start.hour % step.count)
        return _wall_clock_ticks(start, timedelta(hours=step.count), t0, t1, tz)
    day = naive.date()
    day -= timedelta(days=(day.toordinal() - 1) % step.count)  # ordinal 1 is a Monday: weekly ticks on Mondays
    return _wall_clock_ticks(datetime.combine(day, time()), timedelta(days=step.count), t0, t1, tz)


def _wall_clock_ticks(start: datetime, step: timedelta | int, t0: datetime, t1: datetime, tz: tzinfo) -> list[datetime]:
    """Local wall-clock times from ``start`` on, ``step`` apart (a timedelta, or an int of months), as UTC instants
    within [t0, t1].

    A wall time in a DST gap resolves to the same instant as the next one; the duplicate is dropped.
    """
    ticks: list[datetime] = []
    wall = start
    while True:
        instant = wall.replace(tzinfo=tz).astimezone(UTC)
        if instant > t1:
            return ticks
        if instant >= t0 and (not ticks or instant > ticks[-1]):
            ticks.append(instant)
        if isinstance(step, timedelta):
            wall += step
        else:
            index = wall.year * 12 + wall.month - 1 + step
            wall = datetime(index // 12, index % 12 + 1, 1)


def _tz_name(tz: tzinfo, at: datetime) -> str:
    """The zone's name (``Europe/Berlin``) when it has one, else its abbreviation at ``at``."""
    key = getattr(tz, "key", None)
    return key if isinstance(key, str) else (at.astimezone(tz).tzname() or "local time")


def _summary(ordered: Sequence[ScorePoint], tz: tzinfo) -> str:
    """The aria-label: what a screen reader says instead of the picture."""
    frames = [p for p in ordered if not p.rolled]
    count, defects = len(frames), sum(p.verdict == "defect" for p in frames)
    rolled = len(ordered) - count
    minutes = f", {rolled} rolled-up minute{'s' if rolled != 1 else ''}" if rolled else ""
    first, last = ordered[0].ts.astimezone(tz), ordered[-1].ts.astimezone(tz)
    return (
        f"Score over time: {count} inspection{'s' if count != 1 else ''}, {defects} flagged defect{minutes}, "
        f"from {first:%Y-%m-%d %H:%M:%S} to {last:%Y-%m-%d %H:%M:%S} ({_tz_name(tz, first)})"
    )

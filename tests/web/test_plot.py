"""The history page's score-over-time SVG, read back as XML: geometry, classes, ticks, escaping and size."""

from __future__ import annotations

import itertools
import math
import random
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from markupsafe import Markup, escape

from linewatch.web.plot import score_plot
from linewatch.web.rows import ScorePoint

SVG = "{http://www.w3.org/2000/svg}"
BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2024, 1, 15, 8, 0, tzinfo=UTC)


def point(
    seconds: float,
    score: float,
    threshold: float = 0.5,
    product: str = "plate",
    verdict: str | None = None,
    label: str | None = None,
) -> ScorePoint:
    """A point ``seconds`` after START; the verdict follows the score unless given."""
    if verdict is None:
        verdict = "defect" if score > threshold else "normal"
    return ScorePoint(START + timedelta(seconds=seconds), score, threshold, product, verdict, label)


def parse(markup: Markup) -> ET.Element:
    assert isinstance(markup, Markup)
    return ET.fromstring(str(markup))


def groups(root: ET.Element) -> dict[str, ET.Element]:
    """The point groups by class."""
    return {g.get("class", ""): g for g in root.iter(f"{SVG}g") if g.get("class", "").startswith("pt-")}


def circles(element: ET.Element) -> list[tuple[float, float]]:
    return [(float(c.get("cx", "nan")), float(c.get("cy", "nan"))) for c in element.iter(f"{SVG}circle")]


def threshold_paths(root: ET.Element) -> list[ET.Element]:
    (group,) = (g for g in root.iter(f"{SVG}g") if g.get("class") == "thresholds")
    return list(group.iter(f"{SVG}path"))


def horizontal_segments(d: str) -> list[tuple[float, float, float]]:
    """(x from, x to, y) of each horizontal run of an M/H/V path."""
    segments, x, y = [], 0.0, 0.0
    for command, a, b in re.findall(r"([MHV])(-?[\d.]+)(?: (-?[\d.]+))?", d):
        if command == "M":
            x, y = float(a), float(b)
        elif command == "H":
            segments.append((x, float(a), y))
            x = float(a)
        else:
            y = float(a)
    return segments


def frame(root: ET.Element) -> tuple[float, float, float, float]:
    """left, top, right, bottom of the plot area, from the axis path ``M left top V bottom H right``."""
    (axis,) = (p for p in root.iter(f"{SVG}path") if p.get("class") == "axis")
    match = re.fullmatch(r"M([\d.]+) ([\d.]+)V([\d.]+)H([\d.]+)", axis.get("d", ""))
    assert match is not None
    left, top, bottom, right = map(float, match.groups())
    return left, top, right, bottom


def x_ticks(root: ET.Element) -> list[tuple[float, str]]:
    (group,) = (g for g in root.iter(f"{SVG}g") if g.get("class") == "ticks-x")
    return [(float(t.get("x", "nan")), t.text or "") for t in group]


def y_ticks(root: ET.Element) -> list[tuple[float, str]]:
    (group,) = (g for g in root.iter(f"{SVG}g") if g.get("class") == "ticks-y")
    return [(float(t.get("y", "nan")), t.text or "") for t in group]


def test_one_circle_per_point_in_time_order_and_a_higher_score_is_drawn_higher():
    rng = random.Random(1)
    points = [point(7 * i, rng.uniform(0.0, 0.45)) for i in range(300)]
    shuffled = points[:]
    rng.shuffle(shuffled)

    root = parse(score_plot(shuffled, UTC))

    drawn = circles(root)
    assert len(drawn) == 300
    xs = [x for x, _ in drawn]
    assert xs == sorted(xs) and len(set(xs)) > 250  # time order; 7 s apart over ~900 px: mostly distinct pixels
    by_score = sorted(zip((p.score for p in points), (y for _, y in drawn), strict=True))
    for (low_score, low_y), (high_score, high_y) in itertools.pairwise(by_score):
        assert high_y <= low_y
        if high_score - low_score > 0.01:
            assert high_y < low_y
    left, top, right, bottom = frame(root)
    assert all(left < x < right and top < y < bottom for x, y in drawn)


def test_points_are_grouped_by_verdict_and_operator_labels_get_a_ring():
    combos = [("normal", None), ("defect", None), ("normal", "normal"), ("defect", "normal"), ("normal", "defect")]
    points = [
        point(60 * i + k, 0.3, verdict=verdict, label=label)
        for i, (verdict, label) in enumerate(combos)
        for k in range(i + 1)
    ]

    root = parse(score_plot(points, UTC))

    found = groups(root)
    assert {name: len(circles(g)) for name, g in found.items()} == {
        "pt-normal": 1,
        "pt-defect": 2,
        "pt-normal lbl-normal": 3,
        "pt-defect lbl-normal": 4,  # false alarms an operator confirmed normal
        "pt-normal lbl-defect": 5,  # defects the scorer missed
    }
    plain_radius = float(found["pt-defect"][0].get("r", "0"))
    for name in ("pt-normal lbl-normal", "pt-defect lbl-normal", "pt-normal lbl-defect"):
        assert found[name].get("stroke") is not None
        assert float(found[name][0].get("r", "0")) > plain_radius
    assert found["pt-defect lbl-normal"].get("stroke") != found["pt-normal lbl-defect"].get("stroke")
    assert found["pt-defect"].get("fill") != found["pt-normal"].get("fill")
    # labelled points are drawn last, above the thousands of unlabelled ones
    order = [g.get("class") for g in root if g.get("class", "").startswith("pt-")]
    assert order.index("pt-defect lbl-normal") > order.index("pt-defect") > order.index("pt-normal")


def test_threshold_step_line_steps_at_the_first_point_with_a_new_value():
    thresholds = [0.5] * 5 + [0.7] * 5 + [0.6] * 5
    # each point sits exactly on its threshold, so its circle must lie on the line
    points = [point(60 * i, t, threshold=t) for i, t in enumerate(thresholds)]

    root = parse(score_plot(points, UTC))

    drawn = circles(root)
    (line,) = threshold_paths(root)
    assert line.get("class") == "thr thr-0"
    segments = horizontal_segments(line.get("d", ""))
    assert [(x0, x1, y) for x0, x1, y in segments] == [
        (drawn[0][0], drawn[5][0], drawn[0][1]),
        (drawn[5][0], drawn[10][0], drawn[5][1]),
        (drawn[10][0], drawn[14][0], drawn[10][1]),
    ]
    assert all(y == segments[i // 5][2] for i, (_, y) in enumerate(drawn))
    assert drawn[5][1] < drawn[10][1] < drawn[0][1]  # 0.7 above 0.6 above 0.5


def test_threshold_line_steps_only_where_the_threshold_changes():
    rng = random.Random(7)
    thresholds, current = [], 0.5
    for _ in range(400):
        if rng.random() < 0.02:
            current = rng.choice([v for v in (0.4, 0.5, 0.55, 0.6) if v != current])
        thresholds.append(current)
    points = [point(30 * i, rng.uniform(0, 0.8), threshold=t) for i, t in enumerate(thresholds)]

    (line,) = threshold_paths(parse(score_plot(points, UTC)))

    changes = sum(a != b for a, b in itertools.pairwise(thresholds))
    assert changes >= 3
    assert line.get("d", "").count("V") == changes
    assert len(horizontal_segments(line.get("d", ""))) == changes + 1


def test_each_product_gets_its_own_line_and_an_escaped_legend_entry():
    names = ["<script>alert(1)</script>", 'a&b"c', "plate"]
    # products run one after another, as on a line that changes over; each has its own threshold
    points = [
        point(600 * n + 10 * i, 0.2 + 0.1 * n, threshold=0.2 + 0.1 * n, product=name)
        for n, name in enumerate(names)
        for i in range(20)
    ]

    markup = score_plot(points, UTC)
    root = parse(markup)

    assert "<script" not in str(markup) and "&lt;script&gt;alert(1)&lt;/script&gt;" in str(markup)
    assert not [e for e in root.iter() if e.tag.removeprefix(SVG) in {"script", "foreignObject"}]
    lines = threshold_paths(root)
    assert [line.findtext(f"{SVG}title") for line in lines] == [f"threshold: {name}" for name in names]
    assert len({line.get("class") for line in lines}) == 3
    drawn = circles(root)  # all points sit on their threshold: every circle is normal, in time order
    for n, line in enumerate(lines):
        ((x0, x1, y),) = horizontal_segments(line.get("d", ""))
        own = drawn[20 * n : 20 * n + 20]
        assert (x0, x1) == (own[0][0], own[-1][0])  # over this product's own time span only
        assert y == own[0][1]
    (legend,) = (g for g in root.iter(f"{SVG}g") if g.get("class") == "legend")
    assert [t.text for t in legend.iter(f"{SVG}text")] == names
    assert [p.get("class") for p in legend.iter(f"{SVG}path")] == [line.get("class") for line in lines]


def test_one_product_has_no_legend():
    root = parse(score_plot([point(60 * i, 0.3) for i in range(10)], UTC))
    assert not [g for g in root.iter(f"{SVG}g") if g.get("class") == "legend"]


def test_tick_labels_are_in_the_given_time_zone():
    points = [point(60 * i, 0.3) for i in range(241)]  # 08:00 to 12:00 UTC, winter: Berlin is UTC+1

    utc_ticks = x_ticks(parse(score_plot(points, UTC)))
    berlin_root = parse(score_plot(points, BERLIN))
    berlin_ticks = x_ticks(berlin_root)

    assert 4 <= len(utc_ticks) <= 8
    assert [x for x, _ in berlin_ticks] == [x for x, _ in utc_ticks]  # the same instants, labelled differently
    for (_, utc_label), (_, berlin_label) in zip(utc_ticks, berlin_ticks, strict=True):
        utc_time = datetime.strptime(utc_label, "%H:%M")
        assert datetime.strptime(berlin_label, "%H:%M") == utc_time + timedelta(hours=1)
    assert utc_ticks[0][1] == "08:00" and berlin_ticks[0][1] == "09:00"
    assert any("Europe/Berlin" in (t.text or "") for t in berlin_root.iter(f"{SVG}text") if t.get("class") == "tz")


def test_ticks_fall_on_round_local_times_in_a_zone_with_an_odd_offset():
    points = [point(60 * i, 0.3) for i in range(361)]  # 6 hours; Kathmandu is UTC+5:45
    labels = [label for _, label in x_ticks(parse(score_plot(points, ZoneInfo("Asia/Kathmandu"))))]
    assert 4 <= len(labels) <= 8
    assert all(label.endswith(":00") for label in labels)


def test_daily_ticks_stay_at_local_midnight_across_a_dst_change():
    # hourly points from 27 Mar to 3 Apr 2024; Berlin moves to summer time on 31 Mar
    first = datetime(2024, 3, 27, tzinfo=UTC)
    times = [first + timedelta(hours=i) for i in range(24 * 7 + 1)]
    points = [ScorePoint(t, 0.3, 0.5, "plate", "normal", None) for t in times]

    root = parse(score_plot(points, BERLIN))

    time_at = {x: t for (x, _), t in zip(circles(root), times, strict=True)}
    ticks = x_ticks(root)
    assert 4 <= len(ticks) <= 8
    for x, label in ticks:
        local = time_at[x].astimezone(BERLIN)  # every tick sits on one of the hourly points
        assert (local.hour, label) == (0, f"{local.day:02d} {local:%b}")
    assert {time_at[x].utcoffset() for x, _ in ticks} == {timedelta(0)}
    assert {time_at[x].hour for x, _ in ticks} == {23, 22}  # midnight is 23:00 UTC in winter, 22:00 in summer


@pytest.mark.parametrize(
    ("span", "label_pattern"),
    [
        (timedelta(minutes=2), r"\d\d:\d\d:\d\d"),
        (timedelta(hours=5), r"\d\d:\d\d"),
        (timedelta(days=3), r"\d\d [A-Z][a-z]{2} \d\d:\d\d"),
        (timedelta(weeks=5), r"\d\d [A-Z][a-z]{2}"),
        (timedelta(days=400), r"[A-Z][a-z]{2} \d{4}"),
    ],
)
def test_tick_label_format_follows_the_span(span: timedelta, label_pattern: str):
    points = [point(0, 0.3), point(span.total_seconds() / 2, 0.4), point(span.total_seconds(), 0.2)]
    ticks = x_ticks(parse(score_plot(points, BERLIN)))
    assert 4 <= len(ticks) <= 8
    assert all(re.fullmatch(label_pattern, label) for _, label in ticks), ticks
    assert len({label for _, label in ticks}) == len(ticks)


def test_four_to_eight_time_ticks_for_any_span():
    rng = random.Random(3)
    for _ in range(300):
        span = math.exp(rng.uniform(math.log(5), math.log(3 * 365 * 86400)))  # 5 s to 3 years
        start = rng.uniform(0, 365 * 86400)
        points = [point(start, 0.1), point(start + span, 0.2)]
        root = parse(score_plot(points, BERLIN))
        ticks = x_ticks(root)
        left, _, right, _ = frame(root)
        assert 4 <= len(ticks) <= 8, (span, ticks)
        xs = [x for x, _ in ticks]
        assert xs == sorted(xs) and left <= xs[0] and xs[-1] <= right


def test_score_axis_runs_from_zero_to_just_above_the_highest_value():
    points = [point(60 * i, s, threshold=0.8) for i, s in enumerate([0.1, 0.5, 0.2, 0.6])]

    root = parse(score_plot(points, UTC))

    _, top, _, bottom = frame(root)
    labels = y_ticks(root)
    assert 3 <= len(labels) <= 7
    values = [float(text) for _, text in labels]
    assert values[0] == 0 and values == sorted(values)
    assert [y for y, _ in labels] == sorted((y for y, _ in labels), reverse=True)  # larger values higher up
    (line,) = threshold_paths(root)
    ((_, _, threshold_y),) = horizontal_segments(line.get("d", ""))
    # the 0.8 threshold is the highest value: the top is 5% above it, and 0 is the bottom
    assert threshold_y - top == pytest.approx((bottom - top) * (1 - 0.8 / 0.84), abs=0.1)
    zero_label_y = labels[0][0]
    assert zero_label_y - 4 == pytest.approx(bottom, abs=0.1)
    # a gridline label sits at the height of a score equal to its value
    (grid,) = (p for p in root.iter(f"{SVG}path") if p.get("class") == "grid")
    gridline_ys = {float(y) for y in re.findall(r"M[\d.]+ ([\d.]+)H", grid.get("d", ""))}
    half = circles(root)[1][1]  # the point scored 0.5
    assert half in gridline_ys and any(text == "0.50" and y - 4 == pytest.approx(half, abs=0.1) for y, text in labels)


def test_negative_scores_extend_the_axis_below_zero():
    root = parse(score_plot([point(0, -0.3), point(60, 0.2), point(120, 0.4)], UTC))
    _, _, _, bottom = frame(root)
    values = [float(text) for _, text in y_ticks(root)]
    assert values[0] < 0 < values[-1]
    assert circles(root)[0][1] == pytest.approx(bottom, abs=0.1)


def test_markup_is_csp_safe_and_accessible():
    rng = random.Random(5)
    points = [
        point(45 * i, rng.uniform(0, 1), product=rng.choice(["a", "b"]), label=rng.choice([None, "normal", "defect"]))
        for i in range(200)
    ]

    markup = score_plot(points, BERLIN)
    root = parse(markup)

    elements = list(root.iter())
    assert not [e for e in elements if e.tag.removeprefix(SVG) in {"style", "script"}]
    assert not [e for e in elements if "style" in e.attrib or any(a.startswith("on") for a in e.attrib)]
    assert root.tag == f"{SVG}svg" and root.get("role") == "img"
    assert "width" not in root.attrib and "height" not in root.attrib
    assert re.fullmatch(r"0 0 960 \d+", root.get("viewBox", ""))
    first, last = points[0].ts.astimezone(BERLIN), points[-1].ts.astimezone(BERLIN)
    assert root.get("aria-label") == (
        f"Score over time: 200 inspections, {sum(p.verdict == 'defect' for p in points)} flagged defect, "
        f"from {first:%Y-%m-%d %H:%M:%S} to {last:%Y-%m-%d %H:%M:%S} (Europe/Berlin)"
    )
    assert str(escape(markup)) == str(markup)  # Jinja2 embeds it as it is, no double escaping


def test_no_points_says_so():
    root = parse(score_plot([], BERLIN))
    assert root.get("role") == "img" and "no inspections match" in root.get("aria-label", "")
    assert [t.text for t in root.iter(f"{SVG}text")] == ["no inspections match"]
    assert not list(root.iter(f"{SVG}circle"))


def test_a_single_point_sits_mid_plot_on_a_visible_threshold_stub():
    root = parse(score_plot([point(0, 0.5, threshold=0.5)], BERLIN))

    ((x, y),) = circles(root)
    left, _, right, _ = frame(root)
    assert x == pytest.approx((left + right) / 2, abs=0.1)
    (line,) = threshold_paths(root)
    ((x0, x1, line_y),) = horizontal_segments(line.get("d", ""))
    assert x0 < x < x1 and line_y == y
    assert 4 <= len(x_ticks(root)) <= 8


def test_points_at_one_instant_share_an_x_and_keep_their_heights():
    points = [point(0, s, threshold=t) for s, t in [(0.1, 0.5), (0.3, 0.5), (0.5, 0.6), (0.7, 0.6)]]

    root = parse(score_plot(points, UTC))

    drawn = circles(root)
    left, _, right, _ = frame(root)
    assert len(drawn) == 4 and len({x for x, _ in drawn}) == 1
    assert drawn[0][0] == pytest.approx((left + right) / 2, abs=0.1)
    (defect,) = circles(groups(root)["pt-defect"])  # 0.7 over its 0.6 threshold: the highest point
    assert len({y for _, y in drawn}) == 4 and defect[1] == min(y for _, y in drawn)
    (line,) = threshold_paths(root)
    assert line.get("d", "").count("V") == 1  # both thresholds, stepping at that one instant


def test_frames_a_fraction_of_a_second_apart_get_a_readable_time_axis():
    root = parse(score_plot([point(0, 0.3), point(0.2, 0.35), point(0.4, 0.4)], BERLIN))

    xs = [x for x, _ in circles(root)]
    left, _, right, _ = frame(root)
    assert xs == sorted(xs) and len(set(xs)) == 3
    assert xs[1] == pytest.approx((left + right) / 2, abs=0.1)
    labels = [label for _, label in x_ticks(root)]
    assert 4 <= len(labels) <= 8 and all(re.fullmatch(r"\d\d:\d\d:\d\d", label) for label in labels)


def test_two_thousand_points_stay_small_and_deterministic():
    rng = random.Random(11)
    points = []
    for i in range(2000):
        threshold = 0.6 if i < 1200 else 0.55
        score = max(0.0, rng.gauss(0.3, 0.12))
        label = rng.choice([None] * 30 + ["normal", "defect"])
        points.append(point(15 * i, score, threshold=threshold, product=["a", "b"][i // 700 % 2], label=label))

    markup = score_plot(points, BERLIN)

    assert len(circles(parse(markup))) == 2000
    assert len(str(markup).encode()) < 100_000
    shuffled = points[:]
    rng.shuffle(shuffled)
    assert score_plot(shuffled, BERLIN) == markup  # distinct times: input order does not matter
    assert re.findall(r'c[xy]="(-?[\d.]+)"', markup) and all(
        re.fullmatch(r"-?\d+(\.\d)?", v) for v in re.findall(r'c[xy]="([^"]+)"', markup)
    )


@pytest.mark.parametrize(
    "bad",
    [
        ScorePoint(datetime(2024, 1, 1), 0.3, 0.5, "plate", "normal", None),  # naive time
        ScorePoint(START, math.nan, 0.5, "plate", "normal", None),
        ScorePoint(START, 0.3, math.inf, "plate", "normal", None),
        ScorePoint(START, 0.3, 0.5, "plate", "maybe", None),
        ScorePoint(START, 0.3, 0.5, "plate", "normal", "unlabelled"),
    ],
)
def test_rejects_points_that_would_mislead(bad: ScorePoint):
    with pytest.raises(ValueError):
        score_plot([point(0, 0.3), bad], UTC)


def test_rejects_a_viewbox_too_small_to_draw_in():
    with pytest.raises(ValueError):
        score_plot([point(0, 0.3)], UTC, width=100)


def test_rolled_up_minutes_are_hollow_squares_under_the_frames_and_counted_apart():
    rolled = ScorePoint(START + timedelta(seconds=30), 0.45, 0.5, "plate", "normal", None, rolled=True)
    markup = score_plot([rolled, point(120, 0.2), point(180, 0.8)], UTC)
    root = parse(markup)

    found = groups(root)
    assert set(found) == {"pt-normal rolled", "pt-normal", "pt-defect"}
    squares = list(found["pt-normal rolled"].iter(f"{SVG}rect"))
    assert len(squares) == 1 and found["pt-normal rolled"].get("fill") == "none"
    assert len(circles(found["pt-normal"])) == 1  # the rolled minute is not drawn as a frame too
    order = [g.get("class") for g in root.iter(f"{SVG}g") if g.get("class", "").startswith("pt-")]
    assert order[0] == "pt-normal rolled"  # drawn first: frames stay on top
    assert "2 inspections, 1 flagged defect, 1 rolled-up minute" in (root.get("aria-label") or "")

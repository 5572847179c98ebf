"""The shipped Grafana dashboard and Prometheus files against the exporter they describe.

A dashboard or alert that names a metric the daemon does not serve (a typo, a renamed family, a label the
series lacks, a result value the code never writes) shows an empty panel or never fires, and nothing
complains. So: every name and filter they use must exist in ``linewatch.daemon.metrics`` and in a live
exposition, the dashboard must show every family (a new metric gets a panel), and the files must be
well formed. Where ``promtool`` is installed it checks the Prometheus files and runs every alert rule on
synthetic series: each fires when it should, and not in the look-alike cases it must ignore.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from linewatch.daemon.metrics import METRIC_NAMES, RETRAIN_RESULTS, PipelineMetrics, StateCollector
from linewatch.types import Event, EventType, VerdictLabel
from tests.daemon.test_metrics import FakeComponents, verdict  # the same stand-ins as the exporter's own tests
from tests.services.certs import make_pki

yaml = pytest.importorskip("yaml", reason="PyYAML (installed with huggingface_hub and timm) reads the rules")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "linewatch.json"
RULES = DEPLOY / "prometheus" / "linewatch.rules.yml"
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"

# A linewatch metric name, not part of a longer identifier or a recording rule's level:name:operation.
NAME = re.compile(r"(?<![A-Za-z0-9_:])linewatch_[a-z0-9_]+(?![A-Za-z0-9_:])")
# A selector with its matchers: linewatch_x{a="b", c=~"d"}.
SELECTOR = re.compile(r"(?<![A-Za-z0-9_:])(linewatch_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}  # built in, not in the templating list
DURATION = re.compile(r"^\d+[smhdw]$")
# Label values the code writes, so a filter on any other never matches.
KNOWN_VALUES = {
    ("linewatch_inspections_total", "result"): {str(label) for label in VerdictLabel},
    ("linewatch_retrain_runs_total", "result"): set(RETRAIN_RESULTS),
}
# Rules that are events rather than states: their expression already spans a window, a `for:` only delays.
WITHOUT_FOR = {"LinewatchRetrainFailed": "fires for a day after a failed or rejected run, by its 1d window"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in container.get("panels", []):
        yield panel
        yield from panels(panel)


def dashboard_expressions() -> list[str]:
    """The PromQL of every panel query and every template variable query."""
    board = dashboard()
    queries = [target["expr"] for panel in panels(board) for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            queries.append(query["query"] if isinstance(query, dict) else query)
    return queries


def rule_expressions() -> list[str]:
    return [str(rule["expr"]) for rule in rules()]


def names_in(expressions: list[str]) -> set[str]:
    return {name for expression in expressions for name in NAME.findall(expression)}


@pytest.fixture(scope="module")
def exposition() -> list[Any]:
    """The metric families a daemon that has scored (on a scoring server), opened an episode and retrained
    serves on /metrics."""
    registry = CollectorRegistry()
    metrics = PipelineMetrics(registry, "l1")
    registry.register(StateCollector(FakeComponents(remote=True), "l1"))
    batch = [verdict("cam1", 1, VerdictLabel.NORMAL, 0.2, 99.9), verdict("cam1", 2, VerdictLabel.DEFECT, 0.9, 99.9)]
    opened = Event(
        "e1", EventType.NEW, 1, "cam1", "bracket", batch[1].frame_ts, 0.9, 0.5, VerdictLabel.DEFECT, "v1", "cam1-b-2"
    )
    metrics.observe_batch(batch, [opened], 0.012, now_mono=100.0)
    metrics.set_model("v1@abc", "ViT-B-16-plus-240", {"bracket": 0.5})
    metrics.observe_retrain("accepted", 1_764_300_000.0)
    metrics.observe_retrain("failed", 1_764_400_000.0)
    metrics.observe_alert(0.4)
    metrics.observe_remote(0.02)
    return list(text_string_to_metric_families(generate_latest(registry).decode()))


@pytest.fixture(scope="module")
def histograms(exposition: list[Any]) -> set[str]:
    return {family.name for family in exposition if family.type == "histogram"}


def family_of(name: str, histograms: set[str]) -> str:
    """The METRIC_NAMES entry a series name belongs to: a histogram's series lose their suffix."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
            return name.removesuffix(suffix)
    return name


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_used_is_one_the_daemon_exports(source: str, histograms: set[str]) -> None:
    expressions = dashboard_expressions() if source == "dashboard" else rule_expressions()
    used = names_in(expressions)
    assert used, f"no linewatch metric found in the {source}"
    unknown = {name for name in used if family_of(name, histograms) not in METRIC_NAMES}
    assert not unknown, f"the {source} uses metrics linewatch does not export: {sorted(unknown)}"


def test_the_dashboard_shows_every_metric(histograms: set[str]) -> None:
    shown = {family_of(name, histograms) for name in names_in(dashboard_expressions())}
    assert not set(METRIC_NAMES) - shown, f"no panel for {sorted(set(METRIC_NAMES) - shown)}"


def test_every_series_used_appears_in_a_live_exposition(exposition: list[Any]) -> None:
    """Counters are scraped with _total and histograms as _bucket/_sum/_count: the expressions must say so."""
    served = {sample.name for family in exposition for sample in family.samples}
    used = names_in(dashboard_expressions() + rule_expressions())
    assert not used - served, f"not in the exposition: {sorted(used - served)}"


def test_every_label_filtered_on_is_on_thatseries(exposition: list[Any]) -> None:
    """A matcher on a label the series lacks (camera on a per-line gauge) silently empties the panel."""
    labels: dict[str, set[str]] = {}
    for family in exposition:
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    wrong = []
    for expression in dashboard_expressions() + rule_expressions():
        for name, matchers in SELECTOR.findall(expression):
            for label, _op, _value in MATCHER.findall(matchers):
                if label not in labels.get(name, set()):
                    wrong.append(f"{name}{{{label}}}")
    assert not wrong, f"labels the series do not carry: {sorted(set(wrong))}"


def test_every_result_filtered_on_is_one_the_code_writes() -> None:
    wrong = []
    for expression in dashboard_expressions() + rule_expressions():
        for name, matchers in SELECTOR.findall(expression):
            for label, op, value in MATCHER.findall(matchers):
                known = KNOWN_VALUES.get((name, label))
                if known is None or op not in ("=", "=~"):
                    continue
                values = set(value.split("|")) if op == "=~" else {value}
                wrong.extend(f"{name}{{{label}{op}{value!r}}}" for v in values if v not in known)
    assert not wrong, f"values the daemon never writes: {wrong}"


def test_the_alert_rules_are_complete() -> None:
    alerts = [rule for rule in rules() if "alert" in rule]
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in alerts:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in ("critical", "warning"), name
        annotations = rule.get("annotations", {})
        assert annotations.get("summary") and annotations.get("description"), name
        assert "$labels.line" in annotations["summary"], f"{name}: the summary should name the line"
        if name in WITHOUT_FOR:
            assert "for" not in rule, name
        else:
            assert DURATION.match(str(rule.get("for", ""))), f"{name}: needs a for: duration"


def test_the_dashboard_is_importable_and_filters_by_line_and_camera() -> None:
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["uid"] and board["title"] and board["id"] is None  # id None: Grafana assigns one on import
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"line", "camera"} <= variables.keys()
    assert variables["line"]["multi"] and variables["camera"]["multi"]
    assert "$line" in variables["camera"]["query"]["query"], "the camera list follows the chosen lines"

    every = list(panels(board))
    ids = [panel["id"] for panel in every]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    reference = {"type": "prometheus", "uid": "${datasource}"}
    for panel in every:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == reference, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: refIds repeat"
        for target in panel["targets"]:
            assert target["datasource"] == reference, panel["title"]
            used = set(re.findall(r"\$\{?(\w+)", target["expr"]))
            assert used <= variables.keys() | GRAFANA_VARIABLES, f"{panel['title']}: {used}"


def test_every_dashboard_query_follows_the_line_and_camera_choice(exposition: list[Any]) -> None:
    """Each linewatch selector in a panel filters on $line, and on $camera where the series has cameras."""
    per_camera = {sample.name for family in exposition for sample in family.samples if "camera" in sample.labels}
    for panel in panels(dashboard()):
        for target in panel.get("targets", []):
            expression = target["expr"]
            selectors = SELECTOR.findall(expression)
            assert len(selectors) == len(NAME.findall(expression)), f"{panel['title']}: a metric without filters"
            for name, matchers in selectors:
                assert 'line=~"$line"' in matchers, f"{panel['title']}: {name} ignores $line"
                if name in per_camera:
                    assert 'camera=~"$camera"' in matchers, f"{panel['title']}: {name} ignores $camera"


def test_the_dashboard_layout_has_no_overlaps() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels(dashboard()):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {(grid["x"] + dx, grid["y"] + dy) for dx in range(grid["w"]) for dy in range(grid["h"])}
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_the_scrape_config_scrapes_with_the_token_and_loads_the_rules() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == [RULES.name]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "linewatch"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["credentials_file"]
    assert job["scheme"] == "https" and job["tls_config"]["ca_file"]  # the daemons' [http] cert_file and key_file
    assert all(":" in target for group in job["static_configs"] for target in group["targets"])
    # The daemon labels its series with `line`; a target label of that name would rename it exported_line.
    assert all("line" not in group.get("labels", {}) for group in job["static_configs"])
    assert f'up{{job="{job["job_name"]}"}}' in "".join(rule_expressions()), "the target-down rule names the job"


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH (Debian: apt install prometheus provides it)"
)


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_config(tmp_path: Path) -> None:
    """The example names a credentials file on the Prometheus host; promtool wants it to exist, so the
    check runs on a copy pointing at a stand-in, with the rules next to it as in the real layout."""
    assert PROMTOOL is not None
    config = yaml.safe_load(CONFIG.read_text())
    token = tmp_path / "linewatch.token"
    token.write_text("a-token-of-sixteen-chars\n")
    pki = make_pki(tmp_path)
    for job in config["scrape_configs"]:
        job["authorization"]["credentials_file"] = str(token)
        job["tls_config"]["ca_file"] = str(pki.ca.cert)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(RULES, tmp_path / RULES.name)
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# What Grafana puts in for its variables before the query reaches Prometheus.
GRAFANA_VALUES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "6h", "$line": ".*", "$camera": ".*"}


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """The panels' PromQL, with Grafana's variables filled in, as recording rules promtool must accept."""
    expressions = [target["expr"] for panel in panels(dashboard()) for target in panel.get("targets", [])]
    recorded = []
    for number, expression in enumerate(expressions):
        for variable, value in sorted(GRAFANA_VALUES.items(), key=lambda item: -len(item[0])):
            expression = expression.replace(variable, value)
        recorded.append({"record": f"dashboard_query_{number}", "expr": expression})
    (tmp_path / "dashboard.rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": recorded}]}))
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(tmp_path / "dashboard.rules.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def alert_expression(name: str) -> str:
    (expression,) = [str(rule["expr"]) for rule in rules() if rule.get("alert") == name]
    return expression


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    """One promtool input series; values in promtool's notation ("0+10x30": 0, 10, ... 31 samples)."""
    matchers = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{matchers}}}", "values": values}


def holds(alert: str, at: str, *expected: tuple[dict[str, str], float]) -> dict[str, Any]:
    """A promql_expr_test: at ``at``, the alert's condition holds for exactly these series, with these values
    to six decimals (promtool compares floats exactly; rounding keeps which series and labels untouched,
    dropping only the metric name)."""
    return {
        "expr": f"round(({alert_expression(alert)}) * 1e6) / 1e6",
        "eval_time": at,
        "exp_samples": [
            {"labels": "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "value": round(value, 6)}
            for labels, value in expected
        ],
    }


L1 = {"line": "l1"}
CAMERA = "linewatch_camera_up"
INSPECTIONS = "linewatch_inspections_total"
# Each case: promtool input series (one-minute steps unless it says otherwise) and what must hold when.
# Conditions are checked with promql_expr_test on the rule's own expression; alert_rule_test adds `for:`,
# labels and the summary. Cases that span days and test no `for:` evaluate the rules every 10 minutes, not
# every minute (promtool evaluates every rule at each step), so their eval times are multiples of 10m:
# promtool loads the samples only as far as its evaluation has got.
RULE_CASES: dict[str, dict[str, Any]] = {
    "target down, with the line when known": {
        "input_series": [
            {"series": 'up{job="linewatch", instance="a:9108"}', "values": "1x10 0x10"},
            {
                "series": 'linewatch_model_info{job="linewatch", instance="a:9108", line="l1", version="v1", '
                'backbone="b"}',
                "values": "1x10",
            },
            {"series": 'up{job="linewatch", instance="b:9108"}', "values": "0x20"},  # never scraped
            {"series": 'up{job="linewatch", instance="c:9108"}', "values": "1x20"},
        ],
        "alert_rule_test": [
            {
                "eval_time": "12m",  # a: down for 1 minute, not yet 2
                "alertname": "LinewatchTargetDown",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "critical", "job": "linewatch", "instance": "b:9108"},
                        "exp_annotations": {"summary": "linewatch cannot be scraped"},
                    }
                ],
            },
            {
                "eval_time": "15m",
                "alertname": "LinewatchTargetDown",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "critical", "job": "linewatch", "instance": "a:9108", "line": "l1"},
                        "exp_annotations": {"summary": "linewatch on line l1 cannot be scraped"},
                    },
                    {
                        "exp_labels": {"severity": "critical", "job": "linewatch", "instance": "b:9108"},
                        "exp_annotations": {"summary": "linewatch cannot be scraped"},
                    },
                ],
            },
        ],
    },
    "camera down after two minutes": {
        "input_series": [series(CAMERA, {**L1, "camera": "cam1"}, "1x3 0x10")],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "LinewatchCameraDown", "exp_alerts": []},
            {
                "eval_time": "7m",
                "alertname": "LinewatchCameraDown",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "critical", "line": "l1", "camera": "cam1"},
                        "exp_annotations": {"summary": "Camera cam1 on line l1 delivers no frames"},
                    }
                ],
            },
        ],
    },
    "broker disconnected after two minutes": {
        "input_series": [series("linewatch_mqtt_connected", L1, "1x3 0x10")],
        "alert_rule_test": [
            {"eval_time": "5m", "alertname": "LinewatchBrokerDisconnected", "exp_alerts": []},
            {
                "eval_time": "7m",
                "alertname": "LinewatchBrokerDisconnected",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "critical", "line": "l1"},
                        "exp_annotations": {"summary": "Line l1 has lost its MQTT broker"},
                    }
                ],
            },
        ],
    },
    "no inspections from a camera that is up": {
        "input_series": [
            series(CAMERA, {**L1, "camera": "cam1"}, "1x30"),
            series(INSPECTIONS, {**L1, "camera": "cam1", "result": "normal"}, "0+10x10 100x20"),  # stops at 10m
            series(CAMERA, {**L1, "camera": "cam2"}, "1x30"),  # never inspected anything
            series(CAMERA, {**L1, "camera": "cam3"}, "0x30"),  # down: its own alert
            series(CAMERA, {**L1, "camera": "cam4"}, "1x30"),
            series(INSPECTIONS, {**L1, "camera": "cam4", "result": "defect"}, "0+5x30"),
        ],
        "promql_expr_test": [
            holds("LinewatchNoInspections", "8m", ({**L1, "camera": "cam2"}, 1)),
            holds("LinewatchNoInspections", "25m", ({**L1, "camera": "cam1"}, 1), ({**L1, "camera": "cam2"}, 1)),
        ],
    },
    "p99 journal latency above half a second": {
        "input_series": [
            # slow: 97 of 100 verdicts per minute within 0.5 s, 3 between 0.5 s and 1 s
            *(
                series("linewatch_journal_latency_seconds_bucket", {**L1, "camera": "slow", "le": le}, values)
                for le, values in (("0.1", "0+90x20"), ("0.5", "0+97x20"), ("1", "0+100x20"), ("+Inf", "0+100x20"))
            ),
            *(
                series("linewatch_journal_latency_seconds_bucket", {**L1, "camera": "fast", "le": le}, "0+100x20")
                for le in ("0.1", "0.5", "1", "+Inf")
            ),
        ],
        # p99 interpolates in the 0.5..1 bucket: 0.5 + 0.5 * (99 - 97) / (100 - 97)
        "promql_expr_test": [
            holds("LinewatchJournalLatencyHigh", "15m", ({**L1, "camera": "slow"}, 0.5 + 0.5 * 2 / 3))
        ],
    },
    "backlog above 1000 and growing": {
        "input_series": [
            series("linewatch_journal_backlog", {**L1, "forwarder": "db"}, "500+100x30"),
            series("linewatch_journal_backlog", {**L1, "forwarder": "mqtt"}, "5000x30"),  # large but steady
            series("linewatch_journal_backlog", {**L1, "forwarder": "other"}, "0+10x30"),  # growing but small
        ],
        "promql_expr_test": [
            holds(
                "LinewatchJournalBacklogGrowing",
                "20m",
                ({**L1, "forwarder": "db"}, 2500),
            )
        ],
    },
    "token guessing locks an address out": {
        "input_series": [
            series("linewatch_http_auth_refused_total", {**L1, "kind": "login", "outcome": "throttled"}, "0 0 1+1x10"),
            series("linewatch_http_auth_refused_total", {**L1, "kind": "bearer", "outcome": "wrong"}, "0+1x12"),
        ],
        "promql_expr_test": [holds("LinewatchTokenGuessing", "5m", ({**L1, "kind": "login"}, 4))],  # 0 to 4 in 5 min
    },
    "disk below 5 GiB": {
        "input_series": [
            series("linewatch_disk_free_bytes", {**L1, "volume": "journal"}, f"{4 * 2**30}x5"),
            series("linewatch_disk_free_bytes", {**L1, "volume": "evidence"}, f"{6 * 2**30}x5"),
        ],
        "promql_expr_test": [
            holds(
                "LinewatchDiskLow",
                "5m",
                ({**L1, "volume": "journal"}, 4 * 2**30),
            )
        ],
    },
    "retrain failed or rejected within a day, the first one after a start included": {
        "evaluation_interval": "10m",
        "input_series": [
            # l1: the daemon's first failure creates the series at 2000m (increase() alone misses it)
            series("linewatch_retrain_runs_total", {"line": "l1", "result": "failed"}, "_x1999 1x2000"),
            # l2: an old counter that moves at 2500m
            series("linewatch_retrain_runs_total", {"line": "l2", "result": "rejected"}, "2x2499 3x1500"),
            # l3: failed long ago, nothing since; l4: a new series of a good result
            series("linewatch_retrain_runs_total", {"line": "l3", "result": "failed"}, "1x4000"),
            series("linewatch_retrain_runs_total", {"line": "l4", "result": "accepted"}, "_x1999 1x2000"),
            # l5: a fresh deploy, every result's counter exported at 0 from its start: nothing happened
            series("linewatch_retrain_runs_total", {"line": "l5", "result": "failed"}, "_x1999 0x2000"),
            series("linewatch_retrain_runs_total", {"line": "l5", "result": "rejected"}, "_x1999 0x2000"),
        ],
        "promql_expr_test": [
            holds("LinewatchRetrainFailed", "1990m"),
            holds("LinewatchRetrainFailed", "2100m", ({"line": "l1", "result": "failed"}, 1)),
            holds(
                "LinewatchRetrainFailed",
                "2600m",
                ({"line": "l1", "result": "failed"}, 1),
                ({"line": "l2", "result": "rejected"}, 1),
            ),
            holds("LinewatchRetrainFailed", "3500m", ({"line": "l2", "result": "rejected"}, 1)),  # l1: a day old
            holds("LinewatchRetrainFailed", "3990m"),
        ],
    },
    "retrain stale after 14 days": {
        "interval": "1h",
        "evaluation_interval": "1h",
        "input_series": [
            series("linewatch_retrain_last_success_timestamp_seconds", L1, "0x400"),
            series("linewatch_retrain_last_success_timestamp_seconds", {"line": "l2"}, f"{10 * 86400}x400"),
        ],
        "promql_expr_test": [
            holds("LinewatchRetrainStale", "312h"),  # 13 days
            holds("LinewatchRetrainStale", "360h", (L1, 15 * 86400)),
        ],
    },
    "defect share spike against the day, above the floors": {
        "evaluation_interval": "10m",
        "input_series": [
            # cam1: 100 normal verdicts a minute, 1 defect a minute for a day, then 20
            series(INSPECTIONS, {**L1, "camera": "cam1", "result": "normal"}, "0+100x1500"),
            series(INSPECTIONS, {**L1, "camera": "cam1", "result": "defect"}, "0+1x1440 1460+20x59"),
            # cam2: a steady 10% defects: high, but its normal
            series(INSPECTIONS, {**L1, "camera": "cam2", "result": "normal"}, "0+90x1500"),
            series(INSPECTIONS, {**L1, "camera": "cam2", "result": "defect"}, "0+10x1500"),
            # cam3: one part a minute, then half defects: too few verdicts to mean much
            series(INSPECTIONS, {**L1, "camera": "cam3", "result": "normal"}, "0+1x1500"),
            series(INSPECTIONS, {**L1, "camera": "cam3", "result": "defect"}, "0x1440 1+1x59"),
            # cam4: from no defects to 3%: a spike, but under the 5% floor
            series(INSPECTIONS, {**L1, "camera": "cam4", "result": "normal"}, "0+100x1500"),
            series(INSPECTIONS, {**L1, "camera": "cam4", "result": "defect"}, "0x1440 3+3x59"),
            # cam5: from 4% to 10% defects: above the floor, but not three times the day's share
            series(INSPECTIONS, {**L1, "camera": "cam5", "result": "normal"}, "0+96x1440 138330+90x59"),
            series(INSPECTIONS, {**L1, "camera": "cam5", "result": "defect"}, "0+4x1440 5770+10x59"),
        ],
        "promql_expr_test": [
            holds("LinewatchDefectRateSpike", "1430m"),
            holds("LinewatchDefectRateSpike", "1470m", ({**L1, "camera": "cam1"}, 20 / 120)),
        ],
    },
}


@needs_promtool
@pytest.mark.parametrize("case", RULE_CASES)
def test_the_alerts_fire_when_they_should_and_only_then(case: str, tmp_path: Path) -> None:
    """promtool's rule unit tests on synthetic series. Descriptions are left out of the copy under test
    (long prose; their templates are checked by `promtool check rules`), summaries are compared."""
    document = yaml.safe_load(RULES.read_text())
    for group in document["groups"]:
        for rule in group["rules"]:
            rule["annotations"].pop("description")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(document))
    test = dict(RULE_CASES[case])
    suite = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": test.pop("evaluation_interval", "1m"),
        "tests": [{"interval": "1m", **test}],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(suite))
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(tmp_path / "tests.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""What Grafana's PostgreSQL data source sends for a panel's raw SQL: its time macros as timestamps and the
dashboard's variables filled in (their defaults unless given). Shared by the analytics dashboard's test and
benchmarks/store_retention.py, which time the same queries."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)\b")
ANALYTICS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "linewatch-analytics.json"


def dashboard(path: Path = ANALYTICS) -> dict[str, Any]:
    return json.loads(path.read_text())


def panel_queries(path: Path = ANALYTICS) -> dict[str, str]:
    """Each panel's raw SQL by its title."""
    return {panel["title"]: target["rawSql"] for panel in dashboard(path)["panels"] for target in panel["targets"]}


def render(sql: str, since: datetime, until: datetime, path: Path = ANALYTICS, **variables: str) -> str:
    """The SQL Grafana sends: textbox variables default to their text; query variables (site, line) must be
    given as Grafana formats a multi-value selection for SQL: ``"'line-a','line-b'"``."""
    values = {v["name"]: v.get("query", "") for v in dashboard(path)["templating"]["list"] if v["type"] == "textbox"}
    values.update(variables)
    sql = sql.replace("$__timeFrom()", f"'{since.isoformat()}'::timestamptz")
    sql = sql.replace("$__timeTo()", f"'{until.isoformat()}'::timestamptz")

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(f"no value for the dashboard variable ${name}")
        return values[name]

    return VARIABLE.sub(value, sql)


def sql_list(*values: str) -> str:
    """A multi-value variable as Grafana's PostgreSQL data source formats it: quoted, comma-separated."""
    return ",".join("'" + value.replace("'", "''") + "'" for value in values)

"""``linewatch retrain``, ``linewatch model rollback`` and ``linewatch model versions``.

With the daemon running, retrain and rollback are asked of it over its HTTP port (the daemon swaps
models, and its training lock keeps runs single). With no daemon answering, they run here with the
same code and the same lock, and take effect at the next start.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from linewatch.anople.artifact import read_manifest
from linewatch.cli.client import DaemonAbsent, daemon_request
from linewatch.clock import SystemClock
from linewatch.config import Config, load_config
from linewatch.pipeline.scorer import Scorer
from linewatch.retrain.runner import Retrainer, RetrainOutcome
from linewatch.retrain.store import list_runs, list_versions
from linewatch.retrain.versions import ModelRegistry
from linewatch.sinks.db import DatabaseError, make_engine

FINAL = {"accepted", "rejected", "failed", "skipped", "recalibrated", "busy"}
WAIT_POLL_S = 2.0
RUNS_SHOWN = 5
WAIT_MARGIN_S = 300.0  # gathering and the gate come on top of the training's own time limit
OK_STATUSES = {"accepted", "recalibrated", "skipped", "rolled_back", "started"}


def offline_retrainer(config: Config, stop: threading.Event | None = None) -> Retrainer:
    """The daemon's Retrainer without a scorer to swap: a version is checked by loading it, then only
    ``active.json`` changes; the daemon loads it at its next start. Refused while a daemon serves the line
    (its HTTP port did not answer, yet it runs): changing its versions under it would desynchronise them."""
    registry = ModelRegistry(config.versions_dir, config.model.path)
    if registry.daemon_running():
        raise ValueError(
            f"a linewatch daemon serves this line ({config.versions_dir}) but its HTTP port "
            f"{config.http.host}:{config.http.port} did not answer; try again once it has started"
        )

    def load(path: Path) -> Scorer:
        return Scorer.from_artifact(path, config.model.models_dir, "cpu", "fp32", config.model.weights)

    def thresholds() -> dict[str, float]:
        manifest = read_manifest(registry.active())
        calibrated = {entry["name"]: entry["calibration"]["threshold"] for entry in manifest["products"]}
        return {**calibrated, **config.model.thresholds}

    def show(news: dict[str, Any]) -> None:
        print(f"retrain: {news['status']}: {news['reason']}", file=sys.stderr)

    return Retrainer(
        config,
        registry,
        make_engine(config.store_url),
        SystemClock(),
        load,
        lambda _loaded, _path, _version: None,
        show,
        thresholds,
        stop or threading.Event(),
    )


def _print_outcome(outcome: dict[str, Any]) -> int:
    print(json.dumps(outcome, indent=2, default=str))
    return 0 if outcome.get("status") in OK_STATUSES else 1


def cmd_retrain(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if not config.retrain.enabled:
        raise ValueError(f"{args.config}: [retrain] enabled = false")
    try:
        answer = daemon_request(config, "POST", "/retrain", {"reason": args.reason})
    except DaemonAbsent:
        print("no daemon answers on the HTTP port: retraining here; the daemon loads the result at its next start")
        outcome: RetrainOutcome = offline_retrainer(config).run(f"cli: {args.reason}" if args.reason else "cli")
        return _print_outcome(outcome.to_dict())
    if answer.get("status") != "started" or not args.wait:
        return _print_outcome(answer)
    asked = time.time()
    deadline = time.monotonic() + config.retrain.time_limit_s + WAIT_MARGIN_S
    while time.monotonic() < deadline:  # the run's end shows in the daemon's model state
        time.sleep(WAIT_POLL_S)
        try:
            news = daemon_request(config, "GET", "/model").get("retrain") or {}
        except DaemonAbsent:
            raise ValueError(
                "the daemon stopped answering while the run went on; its end, if it came, is in "
                "`linewatch model versions` and the daemon's log"
            ) from None
        if news.get("status") in FINAL and _after(news.get("at"), asked):
            return _print_outcome(news)
    raise ValueError(f"no outcome within [retrain] time_limit_s + {WAIT_MARGIN_S:g} s; see the daemon's log")


def _after(stamp: object, since: float) -> bool:
    try:
        return isinstance(stamp, str) and datetime.fromisoformat(stamp).timestamp() >= since - 1
    except ValueError:
        return False


def cmd_model_rollback(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        answer = daemon_request(config, "POST", "/model/rollback", {"version": args.version})
    except DaemonAbsent:
        print("no daemon answers on the HTTP port: switching the active version for its next start")
        return _print_outcome(offline_retrainer(config).rollback(args.version).to_dict())
    return _print_outcome(answer)


def cmd_model_versions(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    registry = ModelRegistry(config.versions_dir, config.model.path)
    rows: dict[str, dict[str, Any]] = {}
    runs: list[dict[str, Any]] = []
    engine = make_engine(config.store_url)
    try:
        rows = {Path(row["artifact_path"]).name: row for row in list_versions(engine)}
        runs = list_runs(engine, RUNS_SHOWN)
    except DatabaseError as problem:
        print(f"(store not readable, showing the folder only: {problem})")
    finally:
        engine.dispose()
    print(f"versions in {config.versions_dir} (newest last):")
    for entry in registry.versions():
        row = rows.get(entry.name, {})
        marker = "*" if entry.active else " "
        status = row.get("status", "-")
        reason = f"  {row['reason']}" if row.get("reason") else ""
        print(f" {marker} {entry.name:<28} {entry.created_at:<26} {status:<9} {entry.path}{reason}")
    if runs:
        print("latest retrain runs:")
    for run in runs:
        started = run["started_at"].isoformat(timespec="seconds")
        print(f"   #{run['id']:<5} {started:<26} {run['status']:<12} {run['trigger']}: {run['reason'] or ''}")
    return 0


def add_commands(commands: argparse._SubParsersAction, model_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]

    retrain = commands.add_parser("retrain", help="retrain from confirmed normals now (gated, like the schedule)")
    retrain.add_argument("--reason", help="why; recorded with the run")
    retrain.add_argument("--wait", action="store_true", help="with a running daemon: wait for the run to end")
    retrain.add_argument("--config", type=Path, default=Path("config.toml"))
    retrain.set_defaults(func=cmd_retrain)

    rollback = model_commands.add_parser("rollback", help="put the previous (or a named) model version back")
    rollback.add_argument("version", nargs="?", help="folder name or NAME@HASH (default: the one active before)")
    rollback.add_argument("--config", type=Path, default=Path("config.toml"))
    rollback.set_defaults(func=cmd_model_rollback)

    versions = model_commands.add_parser("versions", help="the line's model versions, the active one starred")
    versions.add_argument("--config", type=Path, default=Path("config.toml"))
    versions.set_defaults(func=cmd_model_versions)

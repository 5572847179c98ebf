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
from linewatch.retrain.versions import ModelRegistry
from linewatch.sinks.db import LineScope, make_engine

FINAL = {"accepted", "rejected", "failed", "skipped", "recalibrated", "busy"}
WAIT_POLL_S = 2.0
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
        make_engine(config.store_url, LineScope.of(config.site)),
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

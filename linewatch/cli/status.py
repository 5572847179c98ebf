"""``linewatch status``: the running daemon's state, read from its ``/healthz``."""

from __future__ import annotations

import argparse
import time

from linewatch.cli.client import DaemonAbsent, daemon_request
from linewatch.config import load_config


def cmd_status(args: argparse.Namespace) -> int:
    """The running daemon's state from ``/healthz``, read twice ``--interval`` apart for the frame rates."""
    config = load_config(args.config)
    try:
        first = daemon_request(config, "GET", "/healthz", answers=(503,))
        time.sleep(args.interval)
        state = daemon_request(config, "GET", "/healthz", answers=(503,))
    except DaemonAbsent:
        where = f"{config.http.host}:{config.http.port}"
        raise ValueError(f"no daemon answers on {where}; is `linewatch run` up?") from None
    if state["status"] == "starting":  # not inspecting yet (training the demo model): only the stage is known
        print(f"line {state.get('line', '?')}: STARTING: {'; '.join(state.get('problems', [])) or 'starting'}")
        return 1
    elapsed = float(state.get("uptime_s", 0)) - float(first.get("uptime_s", 0))
    if elapsed <= 0:  # restarted between the two readings: the counters started again
        first, elapsed = {}, max(float(state.get("uptime_s", 0)), 1e-3)
    print(f"line {state.get('line', '?')}: {state['status'].upper()}, model {state.get('model_version')}")
    for problem in state.get("problems", []):
        print(f"  ! {problem}")
    print("cameras:")
    for name, status in state.get("cameras", {}).items():
        frames = state.get("frames", {}).get(name, 0) - first.get("frames", {}).get(name, 0)
        print(f"  {name:<16} {status:<9} {frames / elapsed:6.1f} frames/s")
    backlog = ", ".join(f"{name} {count}" for name, count in state.get("journal_backlog", {}).items()) or "none"
    print(f"broker {state.get('broker')}; store {state.get('store')}; journal backlog: {backlog}")
    dropped = state.get("journal_dropped") or {}
    if dropped:
        counts = ", ".join(f"{kind} {count}" for kind, count in dropped.items())
        print(f"journal records dropped undelivered for disk space: {counts}")
    news = state.get("retrain") or {}
    if news:
        when = f"{news.get('trigger')}, {news.get('at')}"
        print(f"last retrain news: {news.get('status')} ({when}): {news.get('reason')}")
    return 0 if state["status"] == "ok" else 1

"""``linewatch run``: the process around the App: logging, the demo-model bootstrap, signals, reloads."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from linewatch.anople.settings import AnoPLeSettings
from linewatch.config import Config, ConfigError, load_config
from linewatch.daemon.app import App
from linewatch.daemon.starting import StartingPort
from linewatch.daemon.systemd import Notifier
from linewatch.images import collect_images, write_image
from linewatch.model.training import ProductSource, train_artifact
from linewatch.model.weights import load_backbone
from linewatch.pipeline.camera.synthetic import SyntheticProduct

log = logging.getLogger("linewatch.daemon.app")
# How long systemd should wait beyond the model load when the OpenVINO export may run at start: measured on
# 2 cores, ViT-B-16-plus-240 took 110 s to export in fp32 and 175 s in INT8 (benchmarks/export_parity.py).
OPENVINO_EXPORT_S = 900.0


def apply_cpu_threads(config: Config) -> int:
    """Set torch's CPU thread count for scoring; by default every core but one.

    The spare core keeps camera, journal and forwarder threads from preempting an OpenMP worker in the
    middle of a parallel region: on 2 cores with 4 cameras, 2 torch threads gave a capture-to-journal
    p99 of 110 ms against 56 ms with 1 (benchmarks/pipeline_throughput.py).
    """
    threads = config.scoring.cpu_threads or max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(threads)
    return threads


class Interrupted(Exception):
    """The stop event was set while a long start-up step ran; nothing of that step was kept."""


def needs_demo_model(config: Config) -> bool:
    """Whether this start trains the demo model first (the configured model is missing and that is allowed)."""
    return not config.model.path.exists() and config.scoring.bootstrap_demo_model


def bootstrap_demo_model(
    config: Config, stop: threading.Event, report: Callable[[str, float | None], None] = lambda _s, _f: None
) -> bool:
    """Train a demo model from synthetic normals when the configured model is missing and the config
    allows it. Only synthetic cameras can supply normals; the result runs on the configured (random)
    backbone and is announced as a demo model. Returns True when a model was trained.

    Setting ``stop`` aborts the training at the next step with ``Interrupted``; the artifact is only
    ever written whole, so an aborted bootstrap leaves nothing behind and the next start retries. ``report``
    hears each stage and the share of training done (the starting page and systemd's status show them).
    """
    if not needs_demo_model(config):
        return False
    cameras = {c.product: c for c in config.cameras if c.source == "synthetic"}
    if not cameras:
        raise ValueError("[scoring] bootstrap_demo_model needs at least one synthetic camera to draw normals from")
    log.warning("no model at %s: training a DEMO model on synthetic normals (not for real parts)", config.model.path)
    report("writing synthetic normal parts for the demo model", None)
    sources = []
    for product, camera in cameras.items():
        folder = config.site.data_dir / "bootstrap" / camera.name
        synthetic = SyntheticProduct(style_seed=camera.seed, width=camera.width, height=camera.height)
        rng = np.random.default_rng(camera.seed + 1)
        for index in range(config.demo.train_normals):
            write_image(folder / f"{index:03d}.png", synthetic.normal(rng).image)
        sources.append(ProductSource(product, collect_images([folder])))
    report("loading the backbone for the demo model", None)
    backbone = load_backbone(
        config.model.backbone, config.model.pretrained, config.model.models_dir, config.model.weights, config.demo.seed
    )

    def check_stop(step: int, total: int, _losses: dict[str, float]) -> None:
        if stop.is_set():
            raise Interrupted(f"demo model training stopped at step {step} of {total}")
        report(f"training the demo model: {100 * step // total} % (step {step} of {total})", step / total)
        if step % 50 == 0 or step == total:
            log.info("demo model training: step %d of %d", step, total)

    train_artifact(
        sources,
        backbone,
        AnoPLeSettings(steps=config.demo.steps),
        config.model.path,
        config.demo.shots,
        config.demo.seed,
        config.model.target_frr,
        progress=check_stop,
        log=log.info,
        device=config.model.device,
    )
    return True


class _LineContext(logging.Filter):
    """Puts site/line into every record, so one journald stream holds several lines legibly, and drops
    third-party chatter logged on the root logger below WARNING."""

    def __init__(self, line: str) -> None:
        super().__init__()
        self.line = line

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "root" and record.levelno < logging.WARNING:
            return False  # open_clip narrates model creation on the root logger at INFO
        record.line = self.line
        return True


def configure_logging(config: Config, verbose: bool = False) -> None:
    """Single-line records without timestamps (journald adds its own), line context on each."""
    handler = logging.StreamHandler()
    handler.addFilter(_LineContext(f"{config.site.site}/{config.site.line}"))
    handler.setFormatter(logging.Formatter("%(levelname)s [%(line)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Alembic narrates every migration context, APScheduler every job it adds and runs, at INFO; the store
    # and the retrain service log what matters themselves.
    for chatty in ("alembic", "apscheduler"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if verbose else logging.WARNING)


def serve(config_path: Path, verbose: bool = False) -> int:
    """``linewatch run``: start, run until SIGTERM/SIGINT, reload safe fields on SIGHUP, stop cleanly."""
    config = load_config(config_path)
    configure_logging(config, verbose)
    stop = threading.Event()
    reload_requested = threading.Event()
    notifier = Notifier()  # systemd's Type=notify protocol; silent without NOTIFY_SOCKET

    def request_stop(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        notifier.stopping()  # now, not after the drain: the watchdog must not shoot a daemon that is stopping
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload_requested.set())
    # Before the demo training too: torch's default (every core) on a line PC whose cores are busy made each
    # training step about 40 times slower, and a first start took 13 minutes instead of seconds.
    log.info("scoring with %d CPU thread(s)", apply_cpu_threads(config))
    starting = StartingPort(config) if needs_demo_model(config) else None
    if starting is not None:
        starting.start()
        log.info("HTTP port %s:%d says what the daemon is doing until it inspects", config.http.host, starting.port)

    def report(stage: str, fraction: float | None) -> None:
        notifier.status(stage)
        if starting is not None:
            starting.report(stage, fraction)

    try:
        bootstrap_demo_model(config, stop, report)
    except Interrupted as interrupted:
        log.info("%s; exiting", interrupted)
        return 0
    finally:
        if starting is not None:
            starting.stop()  # the daemon's own server takes the port over
    if config.scoring.runtime == "openvino":  # a model without a current export is exported first: minutes
        notifier.extend_start(OPENVINO_EXPORT_S, f"loading the model (OpenVINO {config.scoring.precision})")
    else:
        notifier.status("loading the model")
    app = App(config, stop_event=stop, on_progress=notifier.progress)

    def apply_reloads() -> None:
        while not stop.is_set():
            if reload_requested.wait(0.2) and not stop.is_set():
                reload_requested.clear()
                notifier.reloading()
                outcome = "reload refused"
                try:
                    changes = app.reload(load_config(config_path))
                    outcome = f"reloaded: {'; '.join(changes) or 'nothing to change'}"
                    log.info("reloaded %s: %s", config_path, "; ".join(changes) or "nothing to change")
                except (ConfigError, KeyError, ValueError) as error:
                    outcome = f"reload refused: {error}"
                    log.error("reload refused, keeping the running config: %s", error)
                finally:  # systemd stays "reloading" until READY comes (unless it is stopping by now)
                    if not stop.is_set():
                        notifier.ready(f"inspecting; {outcome}")

    control = threading.Thread(target=apply_reloads, name="reload")
    try:
        app.start(scorer_thread=False)
        notifier.ready(f"inspecting {len(app.cameras)} camera(s), model {app.serving_version}")
        # A ping every WatchdogSec/2 unless frames wait and no batch was journaled since the last one.
        notifier.start_watchdog(stop, app.work_pending)
        control.start()
        app.run_scorer()  # returns once stopped and drained
    finally:
        if not stop.is_set():  # stopping for another reason than a signal (an error)
            notifier.stopping()
        stop.set()
        if control.is_alive():
            control.join(timeout=10)
        app.stop()
    return 0

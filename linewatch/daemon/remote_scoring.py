"""The daemon's side of ``[scoring] runtime = "triton"``: one connection to the scoring server, the counters
that metrics and ``/healthz`` read, and a scorer per model version (:mod:`linewatch.pipeline.remote` has
the engine and the failure policy).

Activation. Starting, retraining and rollback all build the new version's scorer here, and building it
loads the version on the server (explicit model control) before the worker swaps to it. A server that
refuses the version (unknown to it, another model under that id, another precision) fails the start or the
activation with its reason. A server that does not answer fails an activation too (the old version keeps
scoring, the operator sees why), but not a start: the daemon starts on its fallback (or waits, with
fallback "none") and activates the version on the server when it answers, since refusing to start would
leave the line without any verdicts while the GPU server reboots.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from linewatch.anople.artifact import load_artifact, read_artifact
from linewatch.anople.files import model_version
from linewatch.config import Config
from linewatch.model.weights import backbone_loader
from linewatch.pipeline.remote import FailoverEngine, RemoteEngine, RemoteScoringError, RemoteStats, TritonConnection
from linewatch.pipeline.scorer import Scorer

log = logging.getLogger(__name__)


class RemoteScoring:
    def __init__(self, config: Config, stop: threading.Event, on_round_trip: Callable[[float], None]) -> None:
        self.config = config
        self.stop = stop
        self.on_round_trip = on_round_trip
        self.stats = RemoteStats()
        self.connection = TritonConnection(config.triton)

    def scorer(self, path: Path, starting: bool = False) -> Scorer:
        """The scorer of the model in ``path``, served remotely, with the local fallback if configured."""
        triton, model = self.config.triton, self.config.model
        summary = read_artifact(path)
        remote = RemoteEngine(
            self.connection,
            model_version(path),
            summary,
            path,
            lambda: load_artifact(path, backbone_loader(model.models_dir, model.weights)),
        )
        try:
            remote.activate(float(triton.load_timeout_s))
        except RemoteScoringError as error:
            if not (starting and error.unreachable):
                raise
            self.stats.reachable = False
            self.stats.last_error = str(error)
            log.error("%s: starting anyway, the version is activated on the server when it answers", error)
        local = None
        if triton.fallback == "local":
            local = Scorer.from_artifact(
                path, model.models_dir, model.device, self.config.scoring.precision, model.weights, triton.local_runtime
            ).engine
        engine = FailoverEngine(
            remote,
            local,
            float(triton.hold_s),
            float(triton.retry_s),
            self.stop,
            self.stats,
            on_round_trip=self.on_round_trip,
        )
        return Scorer(engine, summary.info, summary.products, summary.backbone, summary.input_size)

    def health(self) -> str:
        return "reachable" if self.stats.reachable else "unreachable"

    @staticmethod
    def waiting(scorer: Scorer) -> bool:
        """Whether the scorer waits for the server with no fallback (not a stuck scorer: see FailoverEngine)."""
        engine = scorer.engine
        return isinstance(engine, FailoverEngine) and engine.waiting

    def close(self) -> None:
        self.connection.close()

"""Scoring on a Triton server: the remote engine, and the policy for when the server cannot answer.

:class:`RemoteEngine` sends a batch's resized frames (uint8) to the server's model and rebuilds each full
map from the g x g grid it answers (:func:`~linewatch.anople.model.pixel_map_from_grid`, with this PC's
own upsample+blur matrix): about 1 KB per frame comes back. It names the model version on every request,
so the verdict's version is the one that scored it: ``linewatch serve`` reads the request parameter, a
stock Triton server the version number its repository lists for that id (:mod:`~linewatch.model.
remote_protocol`). ``activate`` loads the version on the server before the daemon swaps to it (explicit
model control): a version the server cannot load fails the activation and the old one keeps scoring.

:class:`FailoverEngine` holds the failure policy. Every call has a deadline ([triton] deadline_ms). When a
call fails, the batch waits up to ``hold_s`` for the server, retrying; then it is scored locally (fallback
"local") and the server is marked unreachable: later batches go straight to the local engine, and the
server is tried again every ``retry_s``. With fallback "none" the batch keeps waiting, each try bounded by
the deadline, while new frames wait in the cameras' bounded queues. A batch is scored once, by one engine;
its verdicts are journaled once, whichever scored them.

Thresholds: a server scoring in fp32 (a stock export, which passed its parity gate, or ``linewatch serve
--precision fp32``) gives the artifact's scores, so the artifact's calibration applies. One scoring in
bf16 or fp16 (``linewatch serve`` on a GPU) gives scores of its own: at the first activation of a version
the line PC scores the version's calibration images through the server and with PyTorch fp32 here,
calibrates on the server's scores and gates them as an OpenVINO export is gated
(:func:`~linewatch.model.export.calibrate_remote`); the result is kept beside the model, so later
activations of the same files reuse it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from linewatch.anople.artifact import ArtifactInfo, ArtifactSummary
from linewatch.anople.calibrate import Calibration
from linewatch.anople.model import AnoPLe, pixel_map_from_grid, upsample_blur_matrix
from linewatch.config import TritonSection
from linewatch.model import remote_protocol
from linewatch.model.export import ExportError, calibrate_remote, current_export
from linewatch.pipeline.engines import Engine, Outputs

log = logging.getLogger(__name__)

# gRPC statuses that mean "no answer" (retried, then the fallback) rather than "the server said no"
_UNREACHABLE = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN", "RESOURCE_EXHAUSTED")


class RemoteScoringError(RuntimeError):
    """A remote call that did not give scores; ``unreachable`` says whether the server answered at all."""

    def __init__(self, message: str, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class ScoringStopped(RuntimeError):
    """The daemon stops while a batch still waits for an unreachable server (fallback "none")."""


class TritonConnection:
    """One gRPC client to the server, with the deadlines and TLS of ``[triton]``; errors become
    :class:`RemoteScoringError`. tritonclient is imported here, so daemons that score locally never load it."""

    def __init__(self, settings: TritonSection) -> None:
        import tritonclient.grpc as grpcclient

        self._grpc = grpcclient
        self.settings = settings
        self._max_batch: int | None = None  # the model's max_batch_size, asked at the first score
        self.client = grpcclient.InferenceServerClient(
            settings.url,
            ssl=settings.ca_file is not None,
            root_certificates=str(settings.ca_file) if settings.ca_file else None,
            private_key=str(settings.key_file) if settings.key_file else None,
            certificate_chain=str(settings.cert_file) if settings.cert_file else None,
        )

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return call()
        except InferenceServerException as error:
            self._max_batch = None  # asked again: a server that failed may come back configured otherwise
            status = str(error.status() or "")
            unreachable = any(code in status for code in _UNREACHABLE) or not status
            raise RemoteScoringError(
                f"scoring server {self.settings.url}: {what}: {error.message() or status}", unreachable
            ) from None

    def live(self) -> bool:
        try:
            return bool(self._call("live", lambda: self.client.is_server_live(client_timeout=self._deadline())))
        except RemoteScoringError:
            return False

    def _deadline(self) -> float:
        return float(self.settings.deadline_ms) / 1000.0

    def model_ready(self, name: str) -> bool:
        return bool(
            self._call(f"model {name}", lambda: self.client.is_model_ready(name, client_timeout=self._deadline()))
        )

    def info(self, version: str, timeout: float) -> dict[str, Any]:
        """``linewatch serve``'s description of ``version``, loading it first."""
        grpc = self._grpc
        request = grpc.InferInput("version", [1, 1], "BYTES")
        request.set_data_from_numpy(np.array([[version.encode()]], dtype=object))
        answer = self._call(
            f"load {version}",
            lambda: self.client.infer(
                remote_protocol.INFO_MODEL,
                [request],
                outputs=[grpc.InferRequestedOutput("info")],
                client_timeout=timeout,
            ),
        )
        return json.loads(answer.as_numpy("info").reshape(-1)[0])

    def repository_versions(self, timeout: float) -> dict[int, str] | None:
        """A stock server's {number: version id} from its model config; None when it lists none."""
        config = self._call(
            f"model config of {self.settings.model}",
            lambda: self.client.get_model_config(self.settings.model, as_json=True, client_timeout=timeout),
        )
        parameter = config.get("config", {}).get("parameters", {}).get(remote_protocol.VERSIONS_PARAMETER)
        return None if parameter is None else remote_protocol.decode_versions(parameter.get("string_value", ""))

    def load(self, timeout: float) -> None:
        """Ask a stock server in explicit model-control mode to (re)load the model from its repository."""
        self._call(
            f"load {self.settings.model}", lambda: self.client.load_model(self.settings.model, client_timeout=timeout)
        )

    def max_batch(self, timeout: float) -> int:
        """The most frames the model takes in one request (its config's max_batch_size; 0: no limit known),
        asked once per connection and again after a failed call (the server may have restarted)."""
        if self._max_batch is None:
            config = self._call(
                f"model config of {self.settings.model}",
                lambda: self.client.get_model_config(self.settings.model, as_json=True, client_timeout=timeout),
            )
            self._max_batch = int(config.get("config", {}).get("max_batch_size", 0) or 0)
        return self._max_batch

    def score(
        self,
        frames: np.ndarray,
        ids: np.ndarray,
        version: str,
        number: str,
        left_out: np.ndarray | None = None,
        timeout: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8 frames, (B,) product ids, (B,) shots to leave out (calibration only) -> the
        server's image scores (B, 1), global probabilities (B, 1) and fused grids (B, g, g). A batch larger
        than the server's max batch goes in several requests, each with its own deadline."""
        limit = self.max_batch(timeout or self._deadline())
        if 0 < limit < frames.shape[0]:
            pieces = [
                self.score(
                    frames[start : start + limit],
                    ids[start : start + limit],
                    version,
                    number,
                    None if left_out is None else left_out[start : start + limit],
                    timeout,
                )
                for start in range(0, frames.shape[0], limit)
            ]
            return tuple(np.concatenate(outputs, axis=0) for outputs in zip(*pieces, strict=True))  # type: ignore[return-value]
        grpc = self._grpc
        skip = np.full(frames.shape[0], -1, np.int64) if left_out is None else left_out.astype(np.int64)
        columns = (
            ("images", frames, "UINT8"),
            ("product_ids", ids[:, None], "INT64"),
            ("left_out_shot", skip[:, None], "INT64"),
        )
        inputs = []
        for name, array, dtype in columns:
            tensor = grpc.InferInput(name, list(array.shape), dtype)
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            inputs.append(tensor)
        answer = self._call(
            f"score with {version}",
            lambda: self.client.infer(
                self.settings.model,
                inputs,
                model_version=number,
                parameters={remote_protocol.VERSION_PARAMETER: version},
                timeout=int((timeout or self._deadline()) * 1e6),  # queued past it: the server drops it (us)
                client_timeout=timeout or self._deadline(),
            ),
        )
        return answer.as_numpy("image_score"), answer.as_numpy("global_probability"), answer.as_numpy("fused_grid")

    def close(self) -> None:
        self.client.close()


ModelLoader = Callable[[], tuple[AnoPLe, ArtifactInfo]]


class RemoteEngine:
    """One model version scored by the server, with thresholds for the server's precision (see the module
    docstring); ``load_model`` loads the version here, needed only to calibrate for a non-fp32 server."""

    runtime = "triton"

    def __init__(
        self,
        connection: TritonConnection,
        version: str,
        summary: ArtifactSummary,
        directory: Path,
        load_model: ModelLoader,
    ) -> None:
        self.connection = connection
        self.version = version
        self.summary = summary
        self.directory = directory
        self._load_model = load_model
        self.precision = "fp32"
        self._calibrations = {product: record.calibration for product, record in summary.info.products.items()}
        self._number = ""  # a stock server's Triton version number for ``version``; "" for linewatch serve
        self.activated = False
        sigma = summary.settings.blur_sigma_at_400px * summary.input_size / 400
        self._sigma = sigma
        self._spread: torch.Tensor | None = None  # (S, g), built at the first answer, which tells g

    def activate(self, timeout: float) -> None:
        """Load the version on the server and check that it scores what this PC expects. A server that was
        unreachable when the daemon started is activated at the first batch, within the call deadline (the
        server goes on loading, so a later batch finds the version ready)."""
        connection = self.connection
        if connection.model_ready(remote_protocol.INFO_MODEL):
            info = connection.info(self.version, timeout)
            served = (info.get("products"), info.get("input_size"))
            expected = (self.summary.products, self.summary.input_size)
            if served != expected:
                raise RemoteScoringError(
                    f"scoring server {connection.settings.url} has {self.version} with products/input size "
                    f"{served}, this PC {expected}: not the same model",
                    unreachable=False,
                )
            self._number = ""
            self._calibrate(str(info.get("precision", "fp32")))
        else:
            self._number = str(self._repository_number(timeout))
        self.activated = True
        log.info("scoring server %s serves %s", connection.settings.url, self.version)

    def _calibrate(self, precision: str) -> None:
        """Thresholds for a server that scores at ``precision``: the artifact's for fp32, else its own."""
        if precision != "fp32":
            record = current_export(self.directory, "triton", precision)
            if record is None:
                log.warning(
                    "scoring server %s scores %s in %s: calibrating its thresholds on the server's own scores "
                    "(once per version; a full-size model takes minutes)",
                    self.connection.settings.url,
                    self.version,
                    precision,
                )
                model, info = self._load_model()
                try:
                    record = calibrate_remote(self.directory, model, info, self._run_for_calibration, precision)
                except ExportError as error:
                    raise RemoteScoringError(f"scoring server {self.connection.settings.url}: {error}", False) from None
            self._calibrations = dict(record.calibrations)
        self.precision = precision

    def _run_for_calibration(
        self, images: np.ndarray, ids: np.ndarray, left_out: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A :data:`~linewatch.model.export.Runner` on the server: (B, 3, S, S) in [0, 1] back to uint8 frames
        (calibration images come from uint8 files; simulated anomalies round to the nearest level)."""
        frames = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        timeout = float(self.connection.settings.load_timeout_s)
        scores, probabilities, grids = self.connection.score(
            np.ascontiguousarray(frames), ids, self.version, self._number, left_out, timeout
        )
        return scores.reshape(-1), probabilities.reshape(-1), self._maps(grids).numpy()

    def _maps(self, grids: np.ndarray) -> torch.Tensor:
        grid = torch.tensor(grids, dtype=torch.float32)  # (B, g, g); a copy: the answer's buffer is read-only
        if self._spread is None or self._spread.shape[1] != grid.shape[-1]:
            self._spread = upsample_blur_matrix(grid.shape[-1], self.summary.input_size, self._sigma).float()
        return pixel_map_from_grid(grid, self._spread, self.summary.settings.fusion)  # (B, S, S)

    def _repository_number(self, timeout: float) -> int:
        connection = self.connection
        for attempt in ("listed", "after a load"):
            if attempt != "listed":
                connection.load(timeout)
            try:
                versions = connection.repository_versions(timeout)
            except RemoteScoringError:
                if attempt != "listed":
                    raise
                continue
            if versions is None:
                raise RemoteScoringError(
                    f"scoring server {connection.settings.url}: model {connection.settings.model} is neither "
                    f"linewatch serve nor an exported linewatch repository (no {remote_protocol.VERSIONS_PARAMETER})",
                    unreachable=False,
                )
            numbers = [number for number, version in versions.items() if version == self.version]
            if numbers:
                return numbers[0]
        raise RemoteScoringError(
            f"scoring server {connection.settings.url}: model {connection.settings.model} has no version "
            f"{self.version}; export it (linewatch model export --format triton) into the server's repository",
            unreachable=False,
        )

    def predict(self, frames: np.ndarray, product_ids: torch.Tensor) -> Outputs:
        if not self.activated:
            self.activate(float(self.connection.settings.deadline_ms) / 1000.0)
        ids = product_ids.numpy().astype(np.int64)
        scores, probabilities, grids = self.connection.score(frames, ids, self.version, self._number)
        return scores.reshape(-1), probabilities.reshape(-1), self._maps(grids).numpy()

    def calibration(self, product: str) -> Calibration:
        return self._calibrations[product]


@dataclass
class RemoteStats:
    """What metrics and /healthz read; written by the scoring thread only."""

    reachable: bool = True
    last_error: str = ""
    calls: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # "unreachable" | "refused"
    fallback_batches: int = 0


class FailoverEngine:
    """The remote engine with the failure policy of the module docstring; ``local`` is None for fallback
    "none". Its calibration is that of the engine that scored the last batch (one scoring thread)."""

    def __init__(
        self,
        remote: RemoteEngine,
        local: Engine | None,
        hold_s: float,
        retry_s: float,
        stop: threading.Event,
        stats: RemoteStats,
        on_round_trip: Callable[[float], None] = lambda _seconds: None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.remote = remote
        self.local = local
        self.hold_s = hold_s
        self.retry_s = retry_s
        self.stop = stop
        self.stats = stats
        self._on_round_trip = on_round_trip
        self._monotonic = monotonic
        self._next_try = 0.0  # unreachable: the next try after this
        self._skip_until = 0.0  # refused: score locally until this
        self._last: Engine = remote

    @property
    def runtime(self) -> str:
        return self._last.runtime

    @property
    def precision(self) -> str:
        return self._last.precision

    @property
    def waiting(self) -> bool:
        """True while a batch waits for the server with no fallback: the watchdog must not count that as a
        stuck scorer (each try is bounded by the deadline; the daemon is alive and retrying)."""
        return self.local is None and not self.stats.reachable

    def calibration(self, product: str) -> Calibration:
        return self._last.calibration(product)

    def _try_remote(self, frames: np.ndarray, product_ids: torch.Tensor) -> Outputs | RemoteScoringError:
        """The server's scores, or the error that kept it from giving them. An answer the client cannot use
        (a malformed reply, an export record that cannot be read) is a refusal, logged with its traceback."""
        started = self._monotonic()
        self.stats.calls += 1
        try:
            outputs = self.remote.predict(frames, product_ids)
        except RemoteScoringError as error:
            return self._failed(error)
        except Exception as error:  # the scores come from outside: a bad answer must not kill scoring
            log.exception("scoring server %s: unusable answer", self.remote.connection.settings.url)
            return self._failed(RemoteScoringError(f"unusable answer: {type(error).__name__}: {error}", False))
        self._on_round_trip(self._monotonic() - started)
        if not self.stats.reachable:
            log.info("scoring server %s answers again", self.remote.connection.settings.url)
        self.stats.reachable = True
        self.stats.last_error = ""
        self._last = self.remote
        return outputs

    def _failed(self, error: RemoteScoringError) -> RemoteScoringError:
        reason = "unreachable" if error.unreachable else "refused"
        self.stats.errors[reason] = self.stats.errors.get(reason, 0) + 1
        if self.stats.reachable or str(error) != self.stats.last_error:
            log.warning("%s", error)
        self.stats.last_error = str(error)
        return error

    def predict(self, frames: np.ndarray, product_ids: torch.Tensor) -> Outputs:
        now = self._monotonic()
        if now >= self._skip_until and (self.stats.reachable or now >= self._next_try):
            was_reachable = self.stats.reachable
            outcome = self._try_remote(frames, product_ids)
            if not isinstance(outcome, RemoteScoringError):
                return outcome
            if not outcome.unreachable and self.local is not None:
                # The server answered and said no (a version it cannot load, an unusable reply): waiting does not
                # help, and it is not down. Score here and ask again after retry_s.
                self._skip_until = self._monotonic() + self.retry_s
                return self._score_locally(frames, product_ids)
            self.stats.reachable = False
            # fallback "none": wait as long as it takes; "local": hold a while after the first failure only
            hold = float("inf") if self.local is None else (self.hold_s if was_reachable else 0.0)
            hold_until = self._monotonic() + hold
            while (remaining := hold_until - self._monotonic()) > 0:
                if self.stop.wait(min(self.retry_s, remaining)):
                    if self.local is not None:
                        break  # stopping: score what waits here rather than drop it
                    raise ScoringStopped(f"stopped while the scoring server is unreachable ({self.stats.last_error})")
                outcome = self._try_remote(frames, product_ids)
                if not isinstance(outcome, RemoteScoringError):
                    return outcome
            self._next_try = self._monotonic() + self.retry_s
        return self._score_locally(frames, product_ids)

    def _score_locally(self, frames: np.ndarray, product_ids: torch.Tensor) -> Outputs:
        assert self.local is not None  # without a fallback predict only ends with the server's scores
        self.stats.fallback_batches += 1
        self._last = self.local
        return self.local.predict(frames, product_ids)

"""The Triton models ``linewatch serve`` binds through PyTriton, and the server's lifetime.

Two models:

- ``linewatch`` (the name is configurable): the scoring model of :mod:`linewatch.model.remote_protocol`.
  Triton's dynamic batcher merges requests from all lines; each request names its model version in the
  request parameter ``linewatch_version``, and the batch is scored version by version. A version is loaded
  on first use, so the first request for it waits for the load.
- ``linewatch_info``: given a version id, loads it and answers how this server scores it (runtime, device,
  precision, products, input size) as JSON. A line calls it when it activates a version: the load happens
  before the line swaps (explicit model control), and a version the server cannot load fails the
  activation while the old version keeps scoring.

A request naming a version that cannot be loaded fails with the reason (where the server looked); Triton
fails the whole merged batch with it, so the other lines' requests in that batch are retried by their
clients (docs/serving.md).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.model import remote_protocol
from linewatch.serve.catalog import LoadedVersion, VersionCatalog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSettings:
    models: Path
    weights: Path | None
    device: str
    precision: str
    model_name: str = remote_protocol.DEFAULT_MODEL_NAME
    address: str = "0.0.0.0"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    max_batch: int = 64
    queue_delay_us: int = 1000
    max_loaded: int = 8
    tls_cert: Path | None = None
    tls_key: Path | None = None
    preload: tuple[str, ...] = ()


def _version_of(request: Any) -> str:
    parameters = request.parameters or {}
    version = parameters.get(remote_protocol.VERSION_PARAMETER)
    if not isinstance(version, str) or not version:
        raise ValueError(
            f"request without the string parameter {remote_protocol.VERSION_PARAMETER!r} (the model version to "
            "score with)"
        )
    return version


def _checked_inputs(request: Any, loaded: LoadedVersion) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, ids, left_out = request["images"], request["product_ids"], request["left_out_shot"]
    size = loaded.input_size
    if images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
        raise ValueError(
            f"model {loaded.version} takes images of shape (N, {size}, {size}, 3) uint8, got {images.shape} "
            f"{images.dtype}"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= len(loaded.products)):
        raise ValueError(f"product id out of range: model {loaded.version} knows {len(loaded.products)} products")
    return images, ids.astype(np.int64), left_out.astype(np.int64)


class ScoringModels:
    """The infer functions PyTriton calls, around one :class:`VersionCatalog`."""

    def __init__(self, catalog: VersionCatalog) -> None:
        self.catalog = catalog

    def score(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        """Score a merged batch version by version, answering each request with its own rows."""
        by_version: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            by_version.setdefault(_version_of(request), []).append(index)
        answers: list[dict[str, np.ndarray]] = [{} for _ in requests]
        for version, indices in by_version.items():
            loaded = self.catalog.get(version)
            parts = [_checked_inputs(requests[index], loaded) for index in indices]
            images, ids, left_out = (np.concatenate(column) for column in zip(*parts, strict=True))
            scores, probabilities, grids = self.catalog.run(loaded, images, ids, left_out)
            start = 0
            for index, part in zip(indices, parts, strict=True):
                stop = start + part[0].shape[0]
                answers[index] = {
                    "image_score": scores[start:stop],
                    "global_probability": probabilities[start:stop],
                    "fused_grid": grids[start:stop],
                }
                start = stop
        return answers

    def info(self, requests: list[Any]) -> list[dict[str, np.ndarray]]:
        answers = []
        for request in requests:
            version = bytes(request["version"].reshape(-1)[0]).decode()
            loaded = self.catalog.get(version)
            description = {
                **loaded.describe(),
                "runtime": "torch",
                "device": str(self.catalog.device),
                "precision": self.catalog.precision,
            }
            answers.append({"info": np.array([[json.dumps(description).encode()]], dtype=object)})
        return answers


def serve(settings: ServerSettings) -> None:
    """Start tritonserver with both models bound and block until it stops (SIGINT or SIGTERM)."""
    import signal

    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor, TimeoutAction
    from pytriton.triton import Triton, TritonConfig

    catalog = VersionCatalog(
        settings.models, settings.device, settings.precision, settings.max_loaded, settings.weights
    )
    for version in settings.preload:
        catalog.get(version)
    models = ScoringModels(catalog)
    tls: dict[str, Any] = {}
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = {
            "grpc_use_ssl": True,
            "grpc_server_cert": str(settings.tls_cert),
            "grpc_server_key": str(settings.tls_key),
        }
    config = TritonConfig(
        grpc_address=settings.address,
        grpc_port=settings.grpc_port,
        http_address=settings.address,
        http_port=settings.http_port,
        metrics_port=settings.metrics_port,
        exit_timeout_secs=5,
        **tls,
    )
    # Per-sample shapes: the input size varies by version, so the image axes are dynamic (-1).
    score_inputs = [
        Tensor(name="images", dtype=np.uint8, shape=(-1, -1, 3)),
        Tensor(name="product_ids", dtype=np.int64, shape=(1,)),
        Tensor(name="left_out_shot", dtype=np.int64, shape=(1,)),
    ]
    score_outputs = [
        Tensor(name="image_score", dtype=np.float32, shape=(1,)),
        Tensor(name="global_probability", dtype=np.float32, shape=(1,)),
        Tensor(name="fused_grid", dtype=np.float32, shape=(-1, -1)),
    ]
    batching = ModelConfig(
        max_batch_size=settings.max_batch,
        batcher=DynamicBatcher(
            max_queue_delay_microseconds=settings.queue_delay_us,
            # A line gives up after its deadline and sends the request again: one that waited that long in the
            # queue is rejected rather than scored for nobody (lines send their deadline as the timeout).
            default_queue_policy=QueuePolicy(timeout_action=TimeoutAction.REJECT, allow_timeout_override=True),
        ),
    )
    with Triton(config=config) as triton:
        triton.bind(settings.model_name, models.score, score_inputs, score_outputs, config=batching)
        triton.bind(
            remote_protocol.INFO_MODEL,
            models.info,
            [Tensor(name="version", dtype=bytes, shape=(1,))],
            [Tensor(name="info", dtype=bytes, shape=(1,))],
            config=ModelConfig(max_batch_size=4),
        )

        def stop(_signum: int, _frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        log.info(
            "scoring server up: gRPC %s:%d, HTTP %d, metrics %d; models from %s on %s %s",
            settings.address,
            settings.grpc_port,
            settings.http_port,
            settings.metrics_port,
            settings.models,
            settings.device,
            settings.precision,
        )
        triton.serve()

"""The tensors a line PC and a Triton scoring server exchange, and how a linewatch model version is named.

One contract for both servers: a stock ``tritonserver`` on the repository that ``linewatch model export
--format triton`` writes, and ``linewatch serve`` (PyTriton). Per frame, the line PC sends the image it
already resized to the model's input size as bytes, its product's index in the model and the memory-bank
shot to leave out (-1: none; only calibration uses it); the server answers the image score, the global
probability and the fused g x g patch grid (:class:`~linewatch.anople.graph.RemoteGraph`), from which the
line PC rebuilds the full map. Shapes are per sample, without the batch axis that Triton's batcher adds.

Versions. A linewatch version id is ``NAME@HASH`` (the registry's). Triton numbers versions, so an exported
repository lists which number holds which id in its model config parameter :data:`VERSIONS_PARAMETER`
(JSON ``{"3": "20260301T020000Z@ab12..."}``); ``linewatch serve`` instead loads whichever id a request names
in its parameter :data:`VERSION_PARAMETER`, from the models folder it serves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

DEFAULT_MODEL_NAME = "linewatch"
VERSION_PARAMETER = "linewatch_version"  # request parameter: the version id to score with (linewatch serve)
VERSIONS_PARAMETER = "linewatch_versions"  # model config parameter: JSON {triton version: version id}
INFO_MODEL = "linewatch_info"  # linewatch serve only: JSON bytes saying how it scores (runtime, precision)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: type[np.generic]
    shape: tuple[int, ...]  # per sample

    @property
    def triton_dtype(self) -> str:
        """The KServe v2 / Triton datatype name (``TYPE_`` prefixed in config.pbtxt)."""
        return {np.uint8: "UINT8", np.int64: "INT64", np.float32: "FP32"}[self.dtype]


def inputs(input_size: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("images", np.uint8, (input_size, input_size, 3)),
        TensorSpec("product_ids", np.int64, (1,)),
        TensorSpec("left_out_shot", np.int64, (1,)),
    )


def outputs(grid: int) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec("image_score", np.float32, (1,)),
        TensorSpec("global_probability", np.float32, (1,)),
        TensorSpec("fused_grid", np.float32, (grid, grid)),
    )


def encode_versions(versions: dict[int, str]) -> str:
    """{triton version: linewatch version id} -> the JSON string stored in the model config."""
    return json.dumps({str(number): version for number, version in sorted(versions.items())}, sort_keys=True)


def decode_versions(text: str) -> dict[int, str]:
    """The model config's JSON -> {triton version: version id}; a malformed entry is an error naming it."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"model config parameter {VERSIONS_PARAMETER} is not JSON: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"model config parameter {VERSIONS_PARAMETER} must be a JSON object, got {text[:80]!r}")
    versions: dict[int, str] = {}
    for number, version in raw.items():
        if not str(number).isdigit() or int(number) < 1 or not isinstance(version, str) or "@" not in version:
            raise ValueError(f"model config parameter {VERSIONS_PARAMETER}: bad entry {number!r}: {version!r}")
        versions[int(number)] = version
    return versions

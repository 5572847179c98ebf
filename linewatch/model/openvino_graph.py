"""OpenVINO: turn a :class:`~linewatch.anople.graph.ScoringGraph` into an IR model, quantise it, run it.

The graph goes through ``torch.export`` (batch size dynamic) and ``openvino.convert_model``: tracing with
TorchScript failed its own sanity check on the decoder's transformer layer, the exported program converts
exactly (fp32 within 2e-7 of PyTorch). Precisions:

- ``fp32``: compiled with ``INFERENCE_PRECISION_HINT = f32``. Said explicitly because OpenVINO picks bf16
  by itself on CPUs with AMX, and a user who asked for fp32 must get it.
- ``bf16``: the same IR compiled with the bf16 hint (weights stay fp32 on disk).
- ``int8``: NNCF post-training quantisation (transformer preset) on calibration inputs, then compiled with
  the bf16 hint where the CPU has bf16, f32 otherwise, for the operations that stay in floating point.

Compiled blobs go to a cache folder per CPU, so the second start of a daemon skips compilation, and a
copied model folder on another CPU compiles its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from linewatch.anople.graph import ScoringGraph

# With the openvino-telemetry package importable, OpenVINO sends a usage event at every `import openvino`
# (from a thread pool that outlives it) and NNCF more while quantising. A line PC sends nothing: both fall
# back to their built-in stubs when the import fails, which a None entry in sys.modules makes it do.
sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
import openvino as ov  # noqa: E402

log = logging.getLogger(__name__)

INPUTS = ("images", "product_ids", "left_out_shot")
OUTPUTS = ("image_score", "global_probability", "pixel_map")
MAX_BATCH = 1024
_DEVICE = "CPU"


class OpenVinoError(RuntimeError):
    """An exported model that cannot be built, compiled or run on this machine; the message names it."""


def convert(graph: ScoringGraph, example: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> ov.Model:
    """The graph as an OpenVINO model with named inputs and outputs and a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(graph.eval(), example, dynamic_shapes=({0: batch}, {0: batch}, {0: batch}))
    model = ov.convert_model(program)
    for port, name in zip(model.inputs, INPUTS, strict=True):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, OUTPUTS, strict=True):
        port.get_tensor().set_names({name})
    return model


def quantize_int8(
    model: ov.Model, calibration: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], tower_length: int
) -> ov.Model:
    """NNCF post-training INT8 of ``model`` on ``calibration`` (input batches in INPUTS order).

    Only the vision tower's matrix products are quantised: those whose input runs over the tower's whole
    token sequence (``tower_length`` = CLS, patches, view token and prompts). The patch embedding (a
    convolution), the decoder, the memory-bank comparison, the projection to the joint space and the fusion
    stay in floating point: they are a small share of the work (the patch embedding 0.4 % of
    ViT-B-16-plus-240's), and the global probability (a softmax at temperature 100) and a cosine distance
    near 0 are exactly what 8 bits would round away. Measured on the tiny test model: rank correlation
    with fp32 0.9952 quantising everything, 0.9983 the tower's matrix products only; with the scaled-mean
    fusion, largest score error 0.0054 with the patch embedding quantised, 0.0029 without.
    """
    import nncf  # seconds of imports that only an INT8 export needs

    nncf.set_log_level(logging.WARNING)  # its INFO lines name internal graph nodes
    nncf_log = logging.getLogger("nncf")  # its own handler prints to stdout, the commands' output: ours log
    nncf_log.handlers.clear()
    nncf_log.propagate = True
    dataset = nncf.Dataset(list(calibration), lambda item: dict(zip(INPUTS, item, strict=True)))
    outside_tower = [
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if (op.get_type_name() == "MatMul" and tower_length not in _static_dims(op))
        or op.get_type_name() == "Convolution"
    ]
    with contextlib.redirect_stdout(sys.stderr):  # its progress bars: stdout is the commands' output
        return nncf.quantize(
            model,
            dataset,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(names=outside_tower, validate=False),
        )


def _static_dims(op: ov.Node) -> list[int]:
    return [dim.get_length() for dim in op.get_input_partial_shape(0) if dim.is_static]


def save(model: ov.Model, xml_path: Path) -> None:
    """IR on disk (xml + bin), weights kept at full precision: bf16 and INT8 are chosen at compile time or
    already in the quantised graph."""
    ov.save_model(model, str(xml_path), compress_to_fp16=False)


def cpu_key(core: ov.Core) -> str:
    """What a compiled blob depends on besides the model: the CPU's name and instruction sets, and the
    OpenVINO version. A cache folder per key keeps blobs of different machines apart."""
    name = str(core.get_property(_DEVICE, "FULL_DEVICE_NAME"))
    capabilities = ",".join(sorted(str(c) for c in core.get_property(_DEVICE, "OPTIMIZATION_CAPABILITIES")))
    text = f"{name}|{capabilities}|{ov.get_version()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _compile_config(precision: str, core: ov.Core, threads: int) -> dict[str, object]:
    capabilities = {str(c) for c in core.get_property(_DEVICE, "OPTIMIZATION_CAPABILITIES")}
    if precision == "fp32":
        hint = "f32"
    elif precision == "bf16":
        if "BF16" not in capabilities:
            raise OpenVinoError(f"this CPU has no bf16 support ({sorted(capabilities)}); use precision fp32 or int8")
        hint = "bf16"
    else:
        hint = "bf16" if "BF16" in capabilities else "f32"
    config: dict[str, object] = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class CompiledGraph:
    """One compiled scoring graph on the CPU. ``run`` is called by one thread at a time (the scorer's);
    a lock makes a second caller (a warm-up, a test) wait rather than share the request."""

    def __init__(self, model: ov.Model | Path, precision: str, cache_root: Path | None = None, threads: int = 0):
        core = ov.Core()
        where = str(model) if isinstance(model, Path) else "the exported graph"
        if cache_root is not None:
            cache = cache_root / cpu_key(core)
            try:
                cache.mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": str(cache)})
            except OSError as error:  # a read-only model folder: it compiles at every start instead
                log.warning("no compiled-model cache in %s (%s): compiling at every start", cache, error)
        try:
            source = str(model) if isinstance(model, Path) else model
            self._compiled = core.compile_model(source, _DEVICE, _compile_config(precision, core, threads))
        except OpenVinoError:
            raise
        except Exception as error:  # OpenVINO raises plain RuntimeErrors with the plugin's message
            raise OpenVinoError(f"{where}: OpenVINO could not compile it for this CPU ({error})") from error
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()

    def run(
        self, images: np.ndarray, product_ids: np.ndarray, left_out_shot: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """images (B, 3, S, S) float32 in [0, 1], product_ids (B,) -> image score (B,), global probability
        (B,), pixel map (B, S, S), all float32 and owned by the caller."""
        if left_out_shot is None:
            left_out_shot = np.full(product_ids.shape, -1, dtype=np.int64)
        inputs = [
            np.ascontiguousarray(images, dtype=np.float32),
            np.ascontiguousarray(product_ids, dtype=np.int64),
            np.ascontiguousarray(left_out_shot, dtype=np.int64),
        ]
        with self._lock:
            results = self._request.infer(inputs)
        return tuple(np.array(results[name], dtype=np.float32) for name in OUTPUTS)  # type: ignore[return-value]

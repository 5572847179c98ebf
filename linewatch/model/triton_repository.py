"""Export a model version into a Triton Inference Server model repository, for a stock ``tritonserver``.

What is exported is :class:`~linewatch.anople.graph.RemoteGraph` over the model's
:class:`~linewatch.anople.graph.ScoringGraph`, in fp32, with a dynamic batch axis: uint8 frames the line PC
already resized, product ids and the left-out shot in; image score, global probability and the fused patch
grid out (the tensors of :mod:`linewatch.model.remote_protocol`). Layout, for model name NAME::

    DIR/NAME/config.pbtxt          backend, batching, instances, tensors, the version mapping
    DIR/NAME/1/model.onnx          onnxruntime backend (or model.xml + model.bin: openvino backend)
    DIR/NAME/2/...

Versions. Triton numbers a model's versions; linewatch names them ``NAME@HASH``. Each exported linewatch
version gets the next number after the folders and mapped numbers already there; exporting a version the
config already maps rewrites its folder under the same number, so an export can be repeated. The config
parameter :data:`~linewatch.model.remote_protocol.VERSIONS_PARAMETER` holds the mapping, and
``version_policy { all { } }`` makes the server load every version, so a line PC can ask for any of them.

Atomic enough for a server that polls the repository: a version folder is filled under a hidden name (Triton
ignores version folders whose name is not a number) and renamed into place; the config is written to a hidden
file and renamed over the old one, after the folder, so it never maps a number that is not there yet.

Thresholds. An fp32 export scores as PyTorch fp32 does (the parity gate below holds it to it), so the
artifact's own thresholds apply to what the server answers; none are calibrated here (unlike INT8 in
:mod:`linewatch.model.export`).

Parity gate, before anything is written to the repository: the exported file, reloaded from disk, runs in
onnxruntime (CPU provider) or OpenVINO (CPU, fp32) on every product's calibration normals and simulated
anomalies (:func:`~linewatch.model.export.calibration_sets`), and its image scores and grids must match
PyTorch's within :data:`~linewatch.model.export.FP32_TOLERANCE` (grid values above 1: relative to them);
otherwise :class:`ExportError` names the worst difference.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from linewatch.anople.artifact import ArtifactInfo
from linewatch.anople.graph import NO_SHOT_LEFT_OUT, RemoteGraph, ScoringGraph
from linewatch.anople.model import AnoPLe
from linewatch.model import remote_protocol as protocol
from linewatch.model.export import BATCH, FP32_TOLERANCE, IR_FILE, CalibrationSet, ExportError, calibration_sets

BACKENDS = ("onnxruntime", "openvino")
INSTANCE_KINDS = ("cpu", "gpu")
CONFIG_FILE = "config.pbtxt"
ONNX_FILE = "model.onnx"
# Opset 17 is the newest that the TorchScript-based exporter and the onnxruntime of every Triton release
# since 23.x both know.
ONNX_OPSET = 17
DEFAULT_MAX_BATCH = 64
DEFAULT_QUEUE_DELAY_US = 2000

# (images (B, S, S, 3) uint8, product ids (B, 1), left-out shot (B, 1)) -> score (B, 1), probability, grid
_Run = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, ...]]


@dataclass(frozen=True)
class TritonSettings:
    """How the server runs the model: its backend, batching and instances (the config's, not the file's).

    ``instance_kind`` None picks the backend's usual device: the GPU for onnxruntime (what a scoring server
    is for), the CPU for OpenVINO (Triton's OpenVINO backend runs on the CPU only).
    """

    backend: str = "onnxruntime"
    max_batch: int = DEFAULT_MAX_BATCH
    instances: int = 1
    instance_kind: str | None = None
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ExportError(f"Triton backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.instance_kind is not None and self.instance_kind not in INSTANCE_KINDS:
            raise ExportError(f"instance kind must be one of {', '.join(INSTANCE_KINDS)}, got {self.instance_kind!r}")
        if self.backend == "openvino" and self.kind == "gpu":
            raise ExportError("Triton's OpenVINO backend runs on the CPU only: use --instance-kind cpu")
        for label, value, least in (
            ("max batch", self.max_batch, 1),
            ("instances", self.instances, 1),
            ("queue delay (microseconds)", self.queue_delay_us, 0),
        ):
            if value < least:
                raise ExportError(f"{label} must be at least {least}, got {value}")

    @property
    def kind(self) -> str:
        if self.instance_kind is not None:
            return self.instance_kind
        return "gpu" if self.backend == "onnxruntime" else "cpu"

    @property
    def model_files(self) -> tuple[str, ...]:
        return (ONNX_FILE,) if self.backend == "onnxruntime" else (IR_FILE, Path(IR_FILE).with_suffix(".bin").name)


@dataclass(frozen=True)
class TritonExport:
    """One exported version: where it went and how closely the exported file matched PyTorch."""

    model_dir: Path
    number: int
    version: str
    versions: dict[int, str]
    backend: str
    n_images: int
    max_score_error: float
    max_grid_error: float

    def describe(self) -> str:
        return (
            f"{self.model_dir / str(self.number)}: {self.version} as Triton version {self.number} "
            f"({self.backend}); fp32 vs PyTorch on {self.n_images} images: max |score error| "
            f"{self.max_score_error:.2e}, max grid error {self.max_grid_error:.2e} (needs <= {FP32_TOLERANCE:g})"
        )


def export_triton(
    directory: Path,
    model: AnoPLe,
    info: ArtifactInfo,
    version: str,
    repository: Path,
    name: str = protocol.DEFAULT_MODEL_NAME,
    settings: TritonSettings | None = None,
    log: Callable[[str], None] = print,
) -> TritonExport:
    """Export the model folder ``directory`` (loaded as ``model``, ``info``) as linewatch version ``version``
    (``NAME@HASH``, the registry's id) into ``repository``/``name``, gated as the module says; ExportError
    says why not, and then nothing in the repository has changed."""
    settings = settings or TritonSettings()
    if "@" not in version:
        raise ExportError(f"a linewatch version id is NAME@HASH, got {version!r}")
    if not name or name.startswith(".") or Path(name).name != name:
        raise ExportError(f"the Triton model name must be a plain folder name, got {name!r}")
    model_dir = repository / name
    versions = repository_versions(model_dir)
    number = next((n for n, v in versions.items() if v == version), None) or _next_number(model_dir, versions)
    versions = {**versions, number: version}
    graph = ScoringGraph(model.to("cpu").eval()).eval()
    remote = RemoteGraph(graph).eval()
    config = render_config(name, settings, model.input_size, graph.grid, versions)
    _check_compatible(model_dir, config)
    sets = calibration_sets(directory, model, info, graph)
    example = _example(sets[0])
    with tempfile.TemporaryDirectory(prefix="linewatch-triton-") as scratch:
        files = Path(scratch)
        log(f"converting {directory} to {settings.backend} for Triton")
        if settings.backend == "onnxruntime":
            _save_onnx(remote, example, files / ONNX_FILE)
            run = _onnx_runner(files / ONNX_FILE)
        else:
            _save_openvino(remote, example, model.input_size, files / IR_FILE)
            run = _openvino_runner(files / IR_FILE)
            log(
                "note: Triton's OpenVINO backend has no setting for fp32; on a CPU with bf16 (AVX512_BF16, AMX) "
                "OpenVINO computes in bf16 and the scores move off the fp32 thresholds; use onnxruntime there"
            )
        n_images, score_error, grid_error, worst = _parity(remote, run, sets)
        if max(score_error, grid_error) > FP32_TOLERANCE:
            raise ExportError(
                f"{directory}: Triton export refused, {settings.backend} fp32 vs PyTorch on {n_images} images: "
                f"worst difference {worst} (needs <= {FP32_TOLERANCE:g})"
            )
        try:
            _install_version(files, model_dir, number)
            _write_config(model_dir, config)
        except OSError as error:
            raise ExportError(f"{model_dir}: cannot write the Triton model ({error})") from error
    return TritonExport(model_dir, number, version, versions, settings.backend, n_images, score_error, grid_error)


def repository_versions(model_dir: Path) -> dict[int, str]:
    """{Triton version number: linewatch version id} as the model's config maps them; {} without a config."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        parameters = {p["key"][0]: p["value"][0] for p in parse_config(path.read_text()).get("parameters", [])}
        return protocol.decode_versions(parameters[protocol.VERSIONS_PARAMETER]["string_value"][0])
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ExportError(
            f"{path}: not a config that linewatch wrote ({error}); export to another --triton-model or remove it"
        ) from error


def render_config(name: str, settings: TritonSettings, input_size: int, grid: int, versions: dict[int, str]) -> str:
    """config.pbtxt in protobuf text format. No preferred_batch_size: without one, Triton's batcher already
    grows each batch towards max_batch_size within the queue delay, and preferred sizes only help engines
    built for fixed sizes. The OpenVINO backend compiles the model at max_batch_size and refuses smaller
    batches unless told to pad them (ENABLE_BATCH_PADDING)."""
    lines = [
        "# Written by `linewatch model export --format triton`; the next export rewrites it.",
        f"name: {_quote(name)}",
        f"backend: {_quote(settings.backend)}",
        f"max_batch_size: {settings.max_batch}",
        "version_policy: { all { } }",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {settings.queue_delay_us}",
        "  default_queue_policy {",  # lines send their deadline as the request timeout: late requests are dropped
        "    timeout_action: REJECT",
        "    allow_timeout_override: true",
        "  }",
        "}",
        "instance_group [",
        "  {",
        f"    count: {settings.instances}",
        f"    kind: KIND_{settings.kind.upper()}",
        "  }",
        "]",
        *_tensors("input", protocol.inputs(input_size)),
        *_tensors("output", protocol.outputs(grid)),
        *_parameter(protocol.VERSIONS_PARAMETER, protocol.encode_versions(versions)),
    ]
    if settings.backend == "openvino":
        lines += _parameter("ENABLE_BATCH_PADDING", "YES")
    return "\n".join(lines) + "\n"


def _tensors(kind: str, specs: tuple[protocol.TensorSpec, ...]) -> list[str]:
    blocks = [
        f"  {{\n    name: {_quote(spec.name)}\n    data_type: TYPE_{spec.triton_dtype}\n"
        f"    dims: [ {', '.join(str(d) for d in spec.shape)} ]\n  }}"
        for spec in specs
    ]
    return [f"{kind} [", ",\n".join(blocks), "]"]


def _parameter(key: str, value: str) -> list[str]:
    return ["parameters {", f"  key: {_quote(key)}", f"  value {{ string_value: {_quote(value)} }}", "}"]


def _quote(text: str) -> str:
    """A protobuf text-format string literal (JSON's quotes and backslashes escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\\n]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"#]+')


def parse_config(text: str) -> dict[str, list[Any]]:
    """A config.pbtxt's text as nested dicts, every field a list of its values (protobuf fields may repeat):
    enough of the text format to read back what :func:`render_config` writes, to compare it and read its
    version mapping. A text it cannot read is a ValueError."""
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise ValueError(f"unexpected character {text[position]!r} at offset {position}")
        token, position = match.group(), match.end()
        if not token.isspace() and not token.startswith("#"):
            tokens.append(token)
    try:
        return _message(tokens, 0, None)[0]
    except IndexError:
        raise ValueError("it ends inside a field or block") from None


def _message(tokens: list[str], position: int, closing: str | None) -> tuple[dict[str, list[Any]], int]:
    fields: dict[str, list[Any]] = {}
    while position < len(tokens) and tokens[position] != closing:
        name = tokens[position]
        position += 2 if tokens[position + 1] == ":" else 1
        values, position = _value(tokens, position)
        fields.setdefault(name, []).extend(values)
    if closing is not None and position >= len(tokens):
        raise ValueError(f"missing {closing!r}")
    return fields, position + (closing is not None)


def _value(tokens: list[str], position: int) -> tuple[list[Any], int]:
    token = tokens[position]
    if token == "{":
        message, position = _message(tokens, position + 1, "}")
        return [message], position
    if token == "[":
        values: list[Any] = []
        position += 1
        while tokens[position] != "]":
            item, position = _value(tokens, position)
            values.extend(item)
            position += tokens[position] == ","
        return values, position + 1
    if token.startswith('"'):
        return [re.sub(r"\\(.)", r"\1", token[1:-1])], position + 1
    return [int(token) if re.fullmatch(r"-?\d+", token) else token], position + 1


def _next_number(model_dir: Path, versions: dict[int, str]) -> int:
    """After every version folder and every mapped number, so no number is ever given to two versions."""
    folders = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and re.fullmatch(r"[1-9]\d*", p.name)]
    return max([0, *folders, *versions]) + 1


def _check_compatible(model_dir: Path, config: str) -> None:
    """The versions of one Triton model share its config: a new one must need the same backend and tensors."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return
    new, old = parse_config(config), parse_config(path.read_text())
    for field in ("backend", "input", "output"):
        if old.get(field) != new[field]:
            raise ExportError(
                f"{path}: its versions have another {field} ({old.get(field)}) than this export "
                f"({new[field]}); export to another --triton-model"
            )


def _example(calibration_set: CalibrationSet) -> tuple[Tensor, Tensor, Tensor]:
    """Two frames of the first product: a batch of 1 would let the tracer fix the batch size."""
    images = _frames(calibration_set.normals[:1]).repeat(2, 1, 1, 1)
    return images, torch.full((2, 1), calibration_set.product_id), torch.full((2, 1), NO_SHOT_LEFT_OUT)


def _frames(images: Tensor) -> Tensor:
    """(B, 3, S, S) in [0, 1] -> (B, S, S, 3) uint8, what a line PC sends."""
    return (images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


@contextlib.contextmanager
def _mha_fastpath_off() -> Iterator[None]:
    """Without gradients, nn.MultiheadAttention (the decoder's) runs one fused kernel that the TorchScript
    exporter has no ONNX translation for; off, it traces as the plain matrix products. Process-wide while on."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _save_onnx(remote: RemoteGraph, example: tuple[Tensor, Tensor, Tensor], path: Path) -> None:
    """The TorchScript-based exporter: the torch.export-based one needs onnxscript besides, for no gain here.
    Its warnings are not for the user: that it is deprecated (known, and chosen), and the tracer's about
    nn.MultiheadAttention's shape checks, constants of one model; the parity gate's batches of several sizes
    are what shows that the trace generalises."""
    names = [spec.name for spec in (*protocol.inputs(1), *protocol.outputs(1))]
    with _mha_fastpath_off(), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            remote,
            example,
            str(path),
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=names[:3],
            output_names=names[3:],
            dynamic_axes={name: {0: "batch"} for name in names},
        )


def _onnx_runner(path: Path) -> _Run:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [spec.name for spec in protocol.inputs(1)]

    def run(images: np.ndarray, ids: np.ndarray, left_out: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(session.run(None, dict(zip(names, (images, ids, left_out), strict=True))))

    return run


def _save_openvino(remote: RemoteGraph, example: tuple[Tensor, Tensor, Tensor], input_size: int, path: Path) -> None:
    """As :func:`linewatch.model.openvino_graph.convert`, with the remote tensors' names, and the per-sample
    dimensions fixed (the conversion leaves every input dimension open), as Triton's config states them."""
    from linewatch.model import openvino_graph  # keeps OpenVINO's telemetry from loading, then OpenVINO

    ov = openvino_graph.ov
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(
            remote.eval(), example, dynamic_shapes=({0: batch}, {0: batch}, {0: batch})
        )
    ov_model = ov.convert_model(program)
    inputs, outputs = protocol.inputs(input_size), protocol.outputs(1)
    for port, spec in zip(ov_model.inputs, inputs, strict=True):
        port.get_tensor().set_names({spec.name})
    for port, spec in zip(ov_model.outputs, outputs, strict=True):
        port.get_tensor().set_names({spec.name})
    ov_model.reshape({spec.name: ov.PartialShape([-1, *spec.shape]) for spec in inputs})
    openvino_graph.save(ov_model, path)


def _openvino_runner(path: Path) -> _Run:
    """Compiled in fp32 (OpenVINO would pick bf16 by itself where the CPU has it): the file is checked here,
    not the precision some server's CPU would choose."""
    from linewatch.model import openvino_graph

    ov = openvino_graph.ov
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    names = [spec.name for spec in protocol.outputs(1)]

    def run(images: np.ndarray, ids: np.ndarray, left_out: np.ndarray) -> tuple[np.ndarray, ...]:
        results = request.infer([images, ids, left_out])
        return tuple(np.array(results[name]) for name in names)

    return run


def _parity(remote: RemoteGraph, run: _Run, sets: list[CalibrationSet]) -> tuple[int, float, float, str]:
    """Images scored, largest score and grid difference, and where the worst of them was. Grid values count
    in multiples of the normals' mean and reach tens, where float rounding grows with them: a grid value's
    difference is taken relative to the value where that is above 1."""
    n_images, score_error, grid_error, worst, worst_error = 0, 0.0, 0.0, "none", -1.0
    for s in sets:
        groups = [("calibration normal", s.normals, s.left_out)] + [
            ("simulated anomaly", images, torch.full((images.shape[0],), NO_SHOT_LEFT_OUT)) for images in s.simulated
        ]
        counters: dict[str, int] = {}
        for label, images, left_out in groups:
            for start in range(0, images.shape[0], BATCH):
                frames = _frames(images[start : start + BATCH])
                ids = torch.full((frames.shape[0], 1), s.product_id)
                shots = left_out[start : start + BATCH, None].to(torch.int64)
                with torch.inference_mode():
                    expected = [t.numpy() for t in remote(frames, ids, shots)]
                got = run(frames.numpy(), ids.numpy(), shots.numpy())
                scores = np.abs(got[0] - expected[0])[:, 0]
                grids = (np.abs(got[2] - expected[2]) / np.maximum(1.0, np.abs(expected[2]))).reshape(len(frames), -1)
                grids = grids.max(axis=1)
                for index, (score, grid) in enumerate(zip(scores, grids, strict=True)):
                    for what, error in (("image score", float(score)), ("grid", float(grid))):
                        if error > worst_error:
                            number = counters.get(label, 0) + index
                            worst, worst_error = f"{error:.2e} on the {what} of {s.product!r} {label} {number}", error
                counters[label] = counters.get(label, 0) + frames.shape[0]
                score_error = max(score_error, float(scores.max()))
                grid_error = max(grid_error, float(grids.max()))
                n_images += frames.shape[0]
    return n_images, score_error, grid_error, worst


def _install_version(files: Path, model_dir: Path, number: int) -> None:
    """Copy the version's files into a hidden sibling of its folder, then rename it into place; a folder
    already there is renamed away first (for the moment between the two renames the number is absent,
    never half written)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    target = model_dir / str(number)
    staging = Path(tempfile.mkdtemp(prefix=f".{number}.", dir=model_dir))
    try:
        for file in files.iterdir():
            shutil.copyfile(file, staging / file.name)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the version from a server running as another user
        retired = model_dir / f".{number}.old"
        shutil.rmtree(retired, ignore_errors=True)
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_config(model_dir: Path, config: str) -> None:
    descriptor, name = tempfile.mkstemp(prefix=f".{CONFIG_FILE}.", dir=model_dir)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(config)
        os.chmod(name, 0o644)  # mkstemp's 0600, as above
        os.replace(name, model_dir / CONFIG_FILE)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise

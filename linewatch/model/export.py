"""Export a model (artifact folder) to an inference runtime, with thresholds of its own and a parity gate.

An export lives inside the artifact, ``exports/<runtime>-<precision>/``: the runtime's model files, the
compiled-blob cache (one folder per CPU) and ``export.json``, which names the sha256 of the artifact it
was made from, so a retrained or recalibrated version never runs on a stale export.

Thresholds. A threshold fitted on PyTorch fp32 scores means nothing for INT8 scores, so each export
scores the product's calibration normals again, the way training did (held-out normals, or each shot
left out of the memory bank in turn, or the augmented single shot), and calibrates on its own scores. If
the artifact's threshold differs from what PyTorch fp32 gives on those normals (a recalibration from
confirmed normals, or an edited threshold), that difference is carried over.

Parity gate, on the calibration normals and simulated anomalies made from them (several rounds, so at
least ``MIN_PARITY_IMAGES`` per product): fp32 must match PyTorch within ``FP32_TOLERANCE`` on every
image score; bf16 and INT8 must keep a Spearman rank correlation of ``MIN_SPEARMAN`` with PyTorch fp32
and agree on ``MIN_AGREEMENT`` of the verdicts, each at its own threshold. Otherwise nothing is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from linewatch import __version__
from linewatch.anople.artifact import ArtifactInfo
from linewatch.anople.backbone import file_sha256
from linewatch.anople.calibrate import SCORE_MAX, Calibration, calibrate
from linewatch.anople.files import LEARNED, MANIFEST, MEMORY
from linewatch.anople.graph import NO_SHOT_LEFT_OUT, ScoringGraph
from linewatch.anople.model import AnoPLe
from linewatch.anople.simulate import simulate_anomalies
from linewatch.images import ImageError, read_rgb
from linewatch.model.preprocess import to_model_tensor
from linewatch.model.training import MAX_CALIBRATION_IMAGES, augmented_shots

EXPORT_PRECISIONS = ("fp32", "bf16", "int8")
EXPORTS_DIR = "exports"
RECORD = "export.json"
IR_FILE = "model.xml"
CACHE_DIR = "cache"
RECORD_FORMAT = "linewatch-export"
BATCH = 8
MIN_PARITY_IMAGES = 200
FP32_TOLERANCE = 1e-4
MIN_SPEARMAN = 0.995
MIN_AGREEMENT = 0.99

# (images (B, 3, S, S) float32, product ids (B,), left-out shot (B,)) -> image score, probability, map
Runner = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


class ExportError(ValueError):
    """An export that cannot be made or used; the message names the model, product or check at fault."""


def artifact_sha256(directory: Path) -> str:
    """One digest over the files that define a model's scores (manifest, learned tensors, memory banks)."""
    digest = hashlib.sha256()
    for name in (MANIFEST, LEARNED, MEMORY):
        digest.update(f"{name}:{file_sha256(directory / name)}\n".encode())
    return digest.hexdigest()


def export_dir(directory: Path, runtime: str, precision: str) -> Path:
    return directory / EXPORTS_DIR / f"{runtime}-{precision}"


@dataclass(frozen=True)
class Parity:
    """How the export's image scores compare with PyTorch fp32's on the same images."""

    precision: str
    n_images: int
    max_abs_error: float
    spearman: float
    verdict_agreement: float

    @property
    def passed(self) -> bool:
        if self.precision == "fp32":
            return self.max_abs_error <= FP32_TOLERANCE
        return self.spearman >= MIN_SPEARMAN and self.verdict_agreement >= MIN_AGREEMENT

    def describe(self) -> str:
        needs = (
            f"max |error| <= {FP32_TOLERANCE:g}"
            if self.precision == "fp32"
            else f"Spearman >= {MIN_SPEARMAN} and verdict agreement >= {MIN_AGREEMENT:.0%}"
        )
        return (
            f"{self.precision} vs PyTorch fp32 on {self.n_images} images: max |error| {self.max_abs_error:.2e}, "
            f"Spearman {self.spearman:.4f}, verdicts agree {self.verdict_agreement:.2%} (needs {needs})"
        )


@dataclass(frozen=True)
class ExportRecord:
    """The contents of ``export.json``."""

    runtime: str
    precision: str
    artifact_sha256: str
    calibrations: dict[str, Calibration]
    threshold_shifts: dict[str, float]  # artifact threshold minus PyTorch fp32's own, carried over
    parity: Parity
    created_at: str
    versions: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "runtime": self.runtime,
            "precision": self.precision,
            "artifact_sha256": self.artifact_sha256,
            "calibrations": {name: calibration.to_dict() for name, calibration in self.calibrations.items()},
            "threshold_shifts": self.threshold_shifts,
            "parity": asdict(self.parity),
            "created_at": self.created_at,
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportRecord:
        return cls(
            runtime=data["runtime"],
            precision=data["precision"],
            artifact_sha256=data["artifact_sha256"],
            calibrations={name: Calibration.from_dict(value) for name, value in data["calibrations"].items()},
            threshold_shifts={name: float(value) for name, value in data["threshold_shifts"].items()},
            parity=Parity(**data["parity"]),
            created_at=data["created_at"],
            versions=dict(data["versions"]),
        )


def current_export(directory: Path, runtime: str, precision: str) -> ExportRecord | None:
    """The export of this exact artifact, or None when there is none or it was made from other files."""
    path = export_dir(directory, runtime, precision) / RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        record = ExportRecord.from_dict(data) if data.get("format") == RECORD_FORMAT else None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ExportError(f"{path}: unreadable export record ({error}); delete the folder to export again") from error
    if record is None or record.artifact_sha256 != artifact_sha256(directory):
        return None
    return record


def describe_exports(directory: Path) -> list[dict[str, Any]]:
    """The exports in a model folder for ``linewatch model info``: precision, thresholds, parity, and whether
    they were made from the folder's current files (a stale one is exported again before it scores)."""
    described = []
    for path in sorted((directory / EXPORTS_DIR).glob(f"*/{RECORD}")):
        try:
            record = ExportRecord.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            described.append({"path": str(path.parent), "error": f"unreadable export record ({error})"})
            continue
        described.append(
            {
                "path": str(path.parent),
                "runtime": record.runtime,
                "precision": record.precision,
                "current": record.artifact_sha256 == artifact_sha256(directory),
                "thresholds": {name: c.threshold for name, c in record.calibrations.items()},
                "parity": record.parity.describe(),
                "created_at": record.created_at,
            }
        )
    return described


@dataclass(frozen=True)
class CalibrationSet:
    """One product's calibration normals as training scored them, and simulated anomalies made from them."""

    product: str
    product_id: int
    source: str
    normals: torch.Tensor  # (n, 3, S, S)
    left_out: torch.Tensor  # (n,) the shot left out of the bank for each normal, or NO_SHOT_LEFT_OUT
    simulated: list[torch.Tensor]  # rounds of (m, 3, S, S); the first is the one calibration reports


def _recorded_image(directory: Path, record: dict[str, str], product: str) -> np.ndarray:
    path = Path(record.get("path", ""))
    path = path if path.is_absolute() else directory / path
    if not path.is_file():
        raise ExportError(f"product {product!r}: calibration image {path} is gone; the export re-scores it")
    if file_sha256(path) != record.get("sha256"):
        raise ExportError(f"product {product!r}: {path} changed since the model was trained (sha256 differs)")
    try:
        return read_rgb(path)
    except ImageError as error:
        raise ExportError(f"product {product!r}: {error}") from error


def calibration_sets(directory: Path, model: AnoPLe, info: ArtifactInfo, graph: ScoringGraph) -> list[CalibrationSet]:
    """Rebuild each product's calibration inputs from the images the artifact records (checked by sha256)."""
    seed = int(info.training.get("seed", 0))
    sets = []
    for product_id, product in enumerate(model.products):
        record = info.products[product]
        held_out = [_recorded_image(directory, r, product) for r in record.calibration_images[:MAX_CALIBRATION_IMAGES]]
        shots = [_recorded_image(directory, r, product) for r in record.shots]
        if held_out:
            source, normals = "held-out normals", to_model_tensor(held_out, model.input_size)
            left_out = torch.full((normals.shape[0],), NO_SHOT_LEFT_OUT)
        elif len(shots) >= 2:
            if len(shots) != graph.shots[product_id]:
                raise ExportError(
                    f"product {product!r}: the model records {len(shots)} shots but its memory bank holds "
                    f"{graph.shots[product_id]}; it cannot be calibrated again"
                )
            source, normals = "leave-one-out shots", to_model_tensor(shots, model.input_size)
            left_out = torch.arange(len(shots))
        elif shots:
            source, normals = "augmented shots", to_model_tensor(augmented_shots(shots, seed), model.input_size)
            left_out = torch.full((normals.shape[0],), NO_SHOT_LEFT_OUT)
        else:
            raise ExportError(f"product {product!r}: the model records none of its normal images to calibrate on")
        generator = torch.Generator().manual_seed(seed)
        simulated: list[torch.Tensor] = []
        while not simulated or normals.shape[0] + sum(s.shape[0] for s in simulated) < MIN_PARITY_IMAGES:
            views, _, labels = simulate_anomalies(normals, 1.0, generator)
            simulated.append(views[labels == 1])
        sets.append(CalibrationSet(product, product_id, source, normals, left_out, simulated))
    return sets


@dataclass(frozen=True)
class _Scores:
    normal_scores: np.ndarray
    normal_maxima: np.ndarray
    simulated_first: np.ndarray
    everything: np.ndarray  # normals, then every simulated round


def _score(run: Runner, images: torch.Tensor, product_id: int, left_out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    scores, maxima = [], []
    for start in range(0, images.shape[0], BATCH):
        chunk = images[start : start + BATCH].numpy()
        ids = np.full(chunk.shape[0], product_id, dtype=np.int64)
        score, _, pixel_map = run(chunk, ids, left_out[start : start + BATCH].numpy().astype(np.int64))
        scores.append(score)
        maxima.append(pixel_map.reshape(pixel_map.shape[0], -1).max(axis=1))
    return np.concatenate(scores), np.concatenate(maxima)


def score_set(run: Runner, calibration_set: CalibrationSet) -> _Scores:
    product_id = calibration_set.product_id
    normal_scores, normal_maxima = _score(run, calibration_set.normals, product_id, calibration_set.left_out)
    rounds = [
        _score(run, images, product_id, torch.full((images.shape[0],), NO_SHOT_LEFT_OUT))[0]
        for images in calibration_set.simulated
    ]
    return _Scores(normal_scores, normal_maxima, rounds[0], np.concatenate([normal_scores, *rounds]))


def torch_runner(graph: ScoringGraph) -> Runner:
    def run(images: np.ndarray, ids: np.ndarray, left_out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        with torch.inference_mode():
            outputs = graph(torch.from_numpy(images), torch.from_numpy(ids), torch.from_numpy(left_out))
        return tuple(output.float().numpy() for output in outputs)  # type: ignore[return-value]

    return run


def own_calibration(
    recorded: Calibration, reference: _Scores, exported: _Scores, source: str, precision: str
) -> tuple[Calibration, float]:
    """The export's calibration from its own scores, shifted by what separates the artifact's threshold
    from PyTorch fp32's own on the same normals (zero up to rounding unless the threshold was moved)."""
    target = recorded.target_frr
    fresh = calibrate(reference.normal_scores, reference.normal_maxima, target, source, reference.simulated_first)
    own = calibrate(exported.normal_scores, exported.normal_maxima, target, source, exported.simulated_first)
    shift = recorded.threshold - fresh.threshold
    pixel_shift = recorded.pixel_threshold - fresh.pixel_threshold
    threshold = float(np.clip(own.threshold + shift, 0.0, SCORE_MAX))
    pixel_threshold = float(np.clip(own.pixel_threshold + pixel_shift, 0.0, SCORE_MAX))
    simulated = exported.simulated_first
    calibration = replace(
        own,
        threshold=threshold,
        pixel_threshold=pixel_threshold,
        achieved_frr=float((exported.normal_scores > threshold).mean()),
        source=f"{source}, scored at {precision}",
        simulated_recall=float((simulated > threshold).mean()) if simulated.size else None,
    )
    return calibration, shift


def parity(
    precision: str,
    reference: dict[str, _Scores],
    exported: dict[str, _Scores],
    reference_thresholds: dict[str, float],
    thresholds: dict[str, float],
) -> Parity:
    products = list(reference)
    ours = np.concatenate([reference[p].everything for p in products]).astype(np.float64)
    theirs = np.concatenate([exported[p].everything for p in products]).astype(np.float64)
    our_verdicts = np.concatenate([reference[p].everything > reference_thresholds[p] for p in products])
    their_verdicts = np.concatenate([exported[p].everything > thresholds[p] for p in products])
    rank = spearmanr(ours, theirs).statistic if np.ptp(ours) > 0 and np.ptp(theirs) > 0 else 1.0
    return Parity(
        precision=precision,
        n_images=int(ours.size),
        max_abs_error=float(np.abs(ours - theirs).max()),
        spearman=float(rank),
        verdict_agreement=float((our_verdicts == their_verdicts).mean()),
    )


def write_export(target: Path, record: ExportRecord, save_model: Callable[[Path], None]) -> None:
    """Model files and record into a temporary sibling, then renamed into place: a reader sees the old
    export or the new one, never half of one; the record is written last inside it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_model(staging)
        (staging / RECORD).write_text(json.dumps(record.to_dict(), indent=2) + "\n")
        retired = target.with_name(f".{target.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def export_openvino(
    directory: Path, model: AnoPLe, info: ArtifactInfo, precision: str, log: Callable[[str], None] = print
) -> ExportRecord:
    """Export, calibrate, gate and write ``exports/openvino-<precision>``; ExportError says why not."""
    from linewatch.model import openvino_graph as openvino  # OpenVINO loads only for an OpenVINO export

    if precision not in EXPORT_PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r}")
    sha = artifact_sha256(directory)
    graph = ScoringGraph(model.to("cpu").eval()).eval()
    sets = calibration_sets(directory, model, info, graph)
    reference_run = torch_runner(graph)
    reference = {s.product: score_set(reference_run, s) for s in sets}
    log(f"converting {directory} to OpenVINO {precision}")
    ov_model = _openvino_model(graph, precision, sets)
    try:
        compiled = openvino.CompiledGraph(ov_model, precision)
    except openvino.OpenVinoError as error:
        raise ExportError(f"{directory}: {error}") from error
    exported = {s.product: score_set(compiled.run, s) for s in sets}
    record = _gated_record(directory, info, sets, reference, exported, "openvino", precision, sha, _versions(precision))
    log(record.parity.describe())
    target = export_dir(directory, "openvino", precision)
    try:
        write_export(target, record, lambda staging: openvino.save(ov_model, staging / IR_FILE))
    except OSError as error:
        raise ExportError(f"{target}: cannot write the export ({error}); the model folder must be writable") from error
    return record


def _gated_record(
    directory: Path,
    info: ArtifactInfo,
    sets: list[CalibrationSet],
    reference: dict[str, _Scores],
    exported: dict[str, _Scores],
    runtime: str,
    precision: str,
    sha: str,
    versions: dict[str, str],
) -> ExportRecord:
    """Each product's own calibration from ``exported``'s scores, and the parity gate against ``reference``
    (PyTorch fp32): the record of a runtime that passed, ExportError naming the check for one that did not."""
    calibrations, shifts = {}, {}
    for s in sets:
        recorded = info.products[s.product].calibration
        calibrations[s.product], shifts[s.product] = own_calibration(
            recorded, reference[s.product], exported[s.product], s.source, precision
        )
    check = parity(
        precision,
        reference,
        exported,
        {p: info.products[p].calibration.threshold for p in reference},
        {p: c.threshold for p, c in calibrations.items()},
    )
    if not check.passed:
        raise ExportError(f"{directory}: export refused, {check.describe()}")
    return ExportRecord(
        runtime=runtime,
        precision=precision,
        artifact_sha256=sha,
        calibrations=calibrations,
        threshold_shifts=shifts,
        parity=check,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        versions=versions,
    )


def calibrate_remote(directory: Path, model: AnoPLe, info: ArtifactInfo, run: Runner, precision: str) -> ExportRecord:
    """Thresholds for a scoring server that scores ``directory``'s model at another precision than fp32:
    the calibration inputs scored through ``run`` (the server) and by PyTorch fp32 here, calibrated and gated
    as an OpenVINO export is, and kept in ``exports/triton-<precision>/export.json`` (no model files: the
    server holds the model), so the next activation of the same files reuses them."""
    graph = ScoringGraph(model.to("cpu").eval()).eval()
    sets = calibration_sets(directory, model, info, graph)
    reference_run = torch_runner(graph)
    reference = {s.product: score_set(reference_run, s) for s in sets}
    exported = {s.product: score_set(run, s) for s in sets}
    versions = {"linewatch": __version__, "torch": torch.__version__}
    sha = artifact_sha256(directory)
    record = _gated_record(directory, info, sets, reference, exported, "triton", precision, sha, versions)
    target = export_dir(directory, "triton", precision)
    try:
        write_export(target, record, lambda _staging: None)
    except OSError as error:
        raise ExportError(f"{target}: cannot write the thresholds ({error}); the model folder must be writable") from (
            error
        )
    return record


def openvino_runner(
    model: AnoPLe, precision: str, shots: dict[str, torch.Tensor], out_size: int | None = None, seed: int = 0
) -> Runner:
    """A model in memory compiled with OpenVINO at ``precision`` (maps at ``out_size``), INT8 calibrated on
    ``shots`` (product -> (k, 3, S, S)) and simulated anomalies made from them: what ``linewatch eval
    --runtime openvino`` scores with, without an artifact on disk, a parity gate or thresholds."""
    from linewatch.model import openvino_graph as openvino

    if precision not in EXPORT_PRECISIONS:
        raise ExportError(f"precision must be one of {', '.join(EXPORT_PRECISIONS)}, got {precision!r}")
    graph = ScoringGraph(model.eval(), out_size).eval()
    generator = torch.Generator().manual_seed(seed)
    sets = []
    for product, images in shots.items():
        rounds = []
        for _ in range(4 if precision == "int8" else 0):
            views, _, labels = simulate_anomalies(images, 1.0, generator)
            rounds.append(views[labels == 1])
        left_out = torch.full((images.shape[0],), NO_SHOT_LEFT_OUT)
        sets.append(CalibrationSet(product, model.product_index(product), "shots", images, left_out, rounds))
    ov_model = _openvino_model(graph, precision, sets)
    return openvino.CompiledGraph(ov_model, precision).run


def _openvino_model(graph: ScoringGraph, precision: str, sets: list[CalibrationSet]) -> Any:
    """The graph converted to OpenVINO; for INT8 quantised on every image of ``sets``."""
    from linewatch.model import openvino_graph as openvino

    first = sets[0]
    example = (first.normals[:2], torch.full((min(2, first.normals.shape[0]),), first.product_id), first.left_out[:2])
    ov_model = openvino.convert(graph, example)
    if precision == "int8":
        ov_model = openvino.quantize_int8(ov_model, _calibration_batches(sets), graph.tower_length)
    return ov_model


def _calibration_batches(sets: list[CalibrationSet]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every calibration normal and simulated anomaly, as graph inputs in batches."""
    items = []
    for s in sets:
        groups = [(s.normals, s.left_out)] + [
            (images, torch.full((images.shape[0],), NO_SHOT_LEFT_OUT)) for images in s.simulated
        ]
        for images, left_out in groups:
            for start in range(0, images.shape[0], BATCH):
                chunk = images[start : start + BATCH].numpy()
                items.append(
                    (
                        chunk,
                        np.full(chunk.shape[0], s.product_id, dtype=np.int64),
                        left_out[start : start + BATCH].numpy().astype(np.int64),
                    )
                )
    return items


def _versions(precision: str) -> dict[str, str]:
    import openvino as ov

    versions = {"linewatch": __version__, "openvino": ov.get_version(), "torch": torch.__version__}
    if precision == "int8":
        import nncf

        versions["nncf"] = nncf.__version__
    return versions

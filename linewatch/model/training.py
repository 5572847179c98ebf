"""Train an AnoPLe artifact from folders of normal images: draw shots, train, build memory, calibrate, save.

The k shots are drawn from the *sorted* image list with a recorded seed; the normals left over are
held out to calibrate the threshold. With none left, each shot is scored against a memory bank of the
others (leave-one-out); with a single shot, mild augmentations of it stand in. The artifact records which,
and training warns when the threshold rests on few normals.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from linewatch import __version__
from linewatch.anople.artifact import ArtifactInfo, ProductRecord, save_artifact
from linewatch.anople.backbone import Backbone, file_sha256
from linewatch.anople.calibrate import Calibration, calibrate
from linewatch.anople.model import AnoPLe, Terms
from linewatch.anople.settings import AnoPLeSettings
from linewatch.anople.simulate import simulate_anomalies
from linewatch.anople.train import ProgressCallback, train
from linewatch.images import read_rgb
from linewatch.model.preprocess import to_model_tensor

MAX_CALIBRATION_IMAGES = 256
FEW_NORMALS = 20  # fewer held-out normals than this: the expected false-reject rate is loose, and said so
SCORE_BATCH = 16


class TrainingError(ValueError):
    """Training inputs that cannot work; the message names the product and what is wrong."""


@dataclass(frozen=True)
class ProductSource:
    name: str
    images: list[Path]


def draw_shots(count: int, shots: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the shots and of the held-out rest, from a list already sorted by name."""
    order = np.random.default_rng(seed).permutation(count)
    return sorted(order[:shots].tolist()), sorted(order[shots:].tolist())


def _image_record(path: Path) -> dict[str, str]:
    """How an artifact names a training image: absolute (a retrain later finds it wherever it runs) and
    hashed (a file overwritten since is not taken for the image that trained the model)."""
    return {"file": path.name, "path": str(path.resolve()), "sha256": file_sha256(path)}


def augmented_shots(images: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """Small shifts and brightness changes of the shots: a stand-in for held-out normals."""
    rng = np.random.default_rng(seed)
    variants = []
    for image in images:
        for _ in range(4):
            dy, dx = rng.integers(-3, 4, size=2)
            shifted = np.roll(image, (int(dy), int(dx)), axis=(0, 1)).astype(np.float32)
            variants.append(np.clip(shifted * rng.uniform(0.95, 1.05), 0, 255).astype(np.uint8))
    return variants


def score_tensors(model: AnoPLe, images: torch.Tensor, product: str) -> tuple[np.ndarray, np.ndarray]:
    """Image scores and pixel-map maxima of (N, 3, S, S) images, in batches."""
    scores, maxima = [], []
    product_id = model.product_index(product)
    for start in range(0, images.shape[0], SCORE_BATCH):
        chunk = images[start : start + SCORE_BATCH]
        prediction = model.predict(chunk, torch.full((chunk.shape[0],), product_id))
        scores.append(prediction.image_score.float().cpu().numpy())
        maxima.append(prediction.pixel_map.flatten(1).amax(dim=1).float().cpu().numpy())
    return np.concatenate(scores), np.concatenate(maxima)


def term_tensors(model: AnoPLe, images: torch.Tensor, product: str) -> Terms:
    """The unfused terms of (N, 3, S, S) images, in batches."""
    product_id = model.product_index(product)
    return Terms.cat(
        [model.terms(chunk, torch.full((chunk.shape[0],), product_id)) for chunk in images.split(SCORE_BATCH)]
    )


def calibration_terms(
    model: AnoPLe, product: str, held_out: list[np.ndarray], shots: list[np.ndarray], seed: int
) -> tuple[str, torch.Tensor, Terms]:
    """The normals a product calibrates on, what they are, and their unfused terms: held-out normals; without
    any, the shots left out one at a time (:func:`leave_one_out_terms`); with a single shot and nothing held
    out, mild augmentations of it, which say little. The memory bank must hold all the shots; it does after."""
    if held_out:
        normals = to_model_tensor(held_out[:MAX_CALIBRATION_IMAGES], model.input_size)
        return "held-out normals", normals, term_tensors(model, normals, product)
    if len(shots) >= 2:
        normals = to_model_tensor(shots, model.input_size)
        return "leave-one-out shots", normals, leave_one_out_terms(model, product, normals)
    normals = to_model_tensor(augmented_shots(shots, seed), model.input_size)
    return "augmented shots", normals, term_tensors(model, normals, product)


def calibrate_product(
    model: AnoPLe,
    product: str,
    held_out: list[np.ndarray],
    shots: list[np.ndarray],
    target_frr: float,
    seed: int,
) -> Calibration:
    """The product's fusion scales and thresholds, both from the normals of :func:`calibration_terms`."""
    source, normals, terms = calibration_terms(model, product, held_out, shots, seed)
    model.fit_fusion_scales(product, terms)
    fused = model.fuse(terms, torch.full((normals.shape[0],), model.product_index(product)))
    scores = fused.image_score.cpu().numpy()
    maxima = fused.pixel_map.flatten(1).amax(dim=1).cpu().numpy()
    generator = torch.Generator().manual_seed(seed)
    simulated, _, labels = simulate_anomalies(normals, 1.0, generator)
    simulated_scores, _ = score_tensors(model, simulated[labels == 1], product)
    return calibrate(scores, maxima, target_frr, source, simulated_scores)


def leave_one_out_terms(model: AnoPLe, product: str, shots: torch.Tensor) -> Terms:
    """Each shot (k, 3, S, S) against a memory bank of the OTHER shots: how an unseen normal scores, as far
    as k images can tell. Augmented copies of the shots scored against a bank holding the shots themselves
    have a memory distance near 0, so a threshold from them sat low: on real images with 4 shots, 9 % of
    unseen normals scored above a threshold set for 1 %. The full bank is rebuilt after."""
    terms = []
    for index in range(shots.shape[0]):
        model.build_memory(product, torch.cat([shots[:index], shots[index + 1 :]]))
        terms.append(term_tensors(model, shots[index : index + 1], product))
    model.build_memory(product, shots)
    return Terms.cat(terms)


def few_normals_warning(calibration: Calibration) -> str | None:
    """What a user must hear when a threshold rests on few normals, or None when it does not."""
    n = calibration.n_normals
    if calibration.source == "held-out normals" and n >= FEW_NORMALS:
        return None
    return (
        f"the threshold rests on {n} {calibration.source}: a new normal part is rejected with probability "
        f"about {expected_frr(calibration):.0%} (aimed at {calibration.target_frr:.0%}); hold out at least "
        f"{FEW_NORMALS} more normal images (more images than --shots) or label normals for retraining"
    )


def calibration_warnings(info: ArtifactInfo) -> dict[str, str]:
    """Per product of a model whose calibrated threshold rests on few normals: the warning (model/state,
    the Models page)."""
    warnings = {name: few_normals_warning(record.calibration) for name, record in info.products.items()}
    return {name: warning for name, warning in warnings.items() if warning is not None}


def expected_frr(calibration: Calibration) -> float:
    """The false-reject rate to expect on new normals from a threshold that rejects ``a`` of ``n``
    calibration scores: (a + 1) / (n + 1) when new normals score like the calibration ones (their rank
    among them is uniform). With 4 normals and nothing rejected that is 20 %, whatever the target."""
    n = calibration.n_normals
    rejected = round(calibration.achieved_frr * n)
    return (rejected + 1) / (n + 1)


def train_artifact(
    sources: Sequence[ProductSource],
    backbone: Backbone,
    settings: AnoPLeSettings,
    out: Path,
    shots: int,
    seed: int,
    target_frr: float,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    log: Callable[[str], None] = print,
    device: str = "cpu",
) -> ArtifactInfo:
    """Everything ``linewatch train`` does; nothing is written unless all of it succeeds."""
    if shots < 1:
        raise TrainingError(f"--shots must be at least 1, got {shots}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {device!r} requested but CUDA is not available on this machine")
    if out.exists() and not overwrite:
        raise TrainingError(f"{out}: already exists; choose another --out or pass --overwrite")
    size = backbone.input_size
    shot_images: dict[str, list[np.ndarray]] = {}
    held_out: dict[str, list[np.ndarray]] = {}
    records: dict[str, list[dict[str, str]]] = {}
    calibration_records: dict[str, list[dict[str, str]]] = {}
    for source in sources:
        paths = sorted(source.images)
        if len(paths) < shots:
            raise TrainingError(
                f"product {source.name!r}: {len(paths)} normal image(s) found, fewer than --shots {shots}"
            )
        shot_ids, rest_ids = draw_shots(len(paths), shots, seed)
        shot_images[source.name] = [read_rgb(paths[i]) for i in shot_ids]
        held_out[source.name] = [read_rgb(paths[i]) for i in rest_ids[:MAX_CALIBRATION_IMAGES]]
        records[source.name] = [_image_record(paths[i]) for i in shot_ids]
        calibration_records[source.name] = [_image_record(paths[i]) for i in rest_ids[:MAX_CALIBRATION_IMAGES]]
        log(f"{source.name}: {shots} shot(s), {len(held_out[source.name])} held out for calibration")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial prompts and decoder come from the seed, not from process history
        model = AnoPLe(backbone, settings, [source.name for source in sources]).to(device)
    started = time.monotonic()
    summary = train(
        model,
        {name: to_model_tensor(images, 2 * size) for name, images in shot_images.items()},
        seed,
        progress,
    )
    duration = time.monotonic() - started
    calibrations = {}
    for name, images in shot_images.items():
        model.build_memory(name, to_model_tensor(images, size))
    for name, images in shot_images.items():
        calibrations[name] = calibrate_product(model, name, held_out[name], images, target_frr, seed)
        log(
            f"{name}: threshold {calibrations[name].threshold:.5f} from {calibrations[name].n_normals} "
            f"{calibrations[name].source}, simulated-anomaly recall {calibrations[name].simulated_recall}"
        )
        warning = few_normals_warning(calibrations[name])
        if warning is not None:
            log(f"WARNING {name}: {warning}")
    info = ArtifactInfo(
        products={
            name: ProductRecord(name, calibrations[name], records[name], calibration_records[name])
            for name in shot_images
        },
        training={
            "device": device,
            "steps": summary.steps,
            "seed": seed,
            "shots": shots,
            "final_losses": summary.final_losses,
            "duration_s": round(duration, 2),
        },
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        linewatch_version=__version__,
    )
    save_artifact(model, info, out, overwrite=overwrite)
    return info

"""Shared fixtures: offline, one torch thread, the tiny random backbone and a small trained model."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch

from linewatch.anople.backbone import TINY_MODEL, Backbone, load_random_backbone
from linewatch.anople.model import AnoPLe
from linewatch.anople.settings import AnoPLeSettings
from linewatch.anople.train import train
from linewatch.model.preprocess import to_model_tensor
from linewatch.pipeline.camera.synthetic import SyntheticProduct, SyntheticSample

torch.set_num_threads(1)

# Throwaway PostgreSQL and Mosquitto servers on free loopback ports, never the machine's own.
pytest_plugins = ["tests.services.postgres", "tests.services.mosquitto", "tests.services.scoring_server"]

TRAINED_STEPS = 200
PRODUCT = "metal plate"


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """``linewatch run`` in-process (main(["run", ...])) sets the root logger up for journald: a handler on
    the stderr of that moment, the test's captured one. Left in place, every later log line went to a
    closed stream, and "--- Logging error --- Traceback" appeared in the stderr of an unrelated test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def tiny_backbone() -> Backbone:
    """Shared read-only: the backbone is frozen and never modified by AnoPLe."""
    return load_random_backbone(TINY_MODEL, seed=0)


@pytest.fixture(scope="session")
def synthetic_product() -> SyntheticProduct:
    return SyntheticProduct(style_seed=3, width=256, height=256)


@pytest.fixture(scope="session")
def normal_images(synthetic_product: SyntheticProduct) -> list[np.ndarray]:
    """Normals: the first 4 are the shots, the rest are held out."""
    rng = np.random.default_rng(100)
    return [synthetic_product.normal(rng).image for _ in range(24)]


@pytest.fixture(scope="session")
def defect_samples(synthetic_product: SyntheticProduct) -> list[SyntheticSample]:
    rng = np.random.default_rng(200)
    return [synthetic_product.defective(rng) for _ in range(20)]


@pytest.fixture(scope="session")
def defect_images(defect_samples: list[SyntheticSample]) -> list[np.ndarray]:
    return [sample.image for sample in defect_samples]


@pytest.fixture(scope="session")
def trained_model(tiny_backbone: Backbone, normal_images: list[np.ndarray]) -> AnoPLe:
    """AnoPLe trained for TRAINED_STEPS on 4 synthetic normal shots, memory built, fusion scales fitted on
    the shots left out one at a time. Treat as read-only."""
    from linewatch.model.training import calibration_terms

    torch.manual_seed(0)
    model = AnoPLe(tiny_backbone, AnoPLeSettings(steps=TRAINED_STEPS), [PRODUCT])
    shots = normal_images[:4]
    train(model, {PRODUCT: to_model_tensor(shots, 2 * model.input_size)}, seed=0)
    model.build_memory(PRODUCT, to_model_tensor(shots, model.input_size))
    model.fit_fusion_scales(PRODUCT, calibration_terms(model.eval(), PRODUCT, [], shots, seed=0)[2])
    return model


@pytest.fixture
def untrained_model(tiny_backbone: Backbone) -> AnoPLe:
    torch.manual_seed(0)
    return AnoPLe(tiny_backbone, AnoPLeSettings(steps=2), [PRODUCT, "screw"])


def synthetic_normals(style_seed: int, count: int, seed: int, width: int = 96, height: int = 80) -> list[np.ndarray]:
    """Normal images of one synthetic product, small enough for fast CLI and pipeline tests."""
    product = SyntheticProduct(style_seed=style_seed, width=width, height=height)
    rng = np.random.default_rng(seed)
    return [product.normal(rng).image for _ in range(count)]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def quick_artifact(
    out: Path, backbone: Backbone, images: list[np.ndarray], product: str, shots: int, target_frr: float
) -> Path:
    """A model trained for 3 steps on ``images`` (written to a folder beside ``out``): for pipeline
    and scorer tests, where a real artifact matters and accuracy does not."""
    from linewatch.model.training import ProductSource, train_artifact

    folder = image_folder(out.parent / f"{out.name}-normals", images)
    train_artifact(
        [ProductSource(product, sorted(folder.glob("*.png")))],
        backbone,
        AnoPLeSettings(steps=3),
        out,
        shots=shots,
        seed=0,
        target_frr=target_frr,
        log=lambda _line: None,
    )
    return out


def image_folder(root: Path, images: list[np.ndarray]) -> Path:
    """Write RGB images as PNGs named 000.png, 001.png, ... and return the folder."""
    from linewatch.images import write_image

    root.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        write_image(root / f"{index:03d}.png", image)
    return root


@pytest.fixture(scope="session")
def exportable_artifact(
    trained_model: AnoPLe, normal_images: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """``trained_model`` saved as an artifact whose shots and 20 held-out normals are files it records, as
    ``linewatch train`` writes them: an export calibrates again on those files. Copy it before changing it."""
    from linewatch import __version__
    from linewatch.anople.artifact import ArtifactInfo, ProductRecord, save_artifact
    from linewatch.model.training import calibrate_product

    root = tmp_path_factory.mktemp("exportable")
    folder = image_folder(root / "normals", normal_images)
    records = [{"file": p.name, "path": str(p), "sha256": sha256_of(p)} for p in sorted(folder.glob("*.png"))]
    # The seed draws the simulated anomalies of the calibration and of the export's parity gate. This random
    # tiny model sits at the INT8 gate's edge (99 % verdict agreement): 3 of 217 verdicts flip at seed 0, 1 of 214 at
    # seed 1. Seed 1 keeps the accepted INT8 path under test; a refused export has its own test.
    seed = 1
    scales = dict(trained_model.fusion_scales)  # calibrating refits them: the shared model must not change
    calibration = calibrate_product(trained_model, PRODUCT, normal_images[4:], normal_images[:4], 0.05, seed=seed)
    info = ArtifactInfo(
        products={PRODUCT: ProductRecord(PRODUCT, calibration, records[:4], records[4:])},
        training={"seed": seed, "steps": TRAINED_STEPS},
        linewatch_version=__version__,
    )
    save_artifact(trained_model, info, root / "model")
    trained_model.fusion_scales = scales
    return root / "model"

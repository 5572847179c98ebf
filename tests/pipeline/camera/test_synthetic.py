"""Tests for linewatch.pipeline.camera.synthetic: determinism, jitter, defect masks as ground truth, dataset layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.pipeline.camera.synthetic import DEFECT_KINDS, SyntheticProduct, SyntheticSample, write_folder_dataset

SEEDS = range(6)


@pytest.fixture(scope="module")
def product() -> SyntheticProduct:
    return SyntheticProduct(style_seed=3)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def assert_well_formed(sample: SyntheticSample, height: int, width: int) -> None:
    assert sample.image.shape == (height, width, 3)
    assert sample.image.dtype == np.uint8
    assert sample.mask.shape == (height, width)
    assert sample.mask.dtype == np.uint8
    assert set(np.unique(sample.mask).tolist()) <= {0, 255}


@pytest.mark.parametrize(("width", "height"), [(256, 256), (224, 224), (640, 480), (200, 320)])
def test_shapes_and_dtypes(width: int, height: int) -> None:
    product = SyntheticProduct(style_seed=1, width=width, height=height)
    assert_well_formed(product.normal(rng(0)), height, width)
    for kind in DEFECT_KINDS:
        sample = product.defective(rng(0), kind)
        assert_well_formed(sample, height, width)
        assert sample.mask.any(), f"{kind} at {width}x{height} has an empty mask"


def test_too_small_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="32x32"):
        SyntheticProduct(width=16, height=256)


def test_same_seeds_give_identical_samples() -> None:
    first, second = SyntheticProduct(style_seed=5), SyntheticProduct(style_seed=5)
    assert np.array_equal(first.normal(rng(11)).image, second.normal(rng(11)).image)
    a, b = first.defective(rng(12)), second.defective(rng(12))
    assert a.defect == b.defect
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.mask, b.mask)


def test_instances_are_jittered_but_stay_close(product: SyntheticProduct) -> None:
    images = [product.normal(rng(seed)).image for seed in SEEDS]
    assert min(mean_abs_diff(images[0], other) for other in images[1:]) > 1.0
    # Mild jitter: a rigid pose within 5 degrees and 4% of the size, part brightness within a few percent.
    center = np.array([128.0, 128.0, 1.0])
    areas, brightness = [], []
    for seed, image in zip(SEEDS, images, strict=True):
        instance = product._draw_instance(rng(seed))
        angle = np.degrees(np.arctan2(instance.pose[1, 0], instance.pose[0, 0]))
        assert abs(angle) <= 5.0
        assert np.abs(instance.pose @ center - center[:2]).max() <= 0.04 * 256
        part = instance.part_alpha > 0.5
        areas.append(part.sum())
        brightness.append(image[part].mean())
    assert max(areas) / min(areas) < 1.02
    assert max(brightness) / min(brightness) < 1.12


def test_style_seeds_give_different_products() -> None:
    images = [SyntheticProduct(style_seed=style).normal(rng(0)).image for style in range(4)]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert mean_abs_diff(images[i], images[j]) > 10.0, (i, j)


def test_normal_samples_have_empty_masks(product: SyntheticProduct) -> None:
    for seed in SEEDS:
        sample = product.normal(rng(seed))
        assert sample.defect is None
        assert not sample.mask.any()


@pytest.mark.parametrize("kind", DEFECT_KINDS)
@pytest.mark.parametrize("style", [0, 3, 8])
def test_defect_masks_are_exact_ground_truth(kind: str, style: int) -> None:
    product = SyntheticProduct(style_seed=style)
    for seed in SEEDS:
        normal = product.normal(rng(seed))
        silhouette = product._draw_instance(rng(seed)).part_alpha > 0
        sample = product.defective(rng(seed), kind)
        defective = sample.mask > 0
        assert sample.defect == kind
        assert 0.003 <= defective.mean() <= 0.05, f"{kind} covers {defective.mean():.4f} of the image"
        # On the part; for missing_corner the mask is the part region that now shows background.
        assert not (defective & ~silhouette).any()
        assert np.array_equal(sample.image[~defective], normal.image[~defective])
        changed = np.abs(sample.image.astype(np.int16) - normal.image.astype(np.int16)).max(axis=2)
        assert changed[defective].mean() > 30, f"{kind} is too faint: {changed[defective].mean():.1f}"


def test_missing_corner_shows_background(product: SyntheticProduct) -> None:
    for seed in SEEDS:
        instance = product._draw_instance(rng(seed))
        background = product._expose(instance.background, instance)
        sample = product.defective(rng(seed), "missing_corner")
        core = cv2.erode(sample.mask, np.ones((3, 3), np.uint8)) > 0
        assert mean_abs_diff(sample.image[core], background[core]) < 2.0


def test_random_kind_draws_every_kind_on_the_normal_instance(product: SyntheticProduct) -> None:
    kinds = set()
    for seed in range(24):
        sample = product.defective(rng(seed))
        normal = product.normal(rng(seed))
        kinds.add(sample.defect)
        assert sample.mask.any()
        assert np.array_equal(sample.image[sample.mask == 0], normal.image[sample.mask == 0])
    assert kinds == set(DEFECT_KINDS)


def test_unknown_kind_is_rejected(product: SyntheticProduct) -> None:
    with pytest.raises(ValueError, match="'dent'") as error:
        product.defective(rng(0), "dent")
    assert all(kind in str(error.value) for kind in DEFECT_KINDS)


def test_sample_follows_defect_rate(product: SyntheticProduct) -> None:
    generator = rng(7)
    assert all(product.sample(generator, 0.0).defect is None for _ in range(10))
    assert all(product.sample(generator, 1.0).defect in DEFECT_KINDS for _ in range(10))
    mixed = [product.sample(generator, 0.5).defect is None for _ in range(40)]
    assert 5 < sum(mixed) < 35


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_bad_defect_rate_is_rejected(product: SyntheticProduct, rate: float) -> None:
    with pytest.raises(ValueError, match="defect_rate"):
        product.sample(rng(0), rate)


def test_write_folder_dataset_round_trips(tmp_path: Path) -> None:
    product = SyntheticProduct(style_seed=2, width=96, height=64)
    write_folder_dataset(tmp_path, product, n_normal=3, n_defect_per_kind=2, seed=9)

    assert {p.name for p in tmp_path.iterdir()} == {"good", "masks", *DEFECT_KINDS}
    assert sorted(p.name for p in (tmp_path / "good").iterdir()) == ["000.png", "001.png", "002.png"]
    assert {p.name for p in (tmp_path / "masks").iterdir()} == set(DEFECT_KINDS)

    # The writer draws normals first, then each kind in order, from one rng seeded with `seed`.
    generator = rng(9)
    for index in range(3):
        stored = cv2.imread(str(tmp_path / "good" / f"{index:03d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB), product.normal(generator).image)
    for kind in DEFECT_KINDS:
        names = sorted(p.name for p in (tmp_path / kind).iterdir())
        assert names == ["000.png", "001.png"]
        assert names == sorted(p.name for p in (tmp_path / "masks" / kind).iterdir())
        for name in names:
            expected = product.defective(generator, kind)
            image = cv2.imread(str(tmp_path / kind / name), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(tmp_path / "masks" / kind / name), cv2.IMREAD_UNCHANGED)
            assert mask.shape == image.shape[:2] == (64, 96)
            assert np.array_equal(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), expected.image)
            assert np.array_equal(mask, expected.mask)

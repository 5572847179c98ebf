"""Views and anomaly simulation: shapes, masks agree with labels, repeat by seed."""

from __future__ import annotations

import torch

from linewatch.anople.simulate import cutpaste_scar, make_views, perlin_self_texture, simulate_anomalies


def _images(seed: int, count: int = 6, size: int = 64) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_views_are_global_then_quadrants_at_input_size() -> None:
    images = _images(0, count=2, size=64)
    views, view_ids = make_views(images, 32)
    assert views.shape == (10, 3, 32, 32)
    assert view_ids.tolist() == [0, 1, 2, 3, 4] * 2
    torch.testing.assert_close(views[1], images[0, :, :32, :32])  # top-left quadrant, 2x zoom of the global view
    torch.testing.assert_close(views[9], images[1, :, 32:, 32:])  # bottom-right of the second image
    torch.testing.assert_close(views[0], torch.nn.functional.avg_pool2d(images[:1], 2)[0])


def test_masks_agree_with_labels_and_changes_stay_inside_masks() -> None:
    views = _images(1, count=64, size=48)
    out, masks, labels = simulate_anomalies(views, 0.5, torch.Generator().manual_seed(3))
    assert out.shape == views.shape and masks.shape == (64, 1, 48, 48)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(labels, (masks.flatten(1).amax(dim=1) > 0).long())
    assert 10 < labels.sum().item() < 54  # about half altered, some Perlin masks come out empty
    outside = (masks == 0).expand_as(views)
    torch.testing.assert_close(out[outside], views[outside])
    changed = (out - views).abs().sum(dim=1, keepdim=True) > 1e-6
    assert (changed <= (masks > 0)).all()


def test_simulation_repeats_by_seed_and_differs_across_seeds() -> None:
    views = _images(2, count=16, size=48)
    first = simulate_anomalies(views, 0.5, torch.Generator().manual_seed(7))
    again = simulate_anomalies(views, 0.5, torch.Generator().manual_seed(7))
    other = simulate_anomalies(views, 0.5, torch.Generator().manual_seed(8))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[1], other[1])


def test_each_kind_makes_non_empty_plausible_masks() -> None:
    views = _images(3, count=32, size=64)
    _, perlin_masks = perlin_self_texture(views, torch.Generator().manual_seed(0))
    _, scar_masks = cutpaste_scar(views, torch.Generator().manual_seed(0))
    perlin_area = perlin_masks.flatten(1).mean(dim=1)
    scar_area = scar_masks.flatten(1).mean(dim=1)
    assert (scar_area > 0).all() and (scar_area < 0.1).all()  # a thin strip, never the whole view
    assert (perlin_area > 0).float().mean() > 0.5 and (perlin_area < 0.6).all()


def test_probability_zero_leaves_views_untouched() -> None:
    views = _images(4, count=8, size=32)
    out, masks, labels = simulate_anomalies(views, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(out, views) and masks.sum() == 0 and labels.sum() == 0

"""AnoPLe settings: the round trip artifacts rely on, and the values that cannot work named at construction."""

from __future__ import annotations

import pytest
import torch

from linewatch.anople.settings import VIEWS_PER_IMAGE, AnoPLeSettings, layer_indices
from linewatch.anople.simulate import make_views


def test_settings_survive_the_artifact_round_trip() -> None:
    settings = AnoPLeSettings(steps=7, decoder_fractions=(0.5, 1.0), hflip=True)
    assert AnoPLeSettings.from_dict(settings.to_dict()) == settings


def test_an_unknown_setting_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown AnoPLe settings \\['views'\\]"):
        AnoPLeSettings.from_dict({**AnoPLeSettings().to_dict(), "views": 3})


@pytest.mark.parametrize("n_views", [1, 4, 9])
def test_a_view_count_other_than_the_layout_is_refused(n_views: int) -> None:
    """It used to pass and then break in training: the views are always the whole image and four quadrants."""
    with pytest.raises(ValueError, match=f"n_views must be {VIEWS_PER_IMAGE} .* got {n_views}"):
        AnoPLeSettings(n_views=n_views)


def test_the_view_layout_makes_as_many_views_as_the_settings_say() -> None:
    views, view_ids = make_views(torch.rand(2, 3, 64, 64), 32)
    assert views.shape == (2 * AnoPLeSettings().n_views, 3, 32, 32)
    assert view_ids.tolist() == list(range(VIEWS_PER_IMAGE)) * 2


def test_layer_indices_at_depth_12() -> None:
    assert layer_indices(12, (0.5, 0.75, 1.0)) == (5, 8, 11)
    assert layer_indices(12, (0.25, 2 / 3)) == (2, 7)

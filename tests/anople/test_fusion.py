"""The fusion of the global probability, decoder map and memory map: scaled mean against the paper's harmonic mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from linewatch.anople.model import FUSION_SCALES, AnoPLe, Terms, fuse, fusion_scales, harmonic_mean
from linewatch.anople.settings import AnoPLeSettings
from linewatch.model.preprocess import to_model_tensor
from tests.conftest import PRODUCT

GRID = 5
SIZE = 20
EPS = 1e-6


def _spread() -> torch.Tensor:
    from linewatch.anople.model import upsample_blur_matrix

    return upsample_blur_matrix(GRID, SIZE, 1.0).float()  # (SIZE, GRID)


def _terms(global_value: float, decoder: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.tensor([global_value]), decoder[None], memory[None]


# A product whose normals reach, on average: global 1e-4 (a confident CLIP at tau = 100), decoder 0.2 per
# patch and 0.3 at the image's maximum, memory 0.05 per patch and 0.08 at the maximum.
SCALES = torch.tensor([[1e-4, 0.3, 0.08, 0.2, 0.05]])


def test_a_part_like_the_average_normal_scores_one_half() -> None:
    flat_decoder, flat_memory = torch.full((GRID, GRID), 0.2), torch.full((GRID, GRID), 0.05)
    scales = SCALES.clone()
    scales[0, 1], scales[0, 2] = 0.2, 0.05  # a flat map's maximum is its patch value
    image, pixel = fuse(*_terms(1e-4, flat_decoder, flat_memory), scales, _spread(), "scaled_mean", EPS)
    torch.testing.assert_close(image, torch.tensor([0.5]))
    torch.testing.assert_close(pixel, torch.full((1, SIZE, SIZE), 0.5))


def test_the_memory_map_flags_a_defect_the_decoder_misses() -> None:
    """One patch at 6x the memory map's normal level while the decoder sees nothing there: the scaled mean
    raises the pixel map at that patch well above a normal part's; the harmonic mean keeps it under twice
    the decoder's value, so it hardly moves (issue 18, item 2)."""
    decoder = torch.full((GRID, GRID), 0.02)  # the decoder misses the defect and sits low everywhere
    normal_memory = torch.full((GRID, GRID), 0.05)
    defect_memory = normal_memory.clone()
    defect_memory[2, 2] = 0.3
    spread = _spread()
    scaled = {
        name: fuse(*_terms(1e-4, decoder, memory), SCALES, spread, "scaled_mean", EPS)[1]
        for name, memory in (("normal", normal_memory), ("defect", defect_memory))
    }
    assert scaled["defect"].max() - scaled["normal"].max() > 0.2
    harmonic = fuse(*_terms(1e-4, decoder, defect_memory), SCALES, spread, "harmonic", EPS)[1]
    assert harmonic.max() < 2 * 0.02


def test_a_confident_global_probability_does_not_silence_the_maps() -> None:
    """At tau = 100 a normal-looking global probability is about 1e-4: the harmonic image score is then about
    twice that whatever the pixel map says; the scaled mean still rises with the map."""
    decoder = torch.full((GRID, GRID), 0.2)
    quiet, loud = torch.full((GRID, GRID), 0.05), torch.full((GRID, GRID), 0.05)
    loud[1:3, 1:3] = 0.4
    spread = _spread()

    def image(fusion: str, memory: torch.Tensor) -> float:
        return float(fuse(*_terms(1e-4, decoder, memory), SCALES, spread, fusion, EPS)[0])

    assert image("harmonic", loud) < 2.001e-4 and image("harmonic", quiet) < 2.001e-4
    assert image("scaled_mean", loud) - image("scaled_mean", quiet) > 0.1


def test_scores_stay_below_one_and_rise_with_every_term() -> None:
    generator = torch.Generator().manual_seed(0)
    decoder, memory = torch.rand(GRID, GRID, generator=generator), torch.rand(GRID, GRID, generator=generator) / 4
    spread = _spread()
    base_image, base_pixel = fuse(*_terms(1e-3, decoder, memory), SCALES, spread, "scaled_mean", EPS)
    image, pixel = fuse(*_terms(1e-1, decoder, memory), SCALES, spread, "scaled_mean", EPS)
    assert image > base_image and torch.equal(pixel, base_pixel)  # the global term is not a map
    for raised in (_terms(1e-3, decoder * 2, memory), _terms(1e-3, decoder, memory * 2)):
        image, pixel = fuse(*raised, SCALES, spread, "scaled_mean", EPS)
        assert image > base_image and (pixel > base_pixel).all()
    extreme_image, extreme_pixel = fuse(*_terms(1.0, decoder * 100, memory * 100), SCALES, spread, "scaled_mean", EPS)
    assert 0.99 < float(extreme_image) < 1.0 and float(extreme_pixel.max()) < 1.0


def test_harmonic_fusion_is_the_papers_formula() -> None:
    generator = torch.Generator().manual_seed(1)
    decoder, memory = torch.rand(GRID, GRID, generator=generator), torch.rand(GRID, GRID, generator=generator)
    spread = _spread()
    image, pixel = fuse(*_terms(0.3, decoder, memory), torch.ones(1, 5), spread, "harmonic", EPS)
    expected_pixel = spread @ harmonic_mean(decoder, memory, EPS) @ spread.T
    torch.testing.assert_close(pixel[0], expected_pixel)
    torch.testing.assert_close(image, harmonic_mean(torch.tensor([0.3]), expected_pixel.max()[None], EPS))


def test_scales_are_the_means_of_the_normals_terms_and_never_zero() -> None:
    generator = torch.Generator().manual_seed(2)
    terms = Terms(
        global_probability=torch.tensor([0.1, 0.3]),
        decoder_map=torch.rand(2, GRID, GRID, generator=generator),
        memory_map=torch.zeros(2, GRID, GRID),  # shots scored against a bank holding themselves
    )
    spread = _spread()
    scales = fusion_scales(terms, spread)
    assert scales.shape == (len(FUSION_SCALES),)
    decoder_maxima = (spread @ terms.decoder_map @ spread.T).flatten(1).amax(dim=1)
    torch.testing.assert_close(scales[:2], torch.stack([torch.tensor(0.2), decoder_maxima.mean()]))
    torch.testing.assert_close(scales[3], terms.decoder_map.mean())
    assert (scales[[2, 4]] > 0).all()  # floored: a zero scale would divide by zero


def test_predict_needs_fusion_scales_and_names_the_product(tiny_backbone, normal_images: list[np.ndarray]) -> None:
    torch.manual_seed(0)
    model = AnoPLe(tiny_backbone, AnoPLeSettings(steps=1), [PRODUCT, "screw"]).eval()
    images = to_model_tensor(normal_images[:3], model.input_size)
    for product in model.products:
        model.build_memory(product, images)
    model.fit_fusion_scales(PRODUCT, model.terms(images, torch.zeros(3, dtype=torch.long)))
    model.predict(images, torch.zeros(3, dtype=torch.long))
    with pytest.raises(KeyError, match=r"no fusion scales for product\(s\) \['screw'\]"):
        model.predict(images, torch.ones(3, dtype=torch.long))


def test_settings_default_to_the_scaled_mean_but_old_artifacts_read_as_harmonic() -> None:
    assert AnoPLeSettings().fusion == "scaled_mean"
    written_before_the_setting = {k: v for k, v in AnoPLeSettings().to_dict().items() if k != "fusion"}
    assert AnoPLeSettings.from_dict(written_before_the_setting).fusion == "harmonic"
    assert AnoPLeSettings.from_dict(AnoPLeSettings().to_dict()).fusion == "scaled_mean"
    with pytest.raises(ValueError, match="fusion must be one of scaled_mean, harmonic, got 'max'"):
        AnoPLeSettings(fusion="max")

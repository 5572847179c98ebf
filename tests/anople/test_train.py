"""The trainer: seeded runs repeat exactly, CUDA runs ask for deterministic kernels, the loss upsamples by matmul."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from linewatch.anople.backbone import Backbone
from linewatch.anople.model import AnoPLe, upsample_matrix
from linewatch.anople.settings import AnoPLeSettings
from linewatch.anople.train import deterministic_on, train
from linewatch.cli.main import main
from linewatch.model.preprocess import to_model_tensor
from tests.conftest import PRODUCT


def test_the_same_seed_trains_the_same_parameters(tiny_backbone: Backbone, normal_images: list[np.ndarray]) -> None:
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = AnoPLe(tiny_backbone, AnoPLeSettings(steps=3), [PRODUCT])
        summary = train(model, {PRODUCT: to_model_tensor(normal_images[:2], 2 * model.input_size)}, seed=5)
        runs.append((model.learned_parameters(), summary.final_losses))
    (first, first_losses), (second, second_losses) = runs
    assert first_losses == second_losses
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


def test_the_matmul_upsampling_equals_bilinear_interpolation() -> None:
    maps = torch.rand(3, 7, 7, generator=torch.Generator().manual_seed(0))
    matrix = upsample_matrix(7, 28).float()  # (28, 7)
    expected = F.interpolate(maps[:, None], size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(matrix @ maps @ matrix.T, expected, rtol=0, atol=1e-6)


def test_cuda_training_asks_for_deterministic_kernels_and_gives_the_settings_back() -> None:
    """Setting the flags needs no GPU, so the CUDA branch is checked here; whether every kernel of a CUDA
    training run has a deterministic version is only seen on a GPU (it warns, naming the op, if not)."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    with deterministic_on(torch.device("cuda")):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before
    with deterministic_on(torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled() == before[0]


def test_the_cli_fixes_the_cublas_workspace_before_any_command(monkeypatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert main(["--help"]) == 0
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this project's CI machines have none)")
def test_the_same_seed_trains_the_same_parameters_on_cuda(
    tiny_backbone: Backbone, normal_images: list[np.ndarray]
) -> None:
    """The check for issue 18, item 7 where a GPU exists: two seeded CUDA runs give bit-identical prompts and
    decoder, with no op warning that it lacks a deterministic kernel."""
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = AnoPLe(tiny_backbone, AnoPLeSettings(steps=3), [PRODUCT]).to("cuda")
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*deterministic.*")  # warn_only's "... no deterministic ..."
            train(model, {PRODUCT: to_model_tensor(normal_images[:2], 2 * model.input_size)}, seed=5)
        runs.append({name: tensor.cpu() for name, tensor in model.learned_parameters().items()})
    for name, tensor in runs[0].items():
        assert torch.equal(tensor, runs[1][name]), name

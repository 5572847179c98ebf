"""The one resize path: squash to the model's square input, no second resize for pre-sized frames."""

from __future__ import annotations

import numpy as np
import torch

from linewatch.model.preprocess import resize_rgb, to_model_tensor


def test_resize_squashes_any_frame_to_the_square_input() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[:, :320] = 255  # left half white
    resized = resize_rgb(frame, 224)
    assert resized.shape == (224, 224, 3) and resized.dtype == np.uint8
    assert resized[:, :100].min() == 255 and resized[:, 124:].max() == 0  # no crop: both halves kept


def test_an_image_already_at_the_input_size_is_passed_through() -> None:
    image = np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    assert resize_rgb(image, 224) is image


def test_model_tensor_is_normalised_to_unit_range_in_channel_order() -> None:
    image = np.zeros((50, 70, 3), np.uint8)
    image[..., 0] = 255
    tensor = to_model_tensor([image, image], 32)
    assert tensor.shape == (2, 3, 32, 32) and tensor.dtype == torch.float32
    assert torch.all(tensor[:, 0] == 1.0) and torch.all(tensor[:, 1:] == 0.0)

"""RGB frames -> model input tensors, the one resize path shared by training, memory and scoring.

Images are squashed to the model's square input (no centre crop): a defect at the edge of the field
of view must still be seen, and the heatmap maps back onto the whole frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8; area filter when shrinking, bilinear when enlarging.

    An image already at the size is returned as is, so frames resized early (in the camera threads) are
    not resized again on the scorer's critical path.
    """
    height, width = image.shape[:2]
    if height == width == size:
        return image
    interpolation = cv2.INTER_AREA if size < min(height, width) else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def resize_batch(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """RGB uint8 images of any sizes -> (B, size, size, 3) uint8: what a scoring server is sent."""
    return np.stack([resize_rgb(image, size) for image in images])


def frames_to_tensor(frames: np.ndarray) -> Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 in [0, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)


def to_model_tensor(images: Sequence[np.ndarray], size: int) -> Tensor:
    """RGB uint8 images of any sizes -> (B, 3, size, size) float32 in [0, 1]."""
    return frames_to_tensor(resize_batch(images, size))

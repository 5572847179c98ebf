"""Multi-view cutting and anomaly simulation from normal images only.

Everything works on batches of images in [0, 1] on the CPU (or any device), seeded through an explicit
``torch.Generator`` so a training run repeats exactly. Two pixel-space anomaly kinds:

* Perlin self-texture: a thresholded Perlin-noise mask blended with a texture taken from a shuffled
  or jittered copy of the same image (no external texture set);
* CutPaste scar: a thin rotated strip copied from elsewhere in the same image, colour jittered.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from linewatch.anople.settings import VIEWS_PER_IMAGE

_PERLIN_RESOLUTIONS = (2, 4, 8)
_PERLIN_THRESHOLD = 0.5
_SHUFFLE_GRID = 4


def make_views(images: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """images (B, 3, H, W) -> views (5B, 3, S, S) and view ids (5B,).

    Per image: the global view (the whole image at S) then the four quadrants, each fed at S, which is
    a 2x zoom. Views of one image are consecutive: [global, top-left, top-right, bottom-left, bottom-right].
    """
    batch = images.shape[0]
    full = images
    if images.shape[-2:] != (2 * size, 2 * size):
        full = F.interpolate(images, size=(2 * size, 2 * size), mode="bilinear", align_corners=False)  # (B,3,2S,2S)
    whole = F.avg_pool2d(full, 2)  # (B, 3, S, S), an exact 2x area downscale
    quadrants = [full[:, :, r : r + size, c : c + size] for r in (0, size) for c in (0, size)]
    views = torch.stack([whole, *quadrants], dim=1).reshape(batch * VIEWS_PER_IMAGE, 3, size, size)  # (5B, 3, S, S)
    view_ids = torch.arange(VIEWS_PER_IMAGE, device=images.device).repeat(batch)  # (5B,)
    return views, view_ids


def perlin_noise(batch: int, size: int, resolution: int, generator: torch.Generator) -> Tensor:
    """(batch, size, size) gradient noise in about [-1, 1] with ``resolution`` cells per side."""
    cells = math.ceil(size / resolution)
    side = cells * resolution
    angles = 2 * math.pi * torch.rand(batch, resolution + 1, resolution + 1, generator=generator)
    gradients = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (b, r+1, r+1, 2)
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / cells  # position in cell units
    cell = coords.floor().long()  # (side,)
    frac = coords - cell  # (side,)
    fy, fx = frac[:, None].expand(side, side), frac[None, :].expand(side, side)
    cy, cx = cell[:, None].expand(side, side), cell[None, :].expand(side, side)

    def corner(dy: int, dx: int) -> Tensor:
        grad = gradients[:, cy + dy, cx + dx]  # (b, side, side, 2)
        return grad[..., 0] * (fx - dx) + grad[..., 1] * (fy - dy)  # (b, side, side)

    def fade(t: Tensor) -> Tensor:
        return t * t * t * (t * (t * 6 - 15) + 10)

    wx, wy = fade(fx), fade(fy)
    top = torch.lerp(corner(0, 0), corner(0, 1), wx)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), wx)
    return (math.sqrt(2) * torch.lerp(top, bottom, wy))[:, :size, :size]


def perlin_masks(batch: int, size: int, generator: torch.Generator) -> Tensor:
    """(batch, 1, S, S) binary blob masks at a random Perlin resolution per image.

    The noise has at most 8 cells per side, so it is drawn at a quarter of the size and upsampled:
    the blobs look the same and the simulator costs 16x less.
    """
    coarse = max(8, size // 4)
    choice = torch.randint(len(_PERLIN_RESOLUTIONS), (batch,), generator=generator)
    noise = torch.zeros(batch, 1, coarse, coarse)
    for option, resolution in enumerate(_PERLIN_RESOLUTIONS):
        picked = (choice == option).nonzero().flatten()
        if picked.numel():
            noise[picked, 0] = perlin_noise(picked.numel(), coarse, resolution, generator)
    noise = F.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    return (noise > _PERLIN_THRESHOLD).float()


def _affine_copy(images: Tensor, angle: Tensor, shift: Tensor) -> Tensor:
    """Rotate by ``angle`` (B,) radians and translate by ``shift`` (B, 2) in [-1, 1] units, reflecting at edges."""
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], dim=1), torch.stack([sin, cos, shift[:, 1]], dim=1)], dim=1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _colour_jitter(images: Tensor, generator: torch.Generator, strength: float) -> Tensor:
    batch = images.shape[0]
    gain = 1 + strength * (2 * torch.rand(batch, 3, 1, 1, generator=generator) - 1)
    offset = strength * (2 * torch.rand(batch, 1, 1, 1, generator=generator) - 1)
    return (images * gain + offset).clamp(0, 1)


def _shuffled_copy(images: Tensor, generator: torch.Generator) -> Tensor:
    """The image cut into a 4x4 grid of tiles, tiles permuted independently per image."""
    batch, _, height, width = images.shape
    tile_h, tile_w = height // _SHUFFLE_GRID, width // _SHUFFLE_GRID
    grid = _SHUFFLE_GRID * _SHUFFLE_GRID
    cropped = images[:, :, : tile_h * _SHUFFLE_GRID, : tile_w * _SHUFFLE_GRID]
    tiles = F.unfold(cropped, kernel_size=(tile_h, tile_w), stride=(tile_h, tile_w))  # (B, C*th*tw, G)
    order = torch.rand(batch, grid, generator=generator).argsort(dim=1)  # (B, G)
    tiles = tiles.gather(2, order[:, None, :].expand_as(tiles))
    shuffled = F.fold(
        tiles, (tile_h * _SHUFFLE_GRID, tile_w * _SHUFFLE_GRID), (tile_h, tile_w), stride=(tile_h, tile_w)
    )
    return F.interpolate(shuffled, size=(height, width), mode="bilinear", align_corners=False)


def perlin_self_texture(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """images (B, 3, S, S) -> (anomalous images, masks (B, 1, S, S))."""
    batch, _, size, _ = images.shape
    masks = perlin_masks(batch, size, generator)
    angle = (torch.rand(batch, generator=generator) - 0.5) * math.pi
    shift = torch.rand(batch, 2, generator=generator) - 0.5
    jittered = _colour_jitter(_affine_copy(images, angle, shift), generator, strength=0.3)
    shuffled = _colour_jitter(_shuffled_copy(images, generator), generator, strength=0.3)
    use_shuffled = (torch.rand(batch, 1, 1, 1, generator=generator) < 0.5).float()
    texture = use_shuffled * shuffled + (1 - use_shuffled) * jittered
    opacity = 0.5 + 0.5 * torch.rand(batch, 1, 1, 1, generator=generator)
    blended = images * (1 - opacity * masks) + texture * opacity * masks
    return blended, masks


def cutpaste_scar(images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """images (B, 3, S, S) -> (images with a thin pasted strip, masks (B, 1, S, S))."""
    batch, _, size, _ = images.shape
    rand = torch.rand(batch, 6, generator=generator)
    centre = 0.15 + 0.7 * rand[:, :2]  # (B, 2) in image fractions
    half_length = (0.05 + 0.1 * rand[:, 2]) * size
    half_width = (0.008 + 0.02 * rand[:, 3]) * size + 0.5
    angle = rand[:, 4] * math.pi
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    dx = coords[None, None, :] - centre[:, 0, None, None] * size  # (B, 1, S)
    dy = coords[None, :, None] - centre[:, 1, None, None] * size  # (B, S, 1)
    along = dx * angle.cos()[:, None, None] + dy * angle.sin()[:, None, None]  # (B, S, S)
    across = -dx * angle.sin()[:, None, None] + dy * angle.cos()[:, None, None]
    masks = ((along.abs() <= half_length[:, None, None]) & (across.abs() <= half_width[:, None, None])).float()
    masks = masks.unsqueeze(1)  # (B, 1, S, S)
    shift = (torch.rand(batch, 2, generator=generator) - 0.5) * 1.2
    source = _colour_jitter(_affine_copy(images, torch.zeros(batch), shift), generator, strength=0.4)
    return images * (1 - masks) + source * masks, masks


def simulate_anomalies(views: Tensor, probability: float, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Make each view anomalous with ``probability``, half Perlin self-texture, half CutPaste scar.

    views (V, 3, S, S) in [0, 1] -> (views, masks (V, 1, S, S), labels (V,)); a label is 1 exactly when
    its mask is non-empty (a Perlin threshold can leave a mask empty, and that view stays normal).
    """
    count = views.shape[0]
    draw = torch.rand(count, 2, generator=generator)
    altered = draw[:, 0] < probability
    use_perlin = draw[:, 1] < 0.5
    out = views.clone()
    masks = torch.zeros(count, 1, *views.shape[-2:])
    for rows, kind in (
        ((altered & use_perlin), perlin_self_texture),
        ((altered & ~use_perlin), cutpaste_scar),
    ):
        picked = rows.nonzero().flatten()
        if picked.numel():
            out[picked], masks[picked] = kind(views[picked], generator)
    labels = (masks.flatten(1).amax(dim=1) > 0).long()
    return out, masks, labels

"""Seeded synthetic product images for tests, the demo camera and benchmarks.

Real line footage is scarce and cannot ship with the code, so a `SyntheticProduct` stands in for one
product: its shape, colour, surface, marks and background are fixed by a style seed, and every call draws
a new instance with the jitter a fixed line camera sees (small pose changes, lighting drift, sensor noise).

An instance is built as a pre-lighting albedo; defects are painted onto that albedo and lighting and noise
are applied per pixel afterwards. Because the defect parameters are drawn from the rng after the instance,
`normal(rng_a)` and `defective(rng_b)` with equal rng states show the same part and differ only inside the
defect mask, which makes the masks exact ground truth.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

DEFECT_KINDS: tuple[str, ...] = ("scratch", "spot", "missing_corner", "contamination")

_SHIFT = 4  # fractional bits for sub-pixel cv2 drawing, so shapes move smoothly with the pose
_ALPHA_FLOOR = 0.1  # defect coverage below this is dropped, so every changed pixel is inside the mask
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class SyntheticSample:
    """One drawn image with its ground truth: mask is 255 on defective pixels, all zero for normals."""

    image: np.ndarray
    mask: np.ndarray
    defect: str | None


@dataclass(frozen=True)
class _Instance:
    """A posed part before lighting, kept apart from the lighting so a defect can be painted in between."""

    albedo: np.ndarray  # (H, W, 3) float32 in [0, 1]
    background: np.ndarray  # (H, W, 3) float32: what shows where the part is absent
    part_alpha: np.ndarray  # (H, W) float32 part coverage (0 in the bore)
    pose: np.ndarray  # (2, 3) affine map from canonical to image coordinates
    gain: np.ndarray  # (H, W, 1) float32: brightness, contrast and illumination gradient, times 255
    offset: np.ndarray  # (H, W, 3) float32: contrast pivot and sensor noise in 0-255 units, plus rounding


def _fixed(points: np.ndarray) -> np.ndarray:
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def _coverage(shape: tuple[int, int], polygons: list[np.ndarray]) -> np.ndarray:
    """Anti-aliased union of filled polygons in [0, 1]; one fill per polygon so overlaps never cancel."""
    canvas = np.zeros(shape, np.uint8)
    for polygon in polygons:
        cv2.fillPoly(canvas, [_fixed(polygon)], 255, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255


def _stroke(shape: tuple[int, int], path: np.ndarray, thickness: int, closed: bool = False) -> np.ndarray:
    canvas = np.zeros(shape, np.uint8)
    cv2.polylines(canvas, [_fixed(path)], closed, 255, thickness, cv2.LINE_AA, _SHIFT)
    return canvas.astype(np.float32) / 255


def _ellipse(center: np.ndarray, axes: tuple[float, float], angle: float = 0.0, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * x - s * y, s * x + c * y], axis=1) + center


def _transform(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ pose[:, :2].T + pose[:, 2]


def _unit_noise(noise: np.ndarray) -> np.ndarray:
    return ((noise - noise.mean()) / (noise.std() + 1e-6)).astype(np.float32)


def _colour(rng: np.random.Generator, max_saturation: float, luma: tuple[float, float]) -> np.ndarray:
    """A random hue rescaled to a luminance band, so part and background always contrast."""
    rgb = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, max_saturation), 1.0), np.float32)
    return np.clip(rgb * rng.uniform(*luma) / float(rgb @ _LUMA), 0.0, 1.0)


class SyntheticProduct:
    """One product's appearance, fixed by `style_seed`; every call draws a new instance of it."""

    def __init__(self, style_seed: int = 0, width: int = 256, height: int = 256) -> None:
        if width < 32 or height < 32:
            raise ValueError(f"image size must be at least 32x32, got {width}x{height}")
        self.width, self.height = width, height
        self._shape = (height, width)
        self._size = size = float(min(width, height))  # every length scales with this
        rng = np.random.default_rng(style_seed)
        center = np.array([width / 2, height / 2])
        self._center = center
        self._part_rgb = _colour(rng, 0.5, (0.42, 0.65))
        self._luma = float(self._part_rgb @ _LUMA)

        half_w = rng.uniform(0.30, 0.36) * size
        half_h = half_w * rng.uniform(0.55, 0.8)
        signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float64)
        if rng.uniform() < 0.5:  # rounded rectangle
            radius = rng.uniform(0.1, 0.3) * half_h
            vertices = signs * [half_w, half_h]
            arcs = [
                _ellipse(np.zeros(2), (radius, radius), 0.0, 64)[16 * i : 16 * i + 17]
                + sign * [half_w - radius, half_h - radius]
                for i, sign in enumerate(signs)
            ]
            outline = np.concatenate(arcs)
        else:  # elongated hexagon plate
            k = 1 - rng.uniform(0.45, 0.9) * half_h / half_w  # where the chamfers meet the long sides
            vertices = np.array([[1, 0], [k, 1], [-k, 1], [-1, 0], [-k, -1], [k, -1]]) * [half_w, half_h]
            outline = vertices
        # Corners for missing_corner: the vertex, the inward bisector and tan of the half angle there.
        to_prev = np.roll(vertices, 1, axis=0) - vertices
        to_next = np.roll(vertices, -1, axis=0) - vertices
        to_prev /= np.linalg.norm(to_prev, axis=1, keepdims=True)
        to_next /= np.linalg.norm(to_next, axis=1, keepdims=True)
        inward = to_prev + to_next
        inward /= np.linalg.norm(inward, axis=1, keepdims=True)
        half_angle = np.arccos(np.clip(np.sum(to_prev * inward, axis=1), -1, 1))
        self._corners = (vertices + center, inward, np.tan(half_angle))

        side = rng.choice([-1.0, 1.0])
        bore_offset = [side * rng.uniform(0.35, 0.5) * half_w, rng.uniform(-0.12, 0.12) * half_h]
        bore_center = center + np.array(bore_offset)
        bore_radius = rng.uniform(0.22, 0.35) * half_h
        body = _coverage(self._shape, [outline + center])
        alpha = body * (1 - _coverage(self._shape, [_ellipse(bore_center, (bore_radius, bore_radius))]))

        # Surface: brushed streaks or isotropic grain, plus slow mottling and an edge bevel lit from top-left.
        grain = rng.standard_normal(self._shape).astype(np.float32)
        if rng.uniform() < 0.5:
            streak = max(3, int(0.12 * size)) | 1
            kernel = (streak, 1) if rng.uniform() < 0.5 else (1, streak)
            texture = 0.05 * _unit_noise(cv2.blur(grain, kernel)) + 0.015 * grain
        else:
            texture = 0.06 * _unit_noise(cv2.GaussianBlur(grain, (0, 0), max(0.6, size / 300)))
        mottle = cv2.resize(
            rng.standard_normal((6, 6)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
        )
        bevel_sigma = 0.012 * size
        gy, gx = np.gradient(cv2.GaussianBlur(body, (0, 0), bevel_sigma))
        bevel = (gx + gy) * bevel_sigma * 0.6
        albedo = self._part_rgb * (1 + texture + 0.03 * mottle + bevel)[..., None]

        # Marks: an engraved ring around the bore and a printed text-like label on the other side.
        ink = 0.12 if self._luma > 0.5 else 0.92
        line = max(1, round(size / 160))
        ring_r = bore_radius * rng.uniform(1.35, 1.6)
        groove = _stroke(self._shape, _ellipse(bore_center, (ring_r, ring_r)), line, True)
        lip = _stroke(self._shape, _ellipse(bore_center - line * 0.8, (ring_r, ring_r)), line, True)
        bar_h = rng.uniform(0.035, 0.05) * size
        widths = rng.uniform(0.012, 0.03, int(rng.integers(3, 7))) * size
        starts = np.cumsum(np.concatenate([[0.0], widths[:-1] + 0.012 * size]))
        label_x = center[0] - side * rng.uniform(0.35, 0.5) * half_w - (starts[-1] + widths[-1]) / 2
        label_y = center[1] + rng.uniform(-0.45, 0.2) * half_h
        bars = [
            np.array([[x0, label_y], [x0 + w, label_y], [x0 + w, label_y + bar_h], [x0, label_y + bar_h]])
            for x0, w in zip(starts + label_x, widths, strict=True)
        ]
        printed = _coverage(self._shape, bars)
        albedo = albedo * (1 - 0.45 * groove + 0.3 * lip)[..., None]
        albedo = albedo * (1 - printed[..., None]) + ink * printed[..., None]
        albedo = np.clip(albedo, 0, 1) * alpha[..., None]
        self._part_rgba = np.dstack([albedo, alpha]).astype(np.float32)  # premultiplied, warps cleanly
        self._shadow = cv2.GaussianBlur(body, (0, 0), 0.02 * size)

        bg_rgb = _colour(rng, 0.5, (0.08, 0.2))
        bg_grain = rng.standard_normal(self._shape).astype(np.float32)
        if rng.uniform() < 0.5:  # woven belt: fine directional streaks
            bg_grain = _unit_noise(cv2.blur(bg_grain, (max(3, int(0.05 * size)) | 1, 1)))
        bg_mottle = cv2.resize(
            rng.standard_normal((4, 4)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC
        )
        self._background = (bg_rgb * (1 + 0.08 * bg_grain + 0.08 * bg_mottle)[..., None]).astype(np.float32)

        # Defect anchors: canonical points well inside the part, clear of the outline and the bore.
        inside = cv2.distanceTransform((alpha > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
        self._anchors = np.argwhere(inside > 0.06 * size)[:, ::-1].astype(np.float64)
        self._ramp_x = (np.arange(width, dtype=np.float32) / width - 0.5)[None, :, None]
        self._ramp_y = (np.arange(height, dtype=np.float32) / height - 0.5)[:, None, None]

    def normal(self, rng: np.random.Generator) -> SyntheticSample:
        """A defect-free instance; consumes the rng exactly as the start of `defective` does."""
        instance = self._draw_instance(rng)
        return SyntheticSample(self._expose(instance.albedo, instance), np.zeros(self._shape, np.uint8), None)

    def defective(self, rng: np.random.Generator, kind: str | None = None) -> SyntheticSample:
        """Draws the same instance `normal` would from this rng state, then paints one defect onto it."""
        if kind is not None and kind not in DEFECT_KINDS:
            raise ValueError(f"unknown defect kind {kind!r}; expected one of {', '.join(DEFECT_KINDS)}")
        instance = self._draw_instance(rng)
        if kind is None:
            kind = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
        painters = {
            "scratch": self._scratch,
            "spot": self._spot,
            "missing_corner": self._missing_corner,
            "contamination": self._contamination,
        }
        alpha, layer = painters[kind](rng, instance)
        alpha = np.where(alpha >= _ALPHA_FLOOR, alpha, 0).astype(np.float32)[..., None]
        albedo = instance.albedo * (1 - alpha) + layer * alpha
        mask = np.where(alpha[..., 0] > 0, 255, 0).astype(np.uint8)
        return SyntheticSample(self._expose(albedo, instance), mask, kind)

    def sample(self, rng: np.random.Generator, defect_rate: float) -> SyntheticSample:
        """A line stream: each part is defective with probability `defect_rate`, of a uniformly drawn kind."""
        if not 0.0 <= defect_rate <= 1.0:
            raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate}")
        return self.defective(rng) if rng.uniform() < defect_rate else self.normal(rng)

    def _draw_instance(self, rng: np.random.Generator) -> _Instance:
        size = self._size
        pose = cv2.getRotationMatrix2D((float(self._center[0]), float(self._center[1])), rng.uniform(-5.0, 5.0), 1.0)
        pose[:, 2] += rng.uniform(-0.04, 0.04, 2) * size
        gain, contrast = rng.uniform(0.96, 1.04, 2).tolist()
        tilt, direction = rng.uniform(0.0, 0.08), rng.uniform(0, 2 * np.pi)
        # Triangular noise (sum of two uniforms) looks like Gaussian sensor noise at a third of the cost.
        noise = rng.random((2, *self._shape, 3), dtype=np.float32).sum(axis=0) - np.float32(1.0)

        wsize = (self.width, self.height)
        part = cv2.warpAffine(self._part_rgba, pose, wsize, flags=cv2.INTER_LINEAR)
        shadow_pose = pose + np.array([[0, 0, 0.012 * size], [0, 0, 0.018 * size]])
        shadow = cv2.warpAffine(self._shadow, shadow_pose, wsize, flags=cv2.INTER_LINEAR)
        background = self._background * (1 - 0.4 * shadow)[..., None]
        alpha = part[..., 3]
        albedo = background * (1 - alpha)[..., None] + part[..., :3]
        ramp = np.cos(direction) * self._ramp_x + np.sin(direction) * self._ramp_y
        light = (255 * gain * contrast * (1 + tilt * ramp)).astype(np.float32)
        offset = noise * np.float32(255 * 0.01 * np.sqrt(6)) + np.float32(255 * 0.5 * (1 - contrast) + 0.5)
        return _Instance(albedo, background, alpha, pose, light, offset)

    def _expose(self, albedo: np.ndarray, instance: _Instance) -> np.ndarray:
        """Lighting and noise act per pixel, so pixels a defect did not touch come out identical."""
        return np.clip(albedo * instance.gain + instance.offset, 0, 255).astype(np.uint8)

    def _anchor(self, rng: np.random.Generator, pose: np.ndarray, count: int = 1) -> np.ndarray:
        return _transform(pose, self._anchors[rng.integers(len(self._anchors), size=count)])

    def _polarity(self, rng: np.random.Generator) -> bool:
        """True for a light defect: random on mid-tone parts, forced to contrast on light or dark ones."""
        coin = rng.uniform() < 0.5
        return self._luma < 0.47 or (self._luma <= 0.58 and coin)

    def _scratch(self, rng: np.random.Generator, instance: _Instance) -> tuple[np.ndarray, np.ndarray]:
        start = self._anchor(rng, instance.pose)[0]
        candidates = self._anchor(rng, instance.pose, 8)
        lengths = np.linalg.norm(candidates - start, axis=1)
        pick = int(np.argmin(np.abs(lengths - rng.uniform(0.4, 0.6) * self._size)))
        end, length = candidates[pick], lengths[pick]
        normal = np.array([start[1] - end[1], end[0] - start[0]]) / max(length, 1e-6)
        control = (start + end) / 2 + normal * rng.uniform(-0.15, 0.15) * length
        t = np.linspace(0, 1, 24)[:, None]
        curve = (1 - t) ** 2 * start + 2 * t * (1 - t) * control + t**2 * end
        thickness = max(1, round(rng.uniform(2.5, 4.0) * self._size / 256))
        tone = 0.95 if self._polarity(rng) else 0.08
        cover = _stroke(self._shape, curve, thickness) * rng.uniform(0.85, 1.0)
        return cover * instance.part_alpha, np.full(3, tone, np.float32)

    def _spot(self, rng: np.random.Generator, instance: _Instance) -> tuple[np.ndarray, np.ndarray]:
        count = int(rng.integers(1, 4))
        areas = rng.uniform(0.006, 0.018) * self._size**2 / count * rng.uniform(0.6, 1.4, count)
        offsets = rng.normal(0, 0.05 * self._size, (count, 2))
        offsets[0] = 0  # the first blob sits on the anchor, the rest scatter around it like spatter
        centers = self._anchor(rng, instance.pose) + offsets
        aspects = rng.uniform(0.6, 1.0, count)
        angles = rng.uniform(0, np.pi, count)
        majors = np.sqrt(areas / (np.pi * aspects))  # semi-axes (m, m * aspect) enclose the drawn area
        blobs = [
            _ellipse(c, (m, m * r), phi, 32) for c, m, r, phi in zip(centers, majors, aspects, angles, strict=True)
        ]
        palette = [(0.07, 0.06, 0.05), (0.5, 0.22, 0.08), colorsys.hsv_to_rgb(rng.uniform(), 0.9, 0.85)]
        colour = np.array(palette[int(rng.integers(3))], np.float32)
        if np.abs(colour - self._part_rgb).max() < 0.35:  # a paint drop the colour of the part is no defect
            colour = np.array(palette[0], np.float32)
        cover = _coverage(self._shape, blobs) * rng.uniform(0.85, 1.0)
        return cover * instance.part_alpha, colour

    def _missing_corner(self, rng: np.random.Generator, instance: _Instance) -> tuple[np.ndarray, np.ndarray]:
        vertices, inwards, tans = self._corners
        i = int(rng.integers(len(vertices)))
        depth = np.sqrt(rng.uniform(0.008, 0.03) * self._size**2 / tans[i])
        inward = inwards[i]
        across = np.array([-inward[1], inward[0]])
        offsets = np.linspace(-1.5, 1.5, 7) * depth * tans[i]
        jitter = np.concatenate([[0.0], rng.uniform(-0.2, 0.2, 5), [0.0]]) * depth
        edge = vertices[i] + inward * (depth + jitter[:, None]) + across * offsets[:, None]
        beyond = edge[[-1, 0]] - inward * 3 * depth
        cut = _coverage(self._shape, [_transform(instance.pose, np.concatenate([edge, beyond]))])
        return cut * (instance.part_alpha > 0), instance.background

    def _contamination(self, rng: np.random.Generator, instance: _Instance) -> tuple[np.ndarray, np.ndarray]:
        radius = np.sqrt(rng.uniform(0.012, 0.03) * self._size**2 / np.pi)
        count = int(rng.integers(4, 8))
        centers = self._anchor(rng, instance.pose) + rng.normal(0, 0.45 * radius, (count, 2))
        axes = radius * rng.uniform(0.3, 0.65, (count, 2))
        lobes = [
            _ellipse(c, (a, b), phi, 32)
            for c, (a, b), phi in zip(centers, axes, rng.uniform(0, np.pi, count), strict=True)
        ]
        light = self._polarity(rng)  # dust is light, oil is dark and brownish
        colour = np.array((0.88, 0.86, 0.8) if light else (0.14, 0.11, 0.06), np.float32)
        blotch = cv2.resize(
            rng.uniform(0.6, 1.0, (8, 8)).astype(np.float32),
            (self.width, self.height),
            interpolation=cv2.INTER_LINEAR,
        )
        grain = rng.random((*self._shape, 1), dtype=np.float32) * np.float32(0.2) - np.float32(0.1)
        cover = _coverage(self._shape, lobes) * blotch * rng.uniform(0.8, 0.95)
        return cover * instance.part_alpha, colour * (1 + grain)


def write_folder_dataset(
    root: Path, product: SyntheticProduct, n_normal: int, n_defect_per_kind: int, seed: int
) -> None:
    """Writes the plain folder layout: root/good/*.png (normals), root/<kind>/*.png per defect kind,
    root/masks/<kind>/<same file name>.png (binary masks 0/255). File names are zero-padded indices
    (000.png ...). One rng seeded by `seed` draws everything, so a seed always gives the same dataset."""
    if n_normal < 0 or n_defect_per_kind < 0:
        raise ValueError(f"counts must be non-negative, got {n_normal} and {n_defect_per_kind}")
    rng = np.random.default_rng(seed)
    width = max(3, len(str(max(n_normal, n_defect_per_kind) - 1)))
    for folder in ["good", *DEFECT_KINDS, *(f"masks/{kind}" for kind in DEFECT_KINDS)]:
        (root / folder).mkdir(parents=True, exist_ok=True)  # the full layout exists even for zero counts

    def save(path: Path, image: np.ndarray) -> None:
        pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
        if not cv2.imwrite(str(path), pixels):
            raise OSError(f"could not write {path}")

    for index in range(n_normal):
        save(root / "good" / f"{index:0{width}d}.png", product.normal(rng).image)
    for kind in DEFECT_KINDS:
        for index in range(n_defect_per_kind):
            sample = product.defective(rng, kind)
            save(root / kind / f"{index:0{width}d}.png", sample.image)
            save(root / "masks" / kind / f"{index:0{width}d}.png", sample.mask)

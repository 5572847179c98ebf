"""The live view's latest frames: kept per camera, encoded once per inspection, scaled for the tile."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np

from linewatch.images import decode_rgb
from linewatch.types import Verdict, VerdictLabel
from linewatch.web.live import PINNED_PER_CAMERA, LiveFrames


def verdict(camera: str, seq: int, threshold: float = 0.5) -> Verdict:
    return Verdict(
        inspection_id=f"{camera}-boot-{seq}",
        camera=camera,
        product="part",
        seq=seq,
        frame_ts=datetime(2026, 11, 28, 12, 0, seq, tzinfo=UTC),
        captured_mono=float(seq),
        score=0.7,
        threshold=threshold,
        label=VerdictLabel.DEFECT,
        model_version="v1",
    )


def frame(seed: int, width: int = 320, height: int = 240) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def hot_map() -> np.ndarray:
    pixel_map = np.zeros((16, 16), dtype=np.float32)
    pixel_map[4:8, 4:8] = 1.0
    return pixel_map


def test_nothing_before_the_first_verdict() -> None:
    live = LiveFrames()
    assert live.show("cam1") is None and live.jpeg("cam1", "frame", "cam1-boot-1") is None


def test_a_shown_verdict_keeps_its_own_frame_while_newer_ones_arrive() -> None:
    live = LiveFrames()
    live.update(verdict("cam1", 1), frame(1), hot_map())
    live.update(verdict("cam2", 1), frame(2), hot_map())
    live.update(verdict("cam1", 2), frame(3), hot_map())
    shown = live.show("cam1")
    assert shown is not None and shown.seq == 2 and live.show("cam2").seq == 1  # type: ignore[union-attr]
    live.update(verdict("cam1", 3), frame(4), hot_map())  # arrives between the page and its image request
    data = live.jpeg("cam1", "frame", shown.inspection_id)
    assert data is not None
    decoded = decode_rgb(data, "live frame").astype(int)
    assert decoded.shape == (240, 320, 3)
    # JPEG is lossy: the picture is close to the shown verdict's frame (3), not to the newer one (4)
    assert np.abs(decoded - frame(3).astype(int)).mean() < np.abs(decoded - frame(4).astype(int)).mean()
    assert live.jpeg("cam1", "frame", "cam1-boot-3") is None  # never shown: not served


def test_only_the_last_few_shown_inspections_are_kept() -> None:
    live = LiveFrames()
    ids = []
    for seq in range(1, PINNED_PER_CAMERA + 3):
        live.update(verdict("cam1", seq), frame(seq), hot_map())
        ids.append(live.show("cam1").inspection_id)  # type: ignore[union-attr]
    assert [live.jpeg("cam1", "frame", i) is not None for i in ids] == [False, False] + [True] * PINNED_PER_CAMERA


def test_the_heatmap_differs_from_the_frame_where_the_map_is_hot() -> None:
    live = LiveFrames()
    image = np.full((160, 160, 3), 128, dtype=np.uint8)
    live.update(verdict("cam1", 1), image, hot_map())
    shown = live.show("cam1").inspection_id  # type: ignore[union-attr]
    plain = decode_rgb(live.jpeg("cam1", "frame", shown), "frame").astype(int)  # type: ignore[arg-type]
    heat = decode_rgb(live.jpeg("cam1", "heatmap", shown), "heatmap").astype(int)  # type: ignore[arg-type]
    hot = np.abs(heat[40:80, 40:80] - plain[40:80, 40:80]).mean()
    cold = np.abs(heat[120:160, 120:160] - plain[120:160, 120:160]).mean()
    assert hot > cold


def test_each_inspection_is_encoded_once_however_often_it_is_asked_for() -> None:
    live = LiveFrames()
    live.update(verdict("cam1", 1), frame(1), hot_map())
    shown = live.show("cam1").inspection_id  # type: ignore[union-attr]
    assert live.jpeg("cam1", "heatmap", shown) is live.jpeg("cam1", "heatmap", shown)  # the same bytes object


def test_the_map_is_copied_so_the_batch_array_is_not_kept_alive() -> None:
    live = LiveFrames()
    batch_maps = np.zeros((8, 16, 16), dtype=np.float32)
    live.update(verdict("cam1", 1), frame(1), batch_maps[0])
    batch_maps[0] = 1.0  # the scorer reuses or frees its batch; the live shot must not see it
    shown = live.show("cam1").inspection_id  # type: ignore[union-attr]
    plain = decode_rgb(live.jpeg("cam1", "frame", shown), "frame").astype(int)  # type: ignore[arg-type]
    heat = decode_rgb(live.jpeg("cam1", "heatmap", shown), "heatmap").astype(int)  # type: ignore[arg-type]
    assert np.abs(heat - plain).mean() < 60  # a cold map only tints; a hot one would paint it red


def test_wide_frames_are_scaled_down_for_the_tile_keeping_the_aspect() -> None:
    live = LiveFrames(max_width=200)
    live.update(verdict("cam1", 1), frame(1, width=800, height=600), hot_map())
    shown = live.show("cam1").inspection_id  # type: ignore[union-attr]
    for kind in ("frame", "heatmap"):
        assert decode_rgb(live.jpeg("cam1", kind, shown), kind).shape == (150, 200, 3)  # type: ignore[arg-type]


def test_a_zero_threshold_override_still_renders_a_heatmap() -> None:
    live = LiveFrames()
    live.update(replace(verdict("cam1", 1), threshold=0.0), frame(1), hot_map())
    assert live.jpeg("cam1", "heatmap", live.show("cam1").inspection_id) is not None  # type: ignore[union-attr]

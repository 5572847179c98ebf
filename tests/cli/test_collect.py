"""``linewatch collect``: normal images from a camera of the config, cropped and rotated like the daemon's
frames, spaced, without near-duplicates, added to a folder across runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from linewatch.cli.main import main
from linewatch.images import read_rgb, write_image


def write_config(root: Path, cameras: str) -> Path:
    path = root / "linewatch.toml"
    path.write_text(f'[site]\ndata_dir = "{root / "data"}"\n{cameras}')
    return path


FOLDER_CAMERA = """
[[cameras]]
name = "station2"
source = "folder"
path = "{folder}"
product = "bracket"
roi = [10, 20, 60, 40]
rotate = 90
"""


def part(seed: int) -> np.ndarray:
    """A 100x80 image with its own random pattern (so two seeds are never near-duplicates)."""
    return np.random.default_rng(seed).integers(0, 256, size=(80, 100, 3), dtype=np.uint8)


def test_collect_crops_rotates_skips_near_duplicates_and_adds_to_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "hot"
    originals = [part(1), part(1), part(2), part(3), part(3), part(4)]  # two exact repeats
    for n, image in enumerate(originals):
        write_image(folder / f"{n:02d}.png", image)
    config = write_config(tmp_path, FOLDER_CAMERA.format(folder=folder))
    out = tmp_path / "normals"
    args = ["collect", "--camera", "station2", "--out", str(out), "--every", "0", "--config", str(config)]
    assert main([*args, "--count", "3"]) == 0
    saved = sorted(out.iterdir())
    assert [p.name for p in saved] == ["station2-0001.png", "station2-0002.png", "station2-0003.png"]
    expected = [np.rot90(originals[n][20:60, 10:70], k=-1) for n in (0, 2, 3)]  # roi, then 90 degrees clockwise
    for path, image in zip(saved, expected, strict=True):
        np.testing.assert_array_equal(read_rgb(path), image)
    assert "collected 3 images from camera station2" in capsys.readouterr().out
    write_image(folder / "99.png", part(5))
    # The folder is read again from its first file: parts 1-3 are in `out` already, only 4 and 5 are new.
    assert main([*args, "--count", "3", "--timeout", "1"]) == 2
    assert "2 of 3 images after 1 s (5 near-duplicates skipped)" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir())[-2:] == ["station2-0004.png", "station2-0005.png"]
    np.testing.assert_array_equal(read_rgb(out / "station2-0005.png"), np.rot90(part(5)[20:60, 10:70], k=-1))


def test_collect_from_a_synthetic_camera_keeps_its_size_and_only_normals(tmp_path: Path) -> None:
    cameras = '[[cameras]]\nname = "cam1"\nsource = "synthetic"\nproduct = "demo part"\nwidth = 96\nheight = 64\n'
    config = write_config(tmp_path, cameras)
    out = tmp_path / "normals"
    assert main(["collect", "--camera", "cam1", "--count", "2", "--every", "0", "--out", str(out),
                 "--config", str(config)]) == 0  # fmt: skip
    assert [read_rgb(p).shape for p in sorted(out.iterdir())] == [(64, 96, 3), (64, 96, 3)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--camera", "ghost", "--count", "1"], "no camera 'ghost' in the config (cameras: station2)"),
        (["--camera", "station2", "--count", "0"], "must be at least 1"),
        (["--camera", "station2", "--count", "1", "--every", "nan"], "finite number"),
    ],
)
def test_collect_names_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    config = write_config(tmp_path, FOLDER_CAMERA.format(folder=tmp_path))
    assert main(["collect", *args, "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert message in capsys.readouterr().err

"""The everyday commands start without the heavy libraries (issue 21: ``linewatch --help`` took 14 s because
the command line imported torch, open_clip, SQLAlchemy and uvicorn up front). Each runs in a fresh
interpreter, and what it imported is read from ``sys.modules`` at exit: deterministic, unlike a timing
(``benchmarks/cli_start.py`` measures the seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "torchvision", "open_clip", "safetensors", "cv2", "sklearn", "uvicorn", "starlette", "alembic"}
PROBE = """
import json, sys
from linewatch.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted({name.split(".")[0] for name in sys.modules})}))
"""


def run_cli(args: list[str], cwd: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def line_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped config with a port nobody answers on, so ``status`` finds no daemon quickly."""
    folder = tmp_path_factory.mktemp("startup")
    config = (ROOT / "config.toml").read_text().replace("port = 9108", "port = 9")
    (folder / "config.toml").write_text(config)
    return folder


@pytest.mark.parametrize(
    ("args", "also_allowed", "code"),
    [
        (["check-config"], set(), 0),
        (["status", "--interval", "0"], set(), 2),  # no daemon: a clear error
        (["label", "cam1-boot-1", "normal"], set(), 2),  # no journal yet: a clear error
        (["model", "versions"], {"sqlalchemy"}, 0),
    ],
)
def test_everyday_commands_import_nothing_heavy(
    line_folder: Path, args: list[str], also_allowed: set[str], code: int
) -> None:
    result = run_cli(args, line_folder)
    assert result["code"] == code
    loaded = set(result["modules"])  # type: ignore[arg-type]
    assert loaded & HEAVY == set()
    assert "sqlalchemy" not in loaded or "sqlalchemy" in also_allowed


def test_help_imports_no_linewatch_command_module(line_folder: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "linewatch", "--help"], cwd=line_folder, capture_output=True,
        text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0 and "model" in done.stdout and "label" in done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert imported & {"linewatch.cli.model", "linewatch.cli.retrain", "linewatch.config", "pydantic", *HEAVY} == set()

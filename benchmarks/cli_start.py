"""Seconds from starting ``linewatch`` to its exit, for the everyday commands (target: under 0.5 s each).

Each command runs ``--runs`` times through the installed console script (as a user types it), against a copy
of the shipped config whose HTTP port nobody answers on and with no journal yet, so ``status`` and
``label`` end at their "no daemon" / "no journal" errors: what is measured is start-up, not the work.

    python benchmarks/cli_start.py            # median and worst of 5 runs per command
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["--help"],
    ["check-config"],
    ["status", "--interval", "0"],
    ["label", "cam1-boot-1", "normal"],
    ["model", "versions"],
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    script = Path(sys.executable).with_name("linewatch")
    folder = Path(tempfile.mkdtemp(prefix="linewatch-cli-"))
    try:
        (folder / "config.toml").write_text((ROOT / "config.toml").read_text().replace("port = 9108", "port = 9"))
        for command in COMMANDS:
            seconds = []
            for _ in range(args.runs):
                start = time.perf_counter()
                subprocess.run([str(script), *command], cwd=folder, capture_output=True, check=False)
                seconds.append(time.perf_counter() - start)
            print(f"linewatch {' '.join(command):<32} median {statistics.median(seconds):.2f} s, "
                  f"worst {max(seconds):.2f} s")  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

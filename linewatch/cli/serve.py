"""``linewatch serve``: start the scoring server (:mod:`linewatch.serve`) in its own environment.

PyTriton pins numpy below 2 and its bundled Python stub breaks under the pyenv interpreter (docs/serving.md),
so the server runs from ``.venv-serve`` (``make serve-setup``), not from the daemon's environment. This
command finds that interpreter and replaces itself with ``python -m linewatch.serve``, so signals, the exit
code and the logs are the server's own: ``LINEWATCH_SERVE_PYTHON`` names it, else the ``.venv-serve`` of
this checkout, else this interpreter if it has PyTriton.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

SERVE_VENV = ".venv-serve"


def serving_python() -> Path:
    named = os.environ.get("LINEWATCH_SERVE_PYTHON")
    if named:
        if not Path(named).is_file():
            raise ValueError(f"LINEWATCH_SERVE_PYTHON={named} is not a file")
        return Path(named)
    checkout = Path(__file__).resolve().parents[2] / SERVE_VENV / "bin" / "python"
    if checkout.is_file():
        return checkout
    if importlib.util.find_spec("pytriton") is not None:
        return Path(sys.executable)
    raise ValueError(
        f"the scoring server runs in its own environment, and there is none: run `make serve-setup` (it builds "
        f"{SERVE_VENV} with Debian's python3.11 and PyTriton), or set LINEWATCH_SERVE_PYTHON; docs/serving.md"
    )


def cmd_serve(args: argparse.Namespace) -> int:
    python = serving_python()
    server_args = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args
    os.execv(python, [str(python), "-m", "linewatch.serve", *server_args])

"""Terminal output shared by CLI commands: the random-weights banner and the training progress bar."""

from __future__ import annotations

import sys
from collections.abc import Callable

from tqdm import tqdm

RANDOM_BANNER = (
    "!!! RANDOM BACKBONE WEIGHTS: this model was built on an untrained CLIP. Its scores mean nothing on "
    "real parts; use it for tests and demos only. !!!"
)


def announce_random(is_random: bool) -> None:
    """Say it on stderr every time a random-weight backbone is used, so nobody mistakes it for real."""
    if is_random:
        print(RANDOM_BANNER, file=sys.stderr)


def progress_bar(total: int) -> tuple[tqdm, Callable[[int, int, dict[str, float]], None]]:
    """A tqdm bar on stderr and the trainer callback that advances it with the current loss."""
    bar = tqdm(total=total, desc="training", unit="step", file=sys.stderr, dynamic_ncols=True)

    def update(step: int, _total: int, losses: dict[str, float]) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{losses['total']:.3f}")

    return bar, update

"""Trainer: a fixed number of seeded AdamW steps with a cosine schedule.

No early stopping and no test data: the only inputs are the normal shots of each product.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from linewatch.anople.model import AnoPLe

ProgressCallback = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainingSummary:
    steps: int
    seed: int
    final_losses: dict[str, float]


def _stack_shots(model: AnoPLe, shots: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    images, product_ids = [], []
    for product, batch in shots.items():
        if batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[0] == 0:
            raise ValueError(f"shots for {product!r} must be a non-empty (k, 3, H, W) tensor, got {tuple(batch.shape)}")
        images.append(batch.float())
        product_ids.append(torch.full((batch.shape[0],), model.product_index(product)))
    return torch.cat(images), torch.cat(product_ids)


@contextlib.contextmanager
def deterministic_on(device: torch.device) -> Iterator[None]:
    """On CUDA, PyTorch's deterministic algorithms and cuDNN settings for the span of a training run, restored
    after (the scorer in the same process keeps its fast kernels). An op without a deterministic CUDA kernel
    warns, naming itself, rather than stopping a retrain. cuBLAS needs CUBLAS_WORKSPACE_CONFIG as well, which
    the CLI sets at start. The CPU is deterministic already."""
    if device.type != "cuda":
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]


def train(
    model: AnoPLe,
    shots: Mapping[str, Tensor],
    seed: int,
    progress: ProgressCallback | None = None,
) -> TrainingSummary:
    """Train prompts and decoder on ``shots`` (product -> (k, 3, H, W) in [0, 1], ideally at twice the
    input size so the quadrant views stay sharp).

    Steps, batch size and learning rate come from ``model.settings``. Deterministic for a given seed: on the
    CPU as is, on CUDA through :func:`deterministic_on`. The memory banks are built afterwards by the caller
    with ``model.build_memory`` from the shots preprocessed exactly as scored images are, so bank and
    queries match.
    """
    settings = model.settings
    images, product_ids = _stack_shots(model, shots)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    params = [p for p in (*model.learner.parameters(), *model.decoder.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, settings.steps))
    model.learner.train()
    model.decoder.train()
    with deterministic_on(model.device):
        last = _steps(model, images, product_ids, generator, optimizer, scheduler, progress)
    model.learner.eval()
    model.decoder.eval()
    model.refresh_text_cache()
    return TrainingSummary(steps=settings.steps, seed=seed, final_losses=last)


def _steps(
    model: AnoPLe,
    images: Tensor,
    product_ids: Tensor,
    generator: torch.Generator,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: ProgressCallback | None,
) -> dict[str, float]:
    """The optimisation loop of :func:`train`; returns the last step's losses."""
    settings = model.settings
    last: dict[str, float] = {}
    for step in range(settings.steps):
        picks = torch.randint(images.shape[0], (settings.batch_size,), generator=generator)
        batch = images[picks]
        if settings.hflip:
            flip = torch.rand(settings.batch_size, generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
        losses = model.training_losses(batch, product_ids[picks], generator)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        scheduler.step()
        last = {name: float(value.detach()) for name, value in losses.items()}
        if progress is not None:
            progress(step + 1, settings.steps, last)
    return last

"""Trainer: a fixed number of seeded AdamW steps with a cosine schedule.

No early stopping and no test data: the only inputs are the normal shots of each product.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def train(
    model: AnoPLe,
    shots: Mapping[str, Tensor],
    seed: int,
    progress: ProgressCallback | None = None,
) -> TrainingSummary:
    """Train prompts and decoder on ``shots`` (product -> (k, 3, H, W) in [0, 1], ideally at twice the
    input size so the quadrant views stay sharp).

    Steps, batch size and learning rate come from ``model.settings``. Deterministic on the CPU for a
    given seed. The memory banks are built afterwards by the caller with ``model.build_memory`` from
    the shots preprocessed exactly as scored images are, so bank and queries match.
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
    model.learner.eval()
    model.decoder.eval()
    model.refresh_text_cache()
    return TrainingSummary(steps=settings.steps, seed=seed, final_losses=last)

"""AnoPLe's per-batch scoring as one self-contained module: what an inference runtime compiles.

:meth:`AnoPLe.predict` looks things up per call (the text cache, a memory bank per product in a dict, the
upsample+blur matrix per output size) and loops over the products of a batch. An exported graph cannot:
here every such piece is a constant of the module and the product is an input, so one traced graph scores
a batch of mixed products. It follows ``predict`` step for step and, in fp32, equals it to float rounding
(tests/anople/test_graph.py).

The memory banks of all products are stacked into one (P, K * N, d_v) tensor per memory block, K the
largest shot count; a product with fewer shots has its missing shots masked out. The same mask leaves one
shot out on request (``left_out_shot``), so a runtime can reproduce leave-one-out calibration scores with
the bank it was compiled with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linewatch.anople.model import GLOBAL_VIEW, AnoPLe, fuse, fused_grid
from linewatch.anople.prompts import encode_image, plain_patch_tokens

NO_SHOT_LEFT_OUT = -1
# Cosine similarities lie in [-1, 1]: subtracting this from a masked shot's similarities puts them below
# every real one, so they never win the maximum, and leaves the others bit for bit as they were.
_MASKED = 4.0


class ScoringGraph(nn.Module):
    """images (B, 3, S, S) in [0, 1], product_ids (B,) int64, left_out_shot (B,) int64 (-1: none)
    -> image_score (B,), global_probability (B,), pixel_map (B, H, H), as :meth:`AnoPLe.predict` with
    ``out_size`` H (default: the input size S, what the daemon draws heatmaps at).

    Shares the frozen tower, prompts and decoder with ``model`` (no copy); snapshots its text embeddings,
    temperature, memory banks and fusion scales, so a retrained ``model`` needs a new graph.
    """

    def __init__(self, model: AnoPLe, out_size: int | None = None) -> None:
        super().__init__()
        missing = [product for product in model.products if product not in model.memory]
        if missing:
            raise KeyError(f"no memory bank for product(s) {missing}; train or load them first")
        self.visual_clip = model.clip
        self.learner = model.learner
        self.decoder = model.decoder
        self.grid = model.grid
        self.decoder_layers = model.decoder_layers
        self.memory_layers = model.memory_layers
        self.plain_memory = model.settings.memory_features == "plain"
        self.keep = tuple(sorted({*model.decoder_layers, *(() if self.plain_memory else model.memory_layers)}))
        # the vision tower's sequence: CLS, the patches, the view token and the prompts (see encode_image)
        self.tower_length = 1 + model.grid * model.grid + 1 + model.learner.n_prompt_tokens
        self.harmonic_eps = model.settings.harmonic_eps
        self.fusion = model.settings.fusion
        text = model.text_cache if model.text_cache is not None else model.refresh_text_cache()
        self.register_buffer("text", text.detach().float().clone())  # (P, 2, e)
        self.register_buffer("tau", model.tau().detach().float().clone())  # ()
        self.register_buffer("mean", model.mean.clone())  # (1, 3, 1, 1)
        self.register_buffer("std", model.std.clone())
        self.register_buffer("spread", model._upsample_blur(out_size or model.input_size).clone())  # (H, g)
        all_products = torch.arange(len(model.products), device=model.device)
        self.register_buffer("fusion_scales", model.scales_of(all_products).float().clone())  # (P, 5)
        patches = self.grid * self.grid
        shots = [model.memory[product][self.memory_layers[0]].shape[0] // patches for product in model.products]
        self.max_shots = max(shots)
        valid = torch.zeros(len(shots), self.max_shots, device=model.device)
        for index, count in enumerate(shots):
            valid[index, :count] = 1.0
        self.register_buffer("shot_valid", valid)  # (P, K)
        self.shots = shots
        for layer in self.memory_layers:
            banks = torch.zeros(len(shots), self.max_shots * patches, model.memory[model.products[0]][layer].shape[1])
            for index, product in enumerate(model.products):
                bank = model.memory[product][layer].float()  # (k * N, d_v), shot-major
                banks[index, : bank.shape[0]] = bank
            self.register_buffer(f"memory_{layer}", banks.to(model.device))  # (P, K * N, d_v)

    def _memory_map(self, tokens: dict[int, Tensor], product_ids: Tensor, left_out_shot: Tensor) -> Tensor:
        """(B, N): per patch, (1 - max cos) / 2 against the kept shots of the image's product, averaged over
        the memory blocks, as ``AnoPLe._memory_map``."""
        batch = product_ids.shape[0]
        patches = self.grid * self.grid
        shot_numbers = torch.arange(self.max_shots, device=product_ids.device)  # (K,)
        keep = self.shot_valid[product_ids] * (shot_numbers[None, :] != left_out_shot[:, None]).float()  # (B, K)
        penalty = ((1.0 - keep) * _MASKED).repeat_interleave(patches, dim=1)  # (B, K * N)
        result = torch.zeros(batch, patches, device=product_ids.device)
        for layer in self.memory_layers:
            bank = getattr(self, f"memory_{layer}")[product_ids]  # (B, K * N, d_v)
            queries = F.normalize(tokens[layer], dim=-1)  # (B, N, d_v)
            similarity = queries @ bank.transpose(1, 2) - penalty[:, None, :]  # (B, N, K * N)
            result = result + ((1 - similarity.amax(dim=-1)) / 2) / len(self.memory_layers)
        return result

    def terms(self, images: Tensor, product_ids: Tensor, left_out_shot: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> global probability (B,), decoder map (B, g, g), memory map (B, g, g), what :func:`fuse` fuses."""
        batch = images.shape[0]
        view_ids = torch.full((batch,), GLOBAL_VIEW, dtype=torch.long, device=images.device)
        normalised = (images - self.mean) / self.std
        # The concatenating prompt path: its graph has no in-place writes for an exporter to get wrong.
        pooled, tokens = encode_image(
            self.visual_clip, self.learner, normalised, view_ids, self.keep, in_place=False
        )  # (B, e), per block (B, N, d_v)
        if self.plain_memory:  # the plain tower's patch tokens, as the bank holds them
            tokens = {**tokens, **plain_patch_tokens(self.visual_clip, normalised, self.memory_layers)}
        text = self.text[product_ids]  # (B, 2, e)
        global_logits = self.tau * torch.einsum("be,bke->bk", F.normalize(pooled, dim=-1), text)
        global_probability = global_logits.softmax(dim=-1)[:, 1]  # (B,)
        decoder_map, _ = self.decoder([tokens[i] for i in self.decoder_layers], text, self.tau)  # (B, N)
        memory_map = self._memory_map(tokens, product_ids, left_out_shot)  # (B, N)
        return (
            global_probability,
            decoder_map.view(batch, self.grid, self.grid),
            memory_map.view(batch, self.grid, self.grid),
        )

    def forward(self, images: Tensor, product_ids: Tensor, left_out_shot: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        global_probability, decoder_map, memory_map = self.terms(images, product_ids, left_out_shot)
        image_score, pixel_map = fuse(
            global_probability,
            decoder_map,
            memory_map,
            self.fusion_scales[product_ids],
            self.spread,
            self.fusion,
            self.harmonic_eps,
        )  # (B,), (B, H, H)
        return image_score, global_probability, pixel_map


class RemoteGraph(nn.Module):
    """What a scoring server runs: images (B, S, S, 3) uint8, product_ids (B, 1) int64, left_out_shot (B, 1)
    int64 -> image_score (B, 1), global_probability (B, 1), fused_grid (B, g, g), all float32.

    The line PC sends the frames it already resized, as bytes (a quarter of float32), and gets back g * g + 2
    numbers per frame (227 for ViT-B-16-plus-240, about 1 KB) instead of the S * S map: it rebuilds the map
    with :func:`~linewatch.anople.model.pixel_map_from_grid`. Per-sample inputs carry a trailing axis of 1,
    the shape Triton's batcher stacks requests along.
    """

    def __init__(self, graph: ScoringGraph) -> None:
        super().__init__()
        self.scoring = graph

    def forward(self, images: Tensor, product_ids: Tensor, left_out_shot: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pixels = images.permute(0, 3, 1, 2).float() / 255.0  # (B, 3, S, S) in [0, 1], as to_model_tensor
        ids, left_out = product_ids[:, 0], left_out_shot[:, 0]  # (B,)
        global_probability, decoder_map, memory_map = self.scoring.terms(pixels, ids, left_out)
        image_score, _ = fuse(
            global_probability,
            decoder_map,
            memory_map,
            self.scoring.fusion_scales[ids],
            self.scoring.spread,
            self.scoring.fusion,
            self.scoring.harmonic_eps,
        )  # (B,)
        grid = fused_grid(
            decoder_map, memory_map, self.scoring.fusion_scales[ids], self.scoring.fusion, self.scoring.harmonic_eps
        )  # (B, g, g)
        return image_score[:, None], global_probability[:, None], grid

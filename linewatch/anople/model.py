"""AnoPLe: prompts, decoder and few-shot memory around a frozen CLIP, for training and batched scoring.

Images enter as float tensors in [0, 1]; normalisation with the backbone's mean and std happens here so
every caller (trainer, scorer, eval, benchmarks) feeds the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linewatch.anople.backbone import Backbone
from linewatch.anople.decoder import Decoder
from linewatch.anople.losses import alignment_loss, dice_loss, focal_loss, image_loss
from linewatch.anople.prompts import PromptedText, PromptLearner, encode_image, plain_patch_tokens
from linewatch.anople.settings import AnoPLeSettings, layer_indices
from linewatch.anople.simulate import make_views, simulate_anomalies

GLOBAL_VIEW = 0


@dataclass(frozen=True)
class Prediction:
    """Scores of one batch. All tensors are detached and on the model's device."""

    image_score: Tensor  # (B,) harmonic mean of global probability and pixel-map max
    global_probability: Tensor  # (B,) p_abnormal from the global embedding
    pixel_map: Tensor  # (B, H, W) fused, upsampled and blurred anomaly map
    decoder_map: Tensor  # (B, g, g) abnormal-patch probability from the decoder
    memory_map: Tensor  # (B, g, g) nearest-shot patch distance (1 - cos) / 2


def harmonic_mean(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Elementwise 2ab / (a + b); eps keeps it finite where both are exactly zero."""
    return 2 * a * b / (a + b + eps)


def upsample_blur_matrix(grid: int, size: int, sigma: float) -> Tensor:
    """(size, grid) float64: bilinear upsampling (align_corners=False) from ``grid`` to ``size`` followed by
    a Gaussian blur with replicated edges, as ONE linear map along an axis.

    Both steps are linear and separable, so for a (g, g) map ``A @ map @ A.T`` equals interpolate-then-blur
    exactly (up to float rounding). Two tiny matmuls replace a 2-D resize and two single-channel
    convolutions over the full output, which cost about 15% of the tiny model's whole predict on the CPU.
    """
    impulses = torch.eye(grid, dtype=torch.float64).view(grid, 1, grid)  # each row: a unit impulse
    upsample = F.interpolate(impulses, size=size, mode="linear", align_corners=False).view(grid, size).T
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    taps = (torch.arange(size)[:, None] + torch.arange(-radius, radius + 1)[None, :]).clamp(0, size - 1)
    blur = torch.zeros(size, size, dtype=torch.float64).scatter_add_(1, taps, kernel.expand(size, -1).clone())
    return blur @ upsample  # (size, grid)


class AnoPLe(nn.Module):
    """The whole detector. ``products`` fixes the order of product indices used everywhere.

    A product's prompt words default to its name; ``prompt_words`` overrides them, so several products
    can share words ("pcb1".."pcb4" are all a "printed circuit board") yet keep their own memory bank
    and threshold.
    """

    def __init__(
        self,
        backbone: Backbone,
        settings: AnoPLeSettings,
        products: list[str],
        prompt_words: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if not products or len(set(products)) != len(products):
            raise ValueError(f"products must be a non-empty list of distinct names, got {products}")
        self.settings = settings
        self.backbone_spec = backbone.spec
        self.input_size = backbone.input_size
        self.products = list(products)
        self.prompt_words = {product: (prompt_words or {}).get(product, product) for product in self.products}
        self.clip = backbone.clip
        visual = backbone.clip.visual
        text_tower = getattr(backbone.clip, "text", backbone.clip)
        vision_depth = len(visual.transformer.resblocks)
        prompt_depth = min(settings.prompt_depth, vision_depth, len(text_tower.transformer.resblocks))
        vision_width = visual.transformer.width
        text_width = text_tower.token_embedding.embedding_dim
        embed_dim = visual.proj.shape[1]
        self.grid = visual.grid_size[0]
        self._spread_cache: dict[tuple[int, torch.device], Tensor] = {}  # see _upsample_blur
        self.learner = PromptLearner(settings, text_width, vision_width, prompt_depth)
        self.decoder_layers = layer_indices(vision_depth, settings.decoder_fractions)
        self.memory_layers = layer_indices(vision_depth, settings.memory_fractions)
        self.decoder = Decoder(
            len(self.decoder_layers),
            vision_width,
            min(settings.decoder_width, embed_dim),
            settings.decoder_heads,
            settings.decoder_mlp_ratio,
            embed_dim,
        )
        self.text = PromptedText(
            backbone.clip, backbone.tokenizer, settings, [self.prompt_words[p] for p in self.products]
        )
        self.register_buffer("mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("text_cache", None, persistent=False)
        self.memory: dict[str, dict[int, Tensor]] = {}

    # ---- shared pieces -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.mean.device

    def tau(self) -> Tensor:
        return self.clip.logit_scale.exp().clamp(max=self.settings.tau_max)

    def product_index(self, product: str) -> int:
        try:
            return self.products.index(product)
        except ValueError:
            raise KeyError(f"unknown product {product!r}; this model knows {self.products}") from None

    def learned_parameters(self) -> dict[str, Tensor]:
        """Every trained tensor (prompts, couplers, view tokens, decoder), keyed for safetensors."""
        state = {f"learner.{k}": v for k, v in self.learner.state_dict().items()}
        state.update({f"decoder.{k}": v for k, v in self.decoder.state_dict().items()})
        return state

    def load_learned_parameters(self, state: dict[str, Tensor]) -> None:
        learner = {k.removeprefix("learner."): v for k, v in state.items() if k.startswith("learner.")}
        decoder = {k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")}
        self.learner.load_state_dict(learner, strict=True)
        self.decoder.load_state_dict(decoder, strict=True)
        self.text_cache = None

    def _normalise(self, images: Tensor) -> Tensor:
        return (images.to(self.device) - self.mean) / self.std

    # ---- training ------------------------------------------------------------------------------
    def training_losses(self, images: Tensor, product_ids: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """images (B, 3, H, W) in [0, 1] on the CPU, product_ids (B,) -> the three losses and their sum.

        Views are cut and anomalies simulated on the CPU with ``generator``; the model runs on its device.
        """
        size = self.input_size
        views, view_ids = make_views(images, size)  # (5B, 3, S, S), (5B,)
        views, masks, labels = simulate_anomalies(views, self.settings.anomaly_probability, generator)
        noise = torch.randn(views.shape[0], self.clip.visual.proj.shape[1], generator=generator)
        product_v = product_ids.repeat_interleave(self.settings.n_views).to(self.device)  # (V,)
        views, masks, labels = views.to(self.device), masks.to(self.device), labels.to(self.device)

        pooled, tokens = encode_image(
            self.clip, self.learner, self._normalise(views), view_ids.to(self.device), self.decoder_layers
        )
        global_embeddings = F.normalize(pooled, dim=-1)  # (V, e)
        text = self.text(self.learner)[product_v]  # (V, 2, e)
        tau = self.tau()
        anomaly_map, patches = self.decoder([tokens[i] for i in self.decoder_layers], text, tau)  # (V, N)
        # The pixel loss runs at 4x the patch grid: finer adds cost, not information (the map is 15x15).
        loss_size = 4 * self.grid
        grid_map = anomaly_map.view(-1, 1, self.grid, self.grid)
        prob = F.interpolate(grid_map, size=(loss_size, loss_size), mode="bilinear", align_corners=False)
        masks = (F.interpolate(masks, size=(loss_size, loss_size), mode="area") > 0.25).float()

        normal = labels == 0
        noisy = F.normalize(
            global_embeddings[normal] + self.settings.latent_noise_sigma * noise.to(self.device)[normal],
            dim=-1,
        )
        losses = {
            "pixel": focal_loss(prob, masks, self.settings.focal_gamma) + dice_loss(prob, masks),
            "image": image_loss(
                torch.cat([global_embeddings, noisy]),
                torch.cat([text, text[normal]]),
                torch.cat([labels, torch.ones_like(labels[normal])]),
                tau,
            ),
            "align": alignment_loss(global_embeddings, patches, anomaly_map),
        }
        losses["total"] = losses["pixel"] + losses["image"] + losses["align"]
        return losses

    # ---- few-shot memory -----------------------------------------------------------------------
    @torch.inference_mode()
    def build_memory(self, product: str, shots: Tensor) -> None:
        """shots (k, 3, S, S) in [0, 1]: their prompted patch tokens become the product's memory bank."""
        self.product_index(product)
        view_ids = torch.full((shots.shape[0],), GLOBAL_VIEW, device=self.device)
        normalised = self._normalise(shots)
        if self.settings.memory_features == "prompted":
            _, tokens = encode_image(self.clip, self.learner, normalised, view_ids, self.memory_layers)
        else:
            tokens = plain_patch_tokens(self.clip, normalised, self.memory_layers)
        self.memory[product] = {
            layer: F.normalize(tokens[layer], dim=-1).reshape(-1, tokens[layer].shape[-1]).contiguous()
            for layer in self.memory_layers
        }  # per layer (k * N, d_v)

    def _apply(self, fn, recurse=True):
        """Move/cast the memory banks with the module (they are not buffers: their count varies)."""
        super()._apply(fn, recurse)
        self.memory = {p: {k: fn(v) for k, v in bank.items()} for p, bank in self.memory.items()}
        return self

    def _memory_map(self, tokens: dict[int, Tensor], product_ids: Tensor) -> Tensor:
        """Per patch, (1 - max cos) / 2 against the image's product bank, averaged over memory blocks -> (B, N)."""
        batch, n_patches = product_ids.shape[0], self.grid * self.grid
        result = torch.zeros(batch, n_patches, device=self.device)
        for product_id in product_ids.unique().tolist():
            product = self.products[product_id]
            if product not in self.memory:
                raise KeyError(f"no memory bank for product {product!r}; train or load it first")
            rows = (product_ids == product_id).nonzero().flatten()
            for layer, bank in self.memory[product].items():
                queries = F.normalize(tokens[layer][rows].float(), dim=-1)  # (b, N, d_v)
                with torch.autocast(self.device.type, enabled=False):  # see predict: cosines in fp32
                    nearest = (queries @ bank.float().T).amax(dim=-1)  # (b, N)
                result[rows] += ((1 - nearest) / 2) / len(self.memory[product])
        return result

    # ---- scoring -------------------------------------------------------------------------------
    def refresh_text_cache(self) -> Tensor:
        """Recompute the (P, 2, e) text embeddings; they depend only on the learned prompts."""
        with torch.inference_mode():
            self.text_cache = self.text(self.learner).float()
        return self.text_cache

    def _upsample_blur(self, out_size: int) -> Tensor:
        """The (out_size, grid) map of :func:`upsample_blur_matrix` for this model, built once per size."""
        key = (out_size, self.device)
        matrix = self._spread_cache.get(key)
        if matrix is None:
            sigma = self.settings.blur_sigma_at_400px * out_size / 400
            matrix = upsample_blur_matrix(self.grid, out_size, sigma).float().to(self.device)
            self._spread_cache[key] = matrix
        return matrix

    def spread(self, maps: Tensor, out_size: int) -> Tensor:
        """(B, g, g) patch-grid maps -> (B, H, H) at ``out_size``, upsampled and blurred as the pixel map is
        (in fp32 even under bf16/fp16 autocast); eval spreads each term's map the same way to compare them."""
        matrix = self._upsample_blur(out_size)  # (H, g): upsampled to out_size and blurred, per axis
        with torch.autocast(self.device.type, enabled=False):
            return matrix @ maps.float() @ matrix.T

    @torch.inference_mode()
    def predict(self, images: Tensor, product_ids: Tensor, out_size: int | None = None) -> Prediction:
        """images (B, 3, S, S) in [0, 1], product_ids (B,) -> Prediction with maps at ``out_size``."""
        if images.ndim != 4 or images.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(
                f"expected images of shape (B, 3, {self.input_size}, {self.input_size}), got {tuple(images.shape)}"
            )
        out_size = out_size or self.input_size
        text_all = self.text_cache if self.text_cache is not None else self.refresh_text_cache()
        product_ids = product_ids.to(self.device)
        batch = images.shape[0]
        view_ids = torch.full((batch,), GLOBAL_VIEW, device=self.device)
        normalised = self._normalise(images)
        prompted_memory = self.settings.memory_features == "prompted"
        keep = tuple(sorted({*self.decoder_layers, *(self.memory_layers if prompted_memory else ())}))
        pooled, tokens = encode_image(self.clip, self.learner, normalised, view_ids, keep)
        if not prompted_memory:  # the plain tower's patch tokens, as the bank holds them
            tokens = {**tokens, **plain_patch_tokens(self.clip, normalised, self.memory_layers)}
        text = text_all[product_ids].float()  # (B, 2, e)
        tau = self.tau()
        # Under bf16/fp16 autocast only the towers run in reduced precision: the cosines (global, decoder,
        # memory) stay in fp32. At temperature 100 a bf16 cosine (3 significant digits) moves the global
        # probability by several percent, and a memory distance near 0 is all rounding; the threshold was
        # calibrated in fp32 (issue 18, item 5). They are a few percent of the work.
        with torch.autocast(self.device.type, enabled=False):
            global_logits = tau * torch.einsum("be,bke->bk", F.normalize(pooled.float(), dim=-1), text)
        global_probability = global_logits.softmax(dim=-1)[:, 1]  # (B,)
        decoder_map, _ = self.decoder([tokens[i] for i in self.decoder_layers], text, tau)  # (B, N)
        memory_map = self._memory_map(tokens, product_ids)  # (B, N)
        eps = self.settings.harmonic_eps
        fused = harmonic_mean(decoder_map.float(), memory_map, eps).view(batch, self.grid, self.grid)
        pixel_map = self.spread(fused, out_size)  # (B, H, W)
        image_score = harmonic_mean(global_probability, pixel_map.flatten(1).amax(dim=1), eps)
        return Prediction(
            image_score=image_score,
            global_probability=global_probability,
            pixel_map=pixel_map,
            decoder_map=decoder_map.float().view(batch, self.grid, self.grid),
            memory_map=memory_map.view(batch, self.grid, self.grid),
        )

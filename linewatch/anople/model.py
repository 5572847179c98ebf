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
class Terms:
    """What the fusion combines, of one batch, before fusing. Detached, on the model's device, fp32."""

    global_probability: Tensor  # (B,) p_abnormal from the global embedding
    decoder_map: Tensor  # (B, g, g) abnormal-patch probability from the decoder
    memory_map: Tensor  # (B, g, g) nearest-shot patch distance (1 - cos) / 2

    @staticmethod
    def cat(batches: list[Terms]) -> Terms:
        return Terms(*(torch.cat([getattr(b, name) for b in batches]) for name in Terms.__dataclass_fields__))


@dataclass(frozen=True)
class Prediction:
    """Scores of one batch. All tensors are detached and on the model's device."""

    image_score: Tensor  # (B,) in [0, 1): the terms fused (see fuse)
    global_probability: Tensor  # (B,) p_abnormal from the global embedding
    pixel_map: Tensor  # (B, H, W) fused, upsampled and blurred anomaly map, in [0, 1)
    decoder_map: Tensor  # (B, g, g) abnormal-patch probability from the decoder
    memory_map: Tensor  # (B, g, g) nearest-shot patch distance (1 - cos) / 2


def harmonic_mean(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Elementwise 2ab / (a + b); eps keeps it finite where both are exactly zero."""
    return 2 * a * b / (a + b + eps)


# The "scaled_mean" fusion's per-product scales, in this order: the mean over calibration normals of the
# global probability, of the decoder and memory maps' maxima (spread like the pixel map), and of their patches.
FUSION_SCALES = ("global", "decoder_image", "memory_image", "decoder_patch", "memory_patch")
# A term whose calibration normals all sit at 0 (a memory map of the shots themselves) would divide by zero.
_SCALE_FLOOR = 1e-6


def _spread(matrix: Tensor, maps: Tensor) -> Tensor:
    """(B, g, g) -> (B, H, H) through the (H, g) upsample+blur matrix, on both axes."""
    return matrix @ maps @ matrix.T


def fusion_scales(terms: Terms, spread: Tensor) -> Tensor:
    """The terms of a product's calibration normals -> its (5,) scales (FUSION_SCALES order), ``spread``
    the (H, g) upsample+blur matrix of :func:`fuse`."""
    decoder_max = _spread(spread, terms.decoder_map).flatten(1).amax(dim=1)  # (n,)
    memory_max = _spread(spread, terms.memory_map).flatten(1).amax(dim=1)
    means = [terms.global_probability, decoder_max, memory_max, terms.decoder_map, terms.memory_map]
    return torch.stack([values.float().mean() for values in means]).clamp(min=_SCALE_FLOOR)


def fuse(
    global_probability: Tensor,
    decoder_map: Tensor,
    memory_map: Tensor,
    scales: Tensor,
    spread: Tensor,
    fusion: str,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """(B,), (B, g, g), (B, g, g), scales (B, 5), spread (H, g) -> image score (B,), pixel map (B, H, H).

    "scaled_mean": each term in multiples of its mean on the product's calibration normals, so 1 is what
    a normal part typically reaches on every term; the pixel map averages the two maps so rescaled, the
    image score the global probability and each map's maximum. A mean, unlike the harmonic mean, lets no
    term silence another: the memory map flags a defect the decoder misses. u / (1 + u) then maps the
    averages to [0, 1) without changing their order, so a typical normal scores about 0.5.

    "harmonic": anople.md as written (the scales are not used; ``eps`` keeps it finite at zero). Both are
    pure tensor code, shared by ``AnoPLe.predict`` and the exported graph.
    """
    if fusion == "harmonic":
        pixel_map = _spread(spread, harmonic_mean(decoder_map, memory_map, eps))
        return harmonic_mean(global_probability, pixel_map.flatten(1).amax(dim=1), eps), pixel_map
    decoder_spread = _spread(spread, decoder_map)  # (B, H, H)
    memory_spread = _spread(spread, memory_map)
    pixel = (decoder_spread / scales[:, 3, None, None] + memory_spread / scales[:, 4, None, None]) / 2
    image = (
        global_probability / scales[:, 0]
        + decoder_spread.flatten(1).amax(dim=1) / scales[:, 1]
        + memory_spread.flatten(1).amax(dim=1) / scales[:, 2]
    ) / 3
    return image / (1 + image), pixel / (1 + pixel)


def fused_grid(decoder_map: Tensor, memory_map: Tensor, scales: Tensor, fusion: str, eps: float) -> Tensor:
    """(B, g, g), (B, g, g), scales (B, 5) -> (B, g, g): the fused patch grid whose spread is :func:`fuse`'s
    pixel map (before "scaled_mean"'s u / (1 + u)). Spreading is linear, so a remote scorer sends this grid,
    g * g numbers, instead of the H * H map, and the line PC rebuilds the map with
    :func:`pixel_map_from_grid`; the two orders of the same sums differ by float rounding only."""
    if fusion == "harmonic":
        return harmonic_mean(decoder_map, memory_map, eps)
    return (decoder_map / scales[:, 3, None, None] + memory_map / scales[:, 4, None, None]) / 2


def pixel_map_from_grid(grid: Tensor, spread: Tensor, fusion: str) -> Tensor:
    """(B, g, g) fused grid of :func:`fused_grid`, spread (H, g) -> (B, H, H) pixel map as :func:`fuse`'s."""
    pixel = _spread(spread, grid)
    return pixel if fusion == "harmonic" else pixel / (1 + pixel)


def upsample_matrix(grid: int, size: int) -> Tensor:
    """(size, grid) float64: linear upsampling (align_corners=False) along one axis, so ``U @ map @ U.T`` is
    the bilinear upsampling of a (g, g) map. Its backward is two matmuls, deterministic on CUDA, where
    ``F.interpolate``'s bilinear backward accumulates with atomics in no fixed order."""
    impulses = torch.eye(grid, dtype=torch.float64).view(grid, 1, grid)  # each row: a unit impulse
    return F.interpolate(impulses, size=size, mode="linear", align_corners=False).view(grid, size).T


def upsample_blur_matrix(grid: int, size: int, sigma: float) -> Tensor:
    """(size, grid) float64: bilinear upsampling (align_corners=False) from ``grid`` to ``size`` followed by
    a Gaussian blur with replicated edges, as ONE linear map along an axis.

    Both steps are linear and separable, so for a (g, g) map ``A @ map @ A.T`` equals interpolate-then-blur
    exactly (up to float rounding). Two tiny matmuls replace a 2-D resize and two single-channel
    convolutions over the full output, which cost about 15% of the tiny model's whole predict on the CPU.
    """
    upsample = upsample_matrix(grid, size)
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
        self.fusion_scales: dict[str, Tensor] = {}  # product -> (5,), see fuse; set with the calibration

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
        upsample = upsample_matrix(self.grid, loss_size).to(self.device, anomaly_map.dtype)  # (L, g)
        prob = (upsample @ anomaly_map.view(-1, self.grid, self.grid) @ upsample.T).unsqueeze(1)  # (V, 1, L, L)
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
        """Move/cast the memory banks and fusion scales with the module (they are not buffers: their count varies)."""
        super()._apply(fn, recurse)
        self.memory = {p: {k: fn(v) for k, v in bank.items()} for p, bank in self.memory.items()}
        self.fusion_scales = {p: fn(scales) for p, scales in self.fusion_scales.items()}
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
            return _spread(matrix, maps.float())

    def scales_of(self, product_ids: Tensor) -> Tensor:
        """(B,) product ids -> (B, 5) fusion scales; ones under the harmonic fusion, which has none."""
        if self.settings.fusion == "harmonic":
            return torch.ones(product_ids.shape[0], len(FUSION_SCALES), device=self.device)
        named = [self.products[index] for index in product_ids.unique().tolist()]
        missing = [product for product in named if product not in self.fusion_scales]
        if missing:
            raise KeyError(f"no fusion scales for product(s) {missing}; calibrate them first (fit_fusion_scales)")
        return torch.stack([self.fusion_scales[self.products[i]] for i in product_ids.tolist()])

    def fit_fusion_scales(self, product: str, normals: Terms) -> None:
        """Set a product's fusion scales from the terms of its calibration normals (see :func:`fuse`)."""
        self.product_index(product)
        self.fusion_scales[product] = fusion_scales(normals, self._upsample_blur(self.input_size))

    @torch.inference_mode()
    def terms(self, images: Tensor, product_ids: Tensor) -> Terms:
        """images (B, 3, S, S) in [0, 1], product_ids (B,) -> the unfused Terms."""
        if images.ndim != 4 or images.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(
                f"expected images of shape (B, 3, {self.input_size}, {self.input_size}), got {tuple(images.shape)}"
            )
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
        return Terms(
            global_probability=global_probability.float(),
            decoder_map=decoder_map.float().view(batch, self.grid, self.grid),
            memory_map=memory_map.view(batch, self.grid, self.grid),
        )

    @torch.inference_mode()
    def fuse(self, terms: Terms, product_ids: Tensor, out_size: int | None = None) -> Prediction:
        """Terms of a batch -> Prediction with maps at ``out_size`` (default: the input size)."""
        scales = self.scales_of(product_ids.to(self.device))
        spread = self._upsample_blur(out_size or self.input_size)
        with torch.autocast(self.device.type, enabled=False):
            image_score, pixel_map = fuse(
                terms.global_probability,
                terms.decoder_map,
                terms.memory_map,
                scales,
                spread,
                self.settings.fusion,
                self.settings.harmonic_eps,
            )
        return Prediction(image_score, terms.global_probability, pixel_map, terms.decoder_map, terms.memory_map)

    @torch.inference_mode()
    def predict(self, images: Tensor, product_ids: Tensor, out_size: int | None = None) -> Prediction:
        """images (B, 3, S, S) in [0, 1], product_ids (B,) -> Prediction with maps at ``out_size``."""
        return self.fuse(self.terms(images, product_ids), product_ids, out_size)

"""Learnable bi-directional prompts and the two prompted CLIP towers.

Both towers run their own loop over the frozen residual blocks (batch-first in open_clip 3.x) so the
prompt slots can be overwritten before every prompted block and intermediate patch tokens are returned
explicitly, never through hooks or module state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from linewatch.anople.settings import AnoPLeSettings

_PLACEHOLDER = "X"
_INIT_STD = 0.02


class PromptLearner(nn.Module):
    """Per-layer text and visual prompts coupled through linear maps, plus the per-view signal tokens.

    Layer j (0 <= j < depth) of the text tower sees ``[P_j^t, v2t_j(P_j^v)]`` in its prompt slots and
    the vision tower sees ``[P_j^v, t2v_j(P_j^t)]``. ``P_0^t`` is the shared text context. Coupling uses
    the prompt parameters, not image-dependent states, so text embeddings depend only on the product
    and can be cached per model version.
    """

    def __init__(self, settings: AnoPLeSettings, text_width: int, vision_width: int, depth: int) -> None:
        super().__init__()
        self.depth = depth
        n_t, n_v = settings.n_text_ctx, settings.n_visual_ctx
        self.text_ctx = nn.Parameter(torch.randn(depth, n_t, text_width) * _INIT_STD)  # (J, n_t, d_t)
        self.visual_ctx = nn.Parameter(torch.randn(depth, n_v, vision_width) * _INIT_STD)  # (J, n_v, d_v)
        self.vision_to_text = nn.ModuleList(nn.Linear(vision_width, text_width) for _ in range(depth))
        self.text_to_vision = nn.ModuleList(nn.Linear(text_width, vision_width) for _ in range(depth))
        self.view_tokens = nn.Parameter(torch.randn(settings.n_views, vision_width) * _INIT_STD)  # (V, d_v)

    @property
    def n_prompt_tokens(self) -> int:
        return self.text_ctx.shape[1] + self.visual_ctx.shape[1]

    def text_prompts(self, layer: int) -> Tensor:
        """(n_t + n_v, d_t) tokens for the text tower's prompt slots at ``layer``."""
        coupled = self.vision_to_text[layer](self.visual_ctx[layer])  # (n_v, d_t)
        return torch.cat([self.text_ctx[layer], coupled], dim=0)

    def vision_prompts(self, layer: int) -> Tensor:
        """(n_v + n_t, d_v) tokens appended to the vision sequence at ``layer``."""
        coupled = self.text_to_vision[layer](self.text_ctx[layer])  # (n_t, d_v)
        return torch.cat([self.visual_ctx[layer], coupled], dim=0)


class PromptedText(nn.Module):
    """Encodes the normal and abnormal prompt of every product through the frozen text tower.

    Templates are tokenised with placeholder words where the prompts go, so the pooling index already
    counts the spliced vectors; placeholder embeddings are overwritten in place, never inserted. The slots
    follow the start-of-text token, or open the text for tokenizers without one.
    """

    def __init__(self, clip: nn.Module, tokenizer: object, settings: AnoPLeSettings, prompt_words: list[str]) -> None:
        super().__init__()
        tower = getattr(clip, "text", clip)
        if getattr(tower, "cls_emb", None) is not None:
            raise ValueError("text towers with a class token are not supported by AnoPLe prompts")
        self._tower = [tower]  # a list keeps the frozen tower out of this module's parameters
        n_ctx = settings.n_text_ctx + settings.n_visual_ctx
        placeholders = " ".join([_PLACEHOLDER] * n_ctx)
        texts = []
        for words in prompt_words:
            texts.append(settings.normal_template.format(ctx=placeholders, product=words))
            texts.append(settings.abnormal_template.format(ctx=placeholders, product=words))
        token_ids = tokenizer(texts)  # (2P, L)
        # Where the prompts go: right after the start-of-text token, or first where the tokenizer has none
        # (a token that two different one-word texts share at position 0 is a start-of-text token).
        start = int(tokenizer([_PLACEHOLDER])[0, 0] == tokenizer(["a"])[0, 0])
        placeholder_id = tokenizer([_PLACEHOLDER])[0, start]
        if not bool((token_ids[:, start : start + n_ctx] == placeholder_id).all()):
            where = "right after the start-of-text token" if start else "first (this tokenizer has no start token)"
            raise ValueError(f"prompt templates must start with '{{ctx}}' so the prompts sit {where}")
        self.start = start
        self.n_ctx = n_ctx
        self.n_products = len(prompt_words)
        with torch.no_grad():
            self.register_buffer("token_embeds", tower.token_embedding(token_ids).float())  # (2P, L, d_t)
        self.register_buffer("pool_index", _pool_index(tower, token_ids))  # (2P,)

    def forward(self, learner: PromptLearner) -> Tensor:
        """(P, 2, e) l2-normalised [normal, abnormal] embedding per product."""
        tower = self._tower[0]
        n, ctx, start = self.token_embeds.shape[0], self.n_ctx, self.start

        def splice(x: Tensor, layer: int) -> Tensor:
            prompts = learner.text_prompts(layer).to(x.dtype).expand(n, -1, -1)  # (2P, n_ctx, d_t)
            return torch.cat([x[:, :start], prompts, x[:, start + ctx :]], dim=1)

        x = splice(self.token_embeds, 0) + tower.positional_embedding  # (2P, L, d_t)
        for index, block in enumerate(tower.transformer.resblocks):
            if 0 < index < learner.depth:
                x = splice(x, index)
            x = block(x, attn_mask=tower.attn_mask)
        x = tower.ln_final(x)
        pooled = x[torch.arange(n, device=x.device), self.pool_index]  # (2P, d_t)
        projection = tower.text_projection
        pooled = projection(pooled) if isinstance(projection, nn.Linear) else pooled @ projection  # (2P, e)
        return F.normalize(pooled, dim=-1).reshape(self.n_products, 2, -1)


def _pool_index(tower: nn.Module, token_ids: Tensor) -> Tensor:
    pool_type = getattr(tower, "text_pool_type", "argmax")
    if pool_type == "argmax":
        return token_ids.argmax(dim=-1)
    if pool_type == "eos":
        return (token_ids == tower.text_eos_id).int().argmax(dim=-1)
    if pool_type == "last":
        return torch.full((token_ids.shape[0],), token_ids.shape[1] - 1, dtype=torch.long)
    raise ValueError(f"text pooling {pool_type!r} is not supported by AnoPLe prompts")


def _stem(visual: nn.Module, images: Tensor) -> Tensor:
    """images (B, 3, S, S) normalised -> [CLS, N patches] with positions, after ln_pre: (B, 1+N, d_v)."""
    x = visual.conv1(images)  # (B, d_v, g, g)
    x = x.flatten(2).transpose(1, 2)  # (B, N, d_v)
    cls = visual.class_embedding.to(x.dtype).expand(images.shape[0], 1, -1)  # (B, 1, d_v)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)  # (B, 1+N, d_v)
    return visual.ln_pre(x)


def plain_patch_tokens(clip: nn.Module, images: Tensor, keep: tuple[int, ...]) -> dict[int, Tensor]:
    """The frozen tower without prompts, run only as deep as ``keep`` needs: per block in ``keep`` its patch
    tokens (B, N, d_v), as :func:`encode_image` without a learner gives them. Memory blocks sit at 1/4 and 2/3
    of the depth, so the plain memory features cost two thirds of a pass, not a whole one."""
    visual = clip.visual
    x = _stem(visual, images)  # (B, 1+N, d_v)
    kept: dict[int, Tensor] = {}
    for index, block in enumerate(visual.transformer.resblocks[: max(keep) + 1]):
        x = block(x)
        if index in keep:
            kept[index] = x[:, 1:]  # (B, N, d_v)
    return kept


def encode_image(
    clip: nn.Module,
    learner: PromptLearner | None,
    images: Tensor,
    view_ids: Tensor | None,
    keep: tuple[int, ...],
    in_place: bool | None = None,
) -> tuple[Tensor, dict[int, Tensor]]:
    """Prompted vision tower, or the plain one when ``learner`` is None.

    images: (B, 3, S, S) normalised; view_ids: (B,) indices into the view tokens (ignored without a
    learner). Returns the unnormalised global embedding (B, e) and, for every block index in ``keep``,
    that block's patch tokens (B, N, d_v). Prompted sequence: [CLS, N patches, view signal, prompts];
    positional embedding on CLS and patches only. Without a learner the sequence is [CLS, N patches] and
    the result is open_clip's own ``encode_image`` and intermediates (tests/anople/test_reference.py).
    ``in_place`` picks how the deeper prompts enter (None: in place exactly when autograd is off); both
    ways give the same numbers.
    """
    visual = clip.visual
    batch = images.shape[0]
    x = _stem(visual, images)  # (B, 1+N, d_v)
    n_patches = x.shape[1] - 1
    n_prompts, depth = 0, 0
    if learner is not None:
        if view_ids is None:
            raise ValueError("a prompted image needs its view ids")
        view = learner.view_tokens[view_ids].unsqueeze(1).to(x.dtype)  # (B, 1, d_v)
        n_prompts, depth = learner.n_prompt_tokens, learner.depth
        prompts = learner.vision_prompts(0).to(x.dtype).expand(batch, -1, -1)  # (B, n_v+n_t, d_v)
        x = torch.cat([x, view, prompts], dim=1)  # (B, 1+N+1+n_v+n_t, d_v)
    kept: dict[int, Tensor] = {}
    # Without autograd the prompt slots are overwritten in place: a fresh (B, L, d_v) tensor per layer
    # costs a few percent of throughput in allocation and page faults on the CPU.
    overwrite = not torch.is_grad_enabled() if in_place is None else in_place
    for index, block in enumerate(visual.transformer.resblocks):
        if learner is not None and 0 < index < depth:
            prompts = learner.vision_prompts(index).to(x.dtype).expand(batch, -1, -1)
            if overwrite:
                x[:, -n_prompts:] = prompts
            else:
                x = torch.cat([x[:, :-n_prompts], prompts], dim=1)
        x = block(x)
        if index in keep:
            kept[index] = x[:, 1 : 1 + n_patches]  # (B, N, d_v)
    pooled = visual.ln_post(x[:, 0]) @ visual.proj  # (B, e)
    return pooled, kept

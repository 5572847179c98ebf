"""Prompt splicing: shapes, the pooling index, gradients only where they belong."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from linewatch.anople.backbone import Backbone
from linewatch.anople.model import AnoPLe
from linewatch.anople.prompts import _PLACEHOLDER, PromptedText, PromptLearner, encode_image, plain_patch_tokens
from linewatch.anople.settings import AnoPLeSettings


def test_text_prompt_slots_sit_after_start_token_and_pool_index_counts_them(untrained_model: AnoPLe) -> None:
    text = untrained_model.text
    n_ctx = untrained_model.settings.n_text_ctx + untrained_model.settings.n_visual_ctx
    assert text.n_ctx == n_ctx == untrained_model.learner.n_prompt_tokens
    # "[SOT] X*8 metal plate . [EOT]" -> EOT at 1 + 8 + 3 ("metal", "plate", ".") for the normal prompt,
    # one more for the abnormal prompt ("abnormal").
    normal_eot, abnormal_eot = text.pool_index[0].item(), text.pool_index[1].item()
    assert normal_eot == 1 + n_ctx + 3
    assert abnormal_eot == normal_eot + 1
    # "screw" is one token: the second product's prompts end two tokens earlier.
    assert text.pool_index[2].item() == 1 + n_ctx + 2


def test_text_embeddings_shape_and_unit_norm(untrained_model: AnoPLe) -> None:
    embeddings = untrained_model.text(untrained_model.learner)
    assert embeddings.shape == (2, 2, untrained_model.clip.visual.proj.shape[1])
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2, 2))


def test_spliced_context_changes_the_embedding(untrained_model: AnoPLe) -> None:
    before = untrained_model.text(untrained_model.learner).detach().clone()
    with torch.no_grad():
        untrained_model.learner.text_ctx[0] += 0.5
    after = untrained_model.text(untrained_model.learner)
    assert not torch.allclose(before, after)


def test_vision_sequence_shapes_and_prompt_tokens_reach_the_output(untrained_model: AnoPLe) -> None:
    model = untrained_model
    size = model.input_size
    images = torch.rand(3, 3, size, size)
    keep = (0, 1)
    pooled, tokens = encode_image(model.clip, model.learner, images, torch.tensor([0, 1, 4]), keep)
    assert pooled.shape == (3, model.clip.visual.proj.shape[1])
    assert set(tokens) == set(keep)
    for layer_tokens in tokens.values():
        assert layer_tokens.shape == (3, model.grid * model.grid, model.clip.visual.transformer.width)
    # A different view token changes the output of the same image (the view signal is attended to).
    same = images[:1].expand(2, -1, -1, -1)
    pooled_views, _ = encode_image(model.clip, model.learner, same, torch.tensor([0, 3]), keep)
    assert not torch.allclose(pooled_views[0], pooled_views[1])


def test_only_prompts_couplers_and_decoder_receive_gradients(untrained_model: AnoPLe) -> None:
    model = untrained_model
    images = torch.rand(2, 3, 2 * model.input_size, 2 * model.input_size)
    losses = model.training_losses(images, torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    losses["total"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.clip.parameters())
    learner = model.learner
    for name, parameter in [*learner.named_parameters(), *model.decoder.named_parameters()]:
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
    # Deep prompts at every prompted layer get gradient, on both sides.
    assert (learner.text_ctx.grad.flatten(1).abs().sum(dim=1) > 0).all()
    assert (learner.visual_ctx.grad.flatten(1).abs().sum(dim=1) > 0).all()


def _without_start_token(tokenizer: Callable[[list[str]], torch.Tensor]) -> Callable[[list[str]], torch.Tensor]:
    """The same tokenizer minus its start-of-text token (as in T5-style tokenizers), padded at the end."""

    def tokenize(texts: list[str]) -> torch.Tensor:
        ids = tokenizer(texts)  # (N, L)
        return torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], dim=1)

    return tokenize


@pytest.mark.parametrize("drop_start", [False, True])
def test_text_with_placeholders_in_the_slots_is_open_clips_with_and_without_a_start_token(
    tiny_backbone: Backbone, drop_start: bool
) -> None:
    """A tokenizer without a start-of-text token was refused with "templates must start with '{ctx}'"; the
    slots now open the text there, and the tower still equals open_clip's own on the placeholder template."""
    clip = tiny_backbone.clip
    tokenizer = _without_start_token(tiny_backbone.tokenizer) if drop_start else tiny_backbone.tokenizer
    settings = AnoPLeSettings()
    text = PromptedText(clip, tokenizer, settings, ["metal plate"])
    assert text.start == (0 if drop_start else 1)
    learner = PromptLearner(settings, clip.transformer.width, clip.visual.transformer.width, depth=1)
    placeholder = clip.token_embedding(tokenizer([_PLACEHOLDER])[0, text.start])  # (d_t,)
    slots = " ".join([_PLACEHOLDER] * text.n_ctx)
    templates = [
        template.format(ctx=slots, product="metal plate")
        for template in (settings.normal_template, settings.abnormal_template)
    ]
    with torch.no_grad():  # every prompt slot holds the placeholder word's own embedding
        learner.text_ctx[0] = placeholder.expand(settings.n_text_ctx, -1)
        learner.vision_to_text[0].weight.zero_()
        learner.vision_to_text[0].bias.copy_(placeholder)
        ours = text(learner)
        theirs = F.normalize(clip.encode_text(tokenizer(templates)), dim=-1).reshape(1, 2, -1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_a_template_without_the_slots_first_is_refused_saying_where_they_go(tiny_backbone: Backbone) -> None:
    settings = AnoPLeSettings(normal_template="a photo of {ctx} {product}.")
    with pytest.raises(ValueError, match="sit right after the start-of-text token"):
        PromptedText(tiny_backbone.clip, tiny_backbone.tokenizer, settings, ["screw"])
    with pytest.raises(ValueError, match="sit first \\(this tokenizer has no start token\\)"):
        PromptedText(tiny_backbone.clip, _without_start_token(tiny_backbone.tokenizer), settings, ["screw"])


def test_plain_patch_tokens_are_the_plain_towers_and_stop_at_the_deepest_kept_block(untrained_model: AnoPLe) -> None:
    clip = untrained_model.clip
    images = torch.randn(2, 3, untrained_model.input_size, untrained_model.input_size)
    with torch.inference_mode():
        _, whole_pass = encode_image(clip, None, images, None, (0, 1))
        plain = plain_patch_tokens(clip, images, (0,))
    assert list(plain) == [0]
    torch.testing.assert_close(plain[0], whole_pass[0], rtol=0, atol=0)

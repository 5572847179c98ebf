"""The custom towers against open_clip itself, on the full-size ViT-B-16-plus-240 with random weights (issue 18,
item 1): the tiny test config has 2 blocks, so the real layer choices (decoder blocks 6/9/12, memory blocks
3/8, deep prompts through block 9 and carried past it) were never exercised at their real depth.

- The plain vision tower (no view signal, no prompts) is open_clip's ``encode_image``, and the patch tokens
  it keeps are open_clip's own intermediates at those blocks.
- The prompted text tower, with the prompt slots holding exactly the placeholder words' embeddings, is
  open_clip's ``encode_text`` of the placeholder template: splicing, positions, mask, pooling, projection.
- The training path (prompt slots re-concatenated each block, for autograd) and the inference path
  (overwritten in place) of the prompted vision tower give the same result.
"""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from linewatch.anople.prompts import _PLACEHOLDER, PromptedText, PromptLearner, encode_image
from linewatch.anople.settings import AnoPLeSettings, layer_indices

MODEL = "ViT-B-16-plus-240"
SETTINGS = AnoPLeSettings()
DECODER = layer_indices(12, SETTINGS.decoder_fractions)
MEMORY = layer_indices(12, SETTINGS.memory_fractions)
TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(scope="module")
def clip() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = open_clip.create_model(MODEL, pretrained=None)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def images(clip: nn.Module) -> torch.Tensor:
    size = clip.visual.image_size[0]
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4))  # already "normalised"


def test_the_real_layer_choices_at_depth_12() -> None:
    assert DECODER == (5, 8, 11)  # blocks 6, 9 and 12
    assert MEMORY == (2, 7)  # blocks 3 and 8
    assert SETTINGS.prompt_depth == 9


def test_the_plain_vision_tower_is_open_clips(clip: nn.Module, images: torch.Tensor) -> None:
    keep = tuple(sorted(set(DECODER + MEMORY)))
    with torch.no_grad():
        pooled, tokens = encode_image(clip, None, images, None, keep)
        reference = clip.visual.forward_intermediates(images, indices=list(keep), output_fmt="NLC")
        encoded = clip.encode_image(images)
    assert clip.visual.transformer.layers == 12
    torch.testing.assert_close(pooled, encoded, **TOLERANCE)
    torch.testing.assert_close(pooled, reference["image_features"], **TOLERANCE)
    for index, theirs in zip(keep, reference["image_intermediates"], strict=True):
        assert tokens[index].shape == theirs.shape == (2, 15 * 15, clip.visual.transformer.width)
        torch.testing.assert_close(tokens[index], theirs, **TOLERANCE)


def test_text_with_the_placeholders_in_the_prompt_slots_is_open_clips(clip: nn.Module) -> None:
    tokenizer = open_clip.get_tokenizer(MODEL)
    words = ["metal plate", "screw"]
    text = PromptedText(clip, tokenizer, SETTINGS, words)
    learner = PromptLearner(SETTINGS, clip.transformer.width, clip.visual.transformer.width, depth=1)
    placeholder = clip.token_embedding(tokenizer([_PLACEHOLDER])[0, 1])  # (d_t,)
    with torch.no_grad():  # every prompt slot holds the placeholder word's own embedding
        learner.text_ctx[0] = placeholder.expand(SETTINGS.n_text_ctx, -1)
        learner.vision_to_text[0].weight.zero_()
        learner.vision_to_text[0].bias.copy_(placeholder)
        ours = text(learner)
        slots = " ".join([_PLACEHOLDER] * (SETTINGS.n_text_ctx + SETTINGS.n_visual_ctx))
        templates = [
            template.format(ctx=slots, product=product)
            for product in words
            for template in (SETTINGS.normal_template, SETTINGS.abnormal_template)
        ]
        theirs = F.normalize(clip.encode_text(tokenizer(templates)), dim=-1).reshape(2, 2, -1)
    torch.testing.assert_close(ours, theirs, **TOLERANCE)


def test_the_training_and_the_inference_prompt_paths_agree(clip: nn.Module, images: torch.Tensor) -> None:
    torch.manual_seed(5)
    learner = PromptLearner(SETTINGS, clip.transformer.width, clip.visual.transformer.width, SETTINGS.prompt_depth)
    with torch.no_grad():  # prompts far from their init, so a slot written at the wrong block would show
        for parameter in learner.parameters():
            parameter.normal_(0.0, 0.5)
    view_ids = torch.tensor([0, 3])
    keep = tuple(sorted(set(DECODER + MEMORY)))
    with torch.no_grad():
        in_place = encode_image(clip, learner, images, view_ids, keep)
    with torch.enable_grad():
        concatenated = encode_image(clip, learner, images, view_ids, keep)
    assert concatenated[0].requires_grad  # the training path really ran
    torch.testing.assert_close(in_place[0], concatenated[0].detach(), **TOLERANCE)
    for index in keep:
        torch.testing.assert_close(in_place[1][index], concatenated[1][index].detach(), **TOLERANCE)
    plain, _ = encode_image(clip, None, images, None, ())
    assert not torch.allclose(plain, in_place[0], **TOLERANCE)  # and the prompts do reach the output

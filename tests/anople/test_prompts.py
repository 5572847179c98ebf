"""Prompt splicing: shapes, the pooling index, gradients only where they belong."""

from __future__ import annotations

import torch

from linewatch.anople.model import AnoPLe
from linewatch.anople.prompts import encode_image


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

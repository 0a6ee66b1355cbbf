import types

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.multimodal_projector.builder import build_vision_projector


@pytest.fixture(scope="module")
def loaded(tiny_llava):
    from llava.model.builder import load_pretrained_model

    tokenizer, model, processor, context_len = load_pretrained_model(
        tiny_llava["full"], None, "llava-tiny", device="cpu", verbose=False
    )
    return tokenizer, model, processor, context_len


def _cfg(**kw):
    return types.SimpleNamespace(mm_hidden_size=6, hidden_size=10, **kw)


@pytest.mark.parametrize(
    "kind,expected_shapes",
    [
        ("linear", [(10, 6), (10,)]),
        ("mlp2x_gelu", [(10, 6), (10,), (10, 10), (10,)]),
        ("mlp3x_gelu", [(10, 6), (10,), (10, 10), (10,), (10, 10), (10,)]),
        ("identity", []),
    ],
)
def test_projector_shapes(kind, expected_shapes):
    projector = build_vision_projector(_cfg(mm_projector_type=kind))
    assert [tuple(p.shape) for p in projector.parameters()] == expected_shapes
    out = projector(torch.zeros(2, 3, 6))
    assert out.shape == ((2, 3, 6) if kind == "identity" else (2, 3, 10))
    if kind.startswith("mlp"):
        assert sum(isinstance(m, torch.nn.GELU) for m in projector.modules()) == int(kind[3]) - 1


def test_unknown_projector_type_is_an_error():
    with pytest.raises(ValueError, match="unknown projector type 'conv'"):
        build_vision_projector(_cfg(mm_projector_type="conv"))


def _images(model, n):
    size = model.get_vision_tower().config.image_size
    torch.manual_seed(0)
    return torch.randn(n, 3, size, size)


def test_splice_replaces_each_marker_with_patch_features_and_masks_labels(loaded):
    _, model, _, _ = loaded
    patches = model.get_vision_tower().num_patches
    ids = torch.tensor([[1, 5, IMAGE_TOKEN_INDEX, 6, 7], [1, 8, 9, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    labels = torch.tensor([[IGNORE_INDEX, 5, IMAGE_TOKEN_INDEX, 6, 7], [IGNORE_INDEX, 8, 9, IGNORE_INDEX, IGNORE_INDEX]])
    images = _images(model, 2)  # second one is the text-only sample's placeholder
    _, pos, attn, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
        ids, None, mask, None, labels, images, padding_side="right"
    )
    assert pos is None
    length0 = 4 + patches
    assert embeds.shape == (2, length0, model.config.hidden_size)
    assert attn[0].all() and attn[1].sum() == 3 and attn[1, :3].all()
    feats = model.encode_images(images[:1])[0]
    torch.testing.assert_close(embeds[0, 2:2 + patches], feats)
    embed = model.get_model().embed_tokens
    torch.testing.assert_close(embeds[0, 2 + patches], embed(torch.tensor(6)))
    assert new_labels[0, 2:2 + patches].eq(IGNORE_INDEX).all()
    assert new_labels[0, :2].tolist() == [IGNORE_INDEX, 5]
    assert new_labels[0, -2:].tolist() == [6, 7]
    torch.testing.assert_close(embeds[1, :3], embed(torch.tensor([1, 8, 9])))
    assert embeds[1, 3:].abs().sum() == 0 and new_labels[1, 3:].eq(IGNORE_INDEX).all()


def test_left_padding_puts_sequences_at_the_end_with_positions_from_zero(loaded):
    _, model, _, _ = loaded
    patches = model.get_vision_tower().num_patches
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 6], [0, 1, 9]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]], dtype=torch.bool)
    _, pos, attn, _, embeds, _ = model.prepare_inputs_labels_for_multimodal(
        ids, torch.zeros_like(ids), mask, None, None, _images(model, 1), padding_side="left"
    )
    longest = 2 + patches
    assert embeds.shape[1] == longest
    assert attn[1].tolist() == [False] * (longest - 2) + [True, True]
    assert pos[1, -2:].tolist() == [0, 1] and pos[0].tolist() == list(range(longest))
    embed = model.get_model().embed_tokens
    torch.testing.assert_close(embeds[1, -2:], embed(torch.tensor([1, 9])))


def test_truncation_to_tokenizer_max_length(loaded):
    _, model, _, _ = loaded
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 6, 7, 8]])
    labels = ids.clone()
    old = model.config.tokenizer_model_max_length
    model.config.tokenizer_model_max_length = 5
    try:
        _, _, _, _, embeds, new_labels = model.prepare_inputs_labels_for_multimodal(
            ids, None, None, None, labels, _images(model, 1)
        )
    finally:
        model.config.tokenizer_model_max_length = old
    assert embeds.shape[1] == 5 and new_labels.shape[1] == 5


def test_text_only_batch_and_cached_steps_pass_through(loaded):
    _, model, _, _ = loaded
    ids = torch.tensor([[1, 5, 6]])
    out = model.prepare_inputs_labels_for_multimodal(ids, None, None, None, None, None)
    assert out[0] is ids and out[4] is None
    step = torch.tensor([[7]])
    out = model.prepare_inputs_labels_for_multimodal(step, None, None, None, None, _images(model, 1))
    assert out[0] is step and out[4] is None


def test_marker_and_image_counts_must_agree(loaded):
    _, model, _, _ = loaded
    two_markers = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5, IMAGE_TOKEN_INDEX]])
    with pytest.raises(ValueError, match="2 <image> markers .* but 1 images"):
        model.prepare_inputs_labels_for_multimodal(two_markers, None, None, None, None, _images(model, 1))
    one_marker = torch.tensor([[1, IMAGE_TOKEN_INDEX, 5]])
    with pytest.raises(ValueError, match="1 <image> markers .* but 3 images"):
        model.prepare_inputs_labels_for_multimodal(one_marker, None, None, None, None, _images(model, 3))


def test_forward_loss_is_the_mean_token_loss(loaded):
    _, model, _, _ = loaded
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 6, 7, 8]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, 8]])
    out = model(input_ids=ids, labels=labels, images=_images(model, 1))
    logits = out.logits[0]
    patches = model.get_vision_tower().num_patches
    # Targets 7 and 8 sit at spliced positions patches+2 and patches+3, predicted one step earlier.
    lp = torch.log_softmax(logits.float(), dim=-1)
    expected = -(lp[patches + 1, 7] + lp[patches + 2, 8]) / 2
    torch.testing.assert_close(out.loss, expected)


def test_generate_with_an_image_returns_only_new_tokens(loaded):
    tokenizer, model, _, _ = loaded
    ids = torch.tensor([[1, IMAGE_TOKEN_INDEX, 6, 7]])
    out = model.generate(ids, images=_images(model, 1), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 4)
    # Greedy decoding by hand from the same spliced prompt gives the same first token.
    logits = model(input_ids=ids, images=_images(model, 1)).logits
    assert out[0, 0].item() == logits[0, -1].argmax().item()


def test_text_only_micro_batch_keeps_the_projector_in_the_graph_with_zero_grads(tiny_llava):
    # The training collator gives each text-only sample a zero placeholder image; as upstream, its features
    # join the graph as a zero-length slice, so backward gives the projector zeros, not None (DDP/ZeRO-3).
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    model = LlavaLlamaForCausalLM.from_pretrained(tiny_llava["full"])
    model.get_vision_tower().load_model()
    model.train()
    ids = torch.tensor([[1, 5, 6, 7, 8], [1, 9, 10, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, 7, 8], [IGNORE_INDEX, 9, 10, IGNORE_INDEX, IGNORE_INDEX]])
    placeholders = torch.zeros(2, 3, *[model.get_vision_tower().config.image_size] * 2)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, images=placeholders)
    out.loss.backward()
    projector = list(model.get_model().mm_projector.parameters())
    assert projector and all(p.grad is not None for p in projector)
    assert all(torch.count_nonzero(p.grad) == 0 for p in projector)
    assert model.get_model().embed_tokens.weight.grad.abs().sum() > 0  # the text itself did train
    with torch.no_grad():  # the placeholders change nothing in the numbers
        plain = model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.loss.detach(), plain.loss)


def test_generate_without_an_image_also_returns_only_new_tokens(loaded):
    # Upstream 1.1.3 returns prompt + new tokens; ours returns the new ones only (docs/coming-from-llava.md).
    _, model, _, _ = loaded
    ids = torch.tensor([[1, 5, 6, 7]])
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 3)
    assert out[0, 0].item() == model(input_ids=ids).logits[0, -1].argmax().item()

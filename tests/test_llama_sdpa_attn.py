"""train_mem's attention: LLaMA through scaled_dot_product_attention equals transformers' eager attention."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llava.train import llama_sdpa_attn_monkey_patch as sdpa


@pytest.fixture
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def sdpa_patch():
    assert sdpa.replace_llama_attn_with_sdpa()
    yield
    sdpa.restore_llama_attention()


def run(model, input_ids, attention_mask):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=attention_mask).logits


@pytest.mark.parametrize("padding", ["right", "left", "none"])
def test_sdpa_logits_equal_eager_logits(tiny_llama, padding):
    torch.manual_seed(1)
    input_ids = torch.randint(3, 97, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    if padding == "right":
        mask[1, 8:] = 0
        mask[2, 5:] = 0
    elif padding == "left":
        mask[1, :4] = 0
        mask[2, :7] = 0
    eager = run(tiny_llama, input_ids, mask)
    assert sdpa.replace_llama_attn_with_sdpa()
    try:
        assert sdpa.sdpa_installed()
        patched = run(tiny_llama, input_ids, mask)
    finally:
        sdpa.restore_llama_attention()
    assert not sdpa.sdpa_installed()
    real = mask.bool()
    assert torch.allclose(patched[real], eager[real], atol=1e-5, rtol=0)


def test_sdpa_gradients_equal_eager_gradients(tiny_llama):
    input_ids = torch.randint(3, 97, (2, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0

    def grads():
        tiny_llama.zero_grad()
        tiny_llama(input_ids=input_ids, attention_mask=mask, labels=input_ids.masked_fill(mask == 0, -100)).loss.backward()
        return [p.grad.clone() for p in tiny_llama.parameters()]

    eager = grads()
    sdpa.replace_llama_attn_with_sdpa()
    try:
        patched = grads()
    finally:
        sdpa.restore_llama_attention()
    for a, b in zip(eager, patched):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_generation_with_cache_matches_eager(tiny_llama, sdpa_patch):
    input_ids = torch.randint(3, 97, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0  # left padding, as batched generation uses
    patched = tiny_llama.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    sdpa.restore_llama_attention()
    eager = tiny_llama.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(patched, eager)


def test_attention_weights_request_falls_back_to_eager(tiny_llama, sdpa_patch):
    input_ids = torch.randint(3, 97, (1, 7), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = tiny_llama(input_ids=input_ids, output_attentions=True)
    weights = out.attentions[0][0, 0]
    # Causal: nothing above the diagonal, rows sum to 1.
    assert torch.all(weights.triu(1) == 0)
    assert torch.allclose(weights.sum(-1), torch.ones(7), atol=1e-6)

"""LLaMA attention through PyTorch's `scaled_dot_product_attention` for transformers 4.31 (no flash-attn package).

`replace_llama_attn_with_sdpa()` swaps, at run time and inside this process only, `LlamaAttention.forward`
and `LlamaModel._prepare_decoder_attention_mask` (nothing in site-packages is edited). A batch without
padding and without a KV cache is passed to SDPA as `is_causal=True` with no mask, which lets CUDA use its
flash kernel; padded batches pass the additive mask (memory-efficient kernel on CUDA, fused or math kernel
on CPU). The results equal the eager attention's.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from transformers.models.llama import modeling_llama

_EAGER_FORWARD = modeling_llama.LlamaAttention.forward
_EAGER_PREPARE_MASK = modeling_llama.LlamaModel._prepare_decoder_attention_mask


def _prepare_decoder_attention_mask(self, attention_mask, input_shape, inputs_embeds, past_key_values_length):
    # None stands for "purely causal": SDPA expresses that with is_causal, without materialising a mask.
    purely_causal = past_key_values_length == 0 and input_shape[-1] > 1
    if purely_causal and (attention_mask is None or bool(attention_mask.all())):
        return None
    return _EAGER_PREPARE_MASK(self, attention_mask, input_shape, inputs_embeds, past_key_values_length)


def _sdpa_forward(
    self,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.LongTensor | None = None,
    past_key_value: tuple[torch.Tensor] | None = None,
    output_attentions: bool = False,
    use_cache: bool = False,
):
    bsz, q_len, _ = hidden_states.size()
    if output_attentions or self.pretraining_tp > 1:
        # SDPA cannot return attention weights, and tensor-parallel slicing is rare: both take the eager path,
        # which needs the explicit causal mask that _prepare_decoder_attention_mask left out.
        if attention_mask is None and q_len > 1:
            attention_mask = modeling_llama._make_causal_mask(
                (bsz, q_len), hidden_states.dtype, device=hidden_states.device
            )
        return _EAGER_FORWARD(
            self, hidden_states, attention_mask, position_ids, past_key_value, output_attentions, use_cache
        )

    query = self.q_proj(hidden_states).view(bsz, q_len, self.num_heads, self.head_dim).transpose(1, 2)
    key = self.k_proj(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)
    value = self.v_proj(hidden_states).view(bsz, q_len, self.num_key_value_heads, self.head_dim).transpose(1, 2)

    kv_seq_len = key.shape[-2] + (past_key_value[0].shape[-2] if past_key_value is not None else 0)
    cos, sin = self.rotary_emb(value, seq_len=kv_seq_len)
    query, key = modeling_llama.apply_rotary_pos_emb(query, key, cos, sin, position_ids)
    if past_key_value is not None:
        key = torch.cat([past_key_value[0], key], dim=2)
        value = torch.cat([past_key_value[1], value], dim=2)
    past_key_value = (key, value) if use_cache else None

    key = modeling_llama.repeat_kv(key, self.num_key_value_groups)
    value = modeling_llama.repeat_kv(value, self.num_key_value_groups)
    if attention_mask is not None:
        attention_mask = attention_mask.to(query.dtype)
    output = F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=attention_mask is None and q_len > 1
    )
    output = output.transpose(1, 2).reshape(bsz, q_len, self.hidden_size)
    return self.o_proj(output), None, past_key_value


def sdpa_installed() -> bool:
    """Whether LLaMA attention currently runs through `scaled_dot_product_attention`."""
    return modeling_llama.LlamaAttention.forward is _sdpa_forward


def replace_llama_attn_with_sdpa() -> bool:
    """Route LLaMA attention through SDPA; returns False (and keeps eager attention) if torch lacks SDPA."""
    if not hasattr(F, "scaled_dot_product_attention"):
        warnings.warn("this torch has no scaled_dot_product_attention: keeping the eager attention", stacklevel=2)
        return False
    modeling_llama.LlamaAttention.forward = _sdpa_forward
    modeling_llama.LlamaModel._prepare_decoder_attention_mask = _prepare_decoder_attention_mask
    return True


def restore_llama_attention() -> None:
    """Undo `replace_llama_attn_with_sdpa` (back to transformers' eager attention)."""
    modeling_llama.LlamaAttention.forward = _EAGER_FORWARD
    modeling_llama.LlamaModel._prepare_decoder_attention_mask = _EAGER_PREPARE_MASK

"""LLaMA attention through `scaled_dot_product_attention`: the training entry points' name for
`llava.model.llama_sdpa_attn`, where it lives beside the model (loading installs it for `attn_implementation`)."""

from llava.model.llama_sdpa_attn import replace_llama_attn_with_sdpa, restore_llama_attention, sdpa_installed

__all__ = ["replace_llama_attn_with_sdpa", "restore_llama_attention", "sdpa_installed"]

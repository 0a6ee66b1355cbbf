"""LLaVA models; importing this registers `LlavaConfig` (model_type "llava") with the Auto classes."""

from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

__all__ = ["LlavaConfig", "LlavaLlamaForCausalLM"]

"""The attention implementations a caller may ask for when loading (`attn_implementation`, `use_flash_attn`).

transformers 4.31 has no `attn_implementation` argument: LLaMA attention is its eager code unless this
process installed the SDPA forward (`llava/model/llama_sdpa_attn.py`, the same numbers). Harnesses
written for later LLaVA builders pass these names; they are honoured here or refused with a reason.
"""

from __future__ import annotations

import warnings

ATTENTION_NAMES = ("eager", "sdpa", "flash_attention_2")


def requested_attention(
    attn_implementation: str | None = None,
    use_flash_attn: bool = False,
    use_flash_attention_2: bool = False,
) -> str | None:
    """The one implementation the keyword arguments ask for (None: leave the process's choice alone)."""
    if attn_implementation is not None and attn_implementation not in ATTENTION_NAMES:
        raise ValueError(
            f"unknown attn_implementation {attn_implementation!r}; use one of {', '.join(ATTENTION_NAMES)}"
        )
    flash = bool(use_flash_attn) or bool(use_flash_attention_2)
    if flash and attn_implementation not in (None, "flash_attention_2"):
        raise ValueError(
            f"use_flash_attn / use_flash_attention_2 ask for flash attention but attn_implementation is "
            f"{attn_implementation!r}: pass one of them"
        )
    return "flash_attention_2" if flash else attn_implementation


def apply_attention(name: str | None, device: str) -> str | None:
    """Install `name` for LLaMA attention in this process; returns what runs (None: unchanged).

    "eager" and "sdpa" run anywhere. "flash_attention_2" needs CUDA: there it runs through torch's SDPA
    (whose CUDA flash kernel serves unpadded batches; the flash-attn package is not a dependency), and on
    any other device it is an error rather than a silent substitute.
    """
    if name is None:
        return None
    if name == "flash_attention_2" and not str(device).startswith("cuda"):
        raise ValueError(
            f"attn_implementation 'flash_attention_2' (or use_flash_attn) needs a CUDA device, and the model "
            f"loads on {device!r}: use attn_implementation='sdpa' or 'eager' there"
        )
    from llava.model import llama_sdpa_attn as sdpa

    if name == "eager":
        if sdpa.sdpa_installed():
            sdpa.restore_llama_attention()
        return "eager"
    if name == "flash_attention_2":
        warnings.warn(
            "flash_attention_2: LLaMA attention runs through torch's scaled_dot_product_attention "
            "(its flash kernel on CUDA); the flash-attn package is not used",
            stacklevel=3,
        )
    sdpa.replace_llama_attn_with_sdpa()
    return "sdpa"

"""LLaVA on LLaMA/Vicuna: `LlavaLlamaForCausalLM` with the VisATB token-weighted loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava.constants import IGNORE_INDEX
from llava.model.attention import apply_attention, requested_attention
from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.weight_methods import reduce_token_loss

# Keyword arguments that harnesses pass to later LLaVA model classes (lmms-eval's `llava` passes `multimodal`
# and `attn_implementation` through the builder to `from_pretrained`).
LOADING_OPTIONS = ("multimodal", "attn_implementation", "use_flash_attention_2", "use_flash_attn")


def _take_loading_options(kwargs: dict, device: str) -> None:
    """Remove `LOADING_OPTIONS` from `kwargs`, installing the attention they ask for."""
    if not any(name in kwargs for name in LOADING_OPTIONS):
        return
    kwargs.pop("multimodal", None)  # this class is the multimodal one
    name = requested_attention(
        kwargs.pop("attn_implementation", None), kwargs.pop("use_flash_attn", False),
        kwargs.pop("use_flash_attention_2", False),
    )  # fmt: skip
    apply_attention(name, device)


class LlavaConfig(LlamaConfig):
    model_type = "llava"


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config)


class LlavaLlamaForCausalLM(LlamaForCausalLM, LlavaMetaForCausalLM):
    """LLaMA causal LM that accepts `images` and reduces its token loss with an optional `weighter`.

    The trainer sets `model.weighter` (a `llava.model.weight_methods.Weighter`) and passes `task_ids`
    with each batch; without them the loss is the usual mean token loss.
    """

    config_class = LlavaConfig

    def __init__(self, config, **kwargs):
        """`kwargs`: the loading options harnesses pass to later LLaVA classes (see `LOADING_OPTIONS`)."""
        _take_loading_options(kwargs, device="cpu")
        if kwargs:
            raise TypeError(
                f"LlavaLlamaForCausalLM got unknown keyword argument(s) {', '.join(sorted(kwargs))}; it takes a "
                f"config and {', '.join(LOADING_OPTIONS)}"
            )
        super(LlamaForCausalLM, self).__init__(config)
        self.model = LlavaLlamaModel(config)
        self.pretraining_tp = getattr(config, "pretraining_tp", 1)
        self.vocab_size = config.vocab_size
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.weighter = None
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, also taking `multimodal`, `attn_implementation` and the flash flags.

        Where a harness passes them, this transformers (4.31) would hand them to `__init__` or the config.
        """
        device_map = kwargs.get("device_map")
        device = device_map if isinstance(device_map, str) and device_map.startswith(("cuda", "cpu")) else "cpu"
        if isinstance(device_map, dict) and device_map:
            first = str(next(iter(device_map.values())))
            device = f"cuda:{first}" if first.isdigit() else first
        _take_loading_options(kwargs, device=device)
        return super().from_pretrained(*args, **kwargs)

    def get_model(self) -> LlavaLlamaModel:
        return self.model

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: list[torch.FloatTensor] | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        images: torch.FloatTensor | None = None,
        return_dict: bool | None = None,
        task_ids: torch.LongTensor | None = None,
        image_sizes: list | None = None,
    ) -> tuple | CausalLMOutputWithPast:
        """`image_sizes` is accepted for callers written for later LLaVA versions; LLaVA-1.5 does not use it."""
        if inputs_embeds is None:
            input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, past_key_values, labels, images
                )
            )
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.lm_head(outputs.last_hidden_state)

        loss = None
        if labels is not None:
            loss = self.token_loss(logits, labels, task_ids)

        if not return_dict:
            output = (logits, outputs.past_key_values, outputs.hidden_states, outputs.attentions)
            return ((loss,) + output) if loss is not None else output
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def token_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, task_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Next-token cross-entropy per token, reduced by the weighter (or averaged over target tokens)."""
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].to(shift_logits.device)
        batch, length, vocab = shift_logits.shape
        per_token = F.cross_entropy(
            shift_logits.view(-1, vocab).float(), shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
        ).view(batch, length)
        mask = shift_labels != IGNORE_INDEX
        if task_ids is not None:
            task_ids = task_ids.to(per_token.device)
        return reduce_token_loss(per_token, mask, task_ids, self.weighter)

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        **kwargs,
    ):
        """Generate from token ids (with IMAGE_TOKEN_INDEX markers) and images; returns only new tokens.

        Batches must be left-padded; positions are derived from the attention mask at every step.
        """
        # transformers 4.31 starts the output of embedding-driven generation with a placeholder BOS
        # column that never reaches the model; it is dropped below so callers get exactly the new tokens.
        if "inputs_embeds" in kwargs:
            raise ValueError("pass token ids (and images), not inputs_embeds, to LlavaLlamaForCausalLM.generate")
        kwargs.pop("position_ids", None)
        kwargs.pop("image_sizes", None)  # later LLaVA versions' argument; LLaVA-1.5 pads every image to a square
        attention_mask = kwargs.pop("attention_mask", None)
        if attention_mask is None:
            attention_mask = torch.ones_like(inputs, dtype=torch.long)
        if images is not None:
            _, _, attention_mask, _, inputs_embeds, _ = self.prepare_inputs_labels_for_multimodal(
                inputs, None, attention_mask, None, None, images, padding_side="left"
            )
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        output = super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask.long(), **kwargs)
        if isinstance(output, torch.Tensor):
            return output[:, 1:]
        output.sequences = output.sequences[:, 1:]
        return output

    def prepare_inputs_for_generation(
        self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None, **kwargs
    ):
        kwargs.pop("images", None)
        kwargs.pop("image_sizes", None)
        return super().prepare_inputs_for_generation(
            input_ids, past_key_values=past_key_values, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
            **kwargs,
        )


AutoConfig.register("llava", LlavaConfig)
AutoModelForCausalLM.register(LlavaConfig, LlavaLlamaForCausalLM)

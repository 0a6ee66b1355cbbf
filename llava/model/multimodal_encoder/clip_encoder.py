"""The CLIP vision tower: frozen, returns patch features of a chosen hidden layer."""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel


class CLIPVisionTower(nn.Module):
    """Wraps `CLIPVisionModel`; with `delay_load` only the config is read until `load_model()`."""

    def __init__(self, vision_tower: str, args, delay_load: bool = False):
        super().__init__()
        self.is_loaded = False
        self.vision_tower_name = vision_tower
        self.select_layer = args.mm_vision_select_layer
        self.select_feature = getattr(args, "mm_vision_select_feature", "patch")
        if self.select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"unknown mm_vision_select_feature {self.select_feature!r}; use 'patch' or 'cls_patch'")
        if delay_load:
            self.cfg_only = CLIPVisionConfig.from_pretrained(self.vision_tower_name)
        else:
            self.load_model()

    def load_model(self, device_map=None) -> None:
        if self.is_loaded:
            return
        self.image_processor = CLIPImageProcessor.from_pretrained(self.vision_tower_name)
        self.vision_tower = CLIPVisionModel.from_pretrained(self.vision_tower_name, device_map=device_map)
        # LLaVA fine-tuning keeps the tower frozen.
        self.vision_tower.requires_grad_(False)
        self.is_loaded = True

    def feature_select(self, outputs) -> torch.Tensor:
        """The selected layer's features of a full `CLIPVisionModel` output (`output_hidden_states=True`)."""
        return self._select_tokens(outputs.hidden_states[self.select_layer])

    def _select_tokens(self, features: torch.Tensor) -> torch.Tensor:
        if self.select_feature == "patch":
            return features[:, 1:]  # drop the CLS token
        return features

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixels = pixel_values.to(device=self.device, dtype=self.dtype)
        features = selected_hidden_state(self.vision_tower, pixels, self.select_layer)  # the later layers: unused
        # In the tower's dtype: pixels a harness cast to fp16 must not round an fp32 model's features.
        return self._select_tokens(features)

    @torch.no_grad()
    def forward(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(images, list):
            return [self._encode(image.unsqueeze(0)) for image in images]
        return self._encode(images)

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self) -> CLIPVisionConfig:
        return self.vision_tower.config if self.is_loaded else self.cfg_only

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2


def selected_hidden_state(model: CLIPVisionModel, pixel_values: torch.Tensor, select_layer: int) -> torch.Tensor:
    """`model(pixel_values, output_hidden_states=True).hidden_states[select_layer]`, computed without the layers
    after it.

    The same operations as the full forward up to that layer, so the same numbers (and, in training, the same
    gradients: the later layers' outputs are never used). LLaVA-1.5's layer -2 leaves the last layer out; on the
    toy's two-layer tower that is half of the tower's time in every training step. The layers stay in the model
    and its checkpoints.
    """
    vision = model.vision_model
    layers = vision.encoder.layers
    index = select_layer if select_layer >= 0 else len(layers) + 1 + select_layer
    if not 0 <= index <= len(layers):
        raise ValueError(f"mm_vision_select_layer {select_layer} is outside the tower's {len(layers) + 1} hidden "
                         f"states (embeddings and {len(layers)} layers)")  # fmt: skip
    hidden = vision.pre_layrnorm(vision.embeddings(pixel_values))
    for layer in layers[:index]:
        hidden = layer(hidden, None, None)[0]
    return hidden

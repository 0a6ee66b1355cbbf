"""The multimodal glue: vision tower + projector, and splicing image features into the token sequence."""

from __future__ import annotations

import os

import torch
from torch import nn

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_PATCH_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from llava.model.multimodal_encoder.builder import build_vision_tower
from llava.model.multimodal_projector.builder import build_vision_projector


def load_projector_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an `mm_projector.bin` safely (tensors only), keys without the `...mm_projector.` prefix."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"projector file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    weights = {key.split("mm_projector.", 1)[1]: value for key, value in state.items() if "mm_projector." in key}
    if not weights:
        raise ValueError(f"{path} holds no 'mm_projector.*' tensors (keys: {sorted(state)[:5]} ...)")
    return weights


def load_projector_into(projector: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Load projector weights, naming the tensor and both shapes when the file disagrees with the config."""
    expected = projector.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"projector weights in {source} do not match the configured projector: "
            f"missing {missing}, unexpected {unexpected}"
        )
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"projector tensor {name!r} in {source} has shape {tuple(tensor.shape)}, "
                f"but the configured projector expects {tuple(expected[name].shape)}"
            )
    projector.load_state_dict(weights)


class LlavaMetaModel:
    """Mixin for the base model (e.g. LlamaModel): owns `vision_tower` and `mm_projector`."""

    def __init__(self, config):
        super().__init__(config)
        if getattr(config, "mm_vision_tower", None):
            self.vision_tower = build_vision_tower(config, delay_load=True)
            self.mm_projector = build_vision_projector(config)

    def get_vision_tower(self):
        vision_tower = getattr(self, "vision_tower", None)
        if isinstance(vision_tower, list):  # FSDP keeps it outside the module tree
            vision_tower = vision_tower[0]
        return vision_tower

    def initialize_vision_modules(self, model_args, fsdp=None) -> None:
        """Attach (or reuse) the vision tower and projector and record their settings in the config."""
        tower = model_args.vision_tower
        # A local tower is stored as an absolute path, so the checkpoint loads from any working directory.
        self.config.mm_vision_tower = os.path.abspath(tower) if tower and os.path.exists(tower) else tower
        self.config.mm_vision_select_layer = model_args.mm_vision_select_layer
        self.config.mm_vision_select_feature = getattr(model_args, "mm_vision_select_feature", "patch")
        if self.get_vision_tower() is None:
            vision_tower = build_vision_tower(model_args)
            self.vision_tower = [vision_tower] if fsdp else vision_tower
        else:
            vision_tower = self.get_vision_tower()
            vision_tower.load_model()

        self.config.use_mm_proj = True
        self.config.mm_projector_type = getattr(model_args, "mm_projector_type", "linear")
        self.config.mm_hidden_size = vision_tower.hidden_size
        if getattr(self, "mm_projector", None) is None:
            self.mm_projector = build_vision_projector(self.config)
        else:
            for p in self.mm_projector.parameters():
                p.requires_grad = True

        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if adapter:
            load_projector_into(self.mm_projector, load_projector_weights(adapter), adapter)


class LlavaMetaForCausalLM:
    """Mixin for the causal LM: encodes images and splices them into the input embeddings."""

    def get_model(self):
        raise NotImplementedError("the concrete model class returns its base model here")

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        features = self.get_model().get_vision_tower()(images)
        projector = self.get_model().mm_projector
        # Harnesses cast pixels to fp16 whatever the model's dtype; the tower takes them in its own dtype and
        # the projector gets features in its own (an identity projector has no parameters: left as they are).
        weight = next(projector.parameters(), None)
        if weight is not None:
            features = features.to(weight.dtype)
        return projector(features)

    def _image_features(
        self, images, num_needed_with_dummies: int, num_tokens: int
    ) -> tuple[list[torch.Tensor], bool]:
        if isinstance(images, list) or images.ndim == 5:
            images = torch.cat([img if img.ndim == 4 else img.unsqueeze(0) for img in images], dim=0)
        if images.shape[0] not in (num_tokens, num_needed_with_dummies):
            raise ValueError(
                f"the batch has {num_tokens} <image> markers ({num_needed_with_dummies - num_tokens} "
                f"text-only samples) but {images.shape[0]} images were given: give one image per marker, "
                "or additionally one placeholder image per text-only sample"
            )
        return list(self.encode_images(images).unbind(0)), images.shape[0] == num_needed_with_dummies

    def prepare_inputs_labels_for_multimodal(
        self, input_ids, position_ids, attention_mask, past_key_values, labels, images, padding_side=None
    ):
        """Replace every IMAGE_TOKEN_INDEX by that image's projected patch features.

        Returns (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels): input_ids
        is None when embeddings were built. Labels at image positions are IGNORE_INDEX; sequences are cut
        to `tokenizer_model_max_length` and re-padded on `padding_side` (default: the config's).
        Images are consumed in order, one per marker; a text-only sample may also consume one placeholder
        image (LLaVA's collator gives one), which is then dropped.
        """
        vision_tower = self.get_vision_tower()
        if vision_tower is None or images is None or input_ids.shape[1] == 1 or past_key_values is not None:
            return input_ids, position_ids, attention_mask, past_key_values, None, labels

        markers = [(ids == IMAGE_TOKEN_INDEX).sum().item() for ids in input_ids]
        num_tokens = sum(markers)
        with_dummies = sum(max(1, n) for n in markers)
        features, uses_dummies = self._image_features(images, with_dummies, num_tokens)

        had_position_ids = position_ids is not None
        had_attention_mask = attention_mask is not None
        had_labels = labels is not None
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        else:
            attention_mask = attention_mask.bool()
        if labels is None:
            labels = torch.full_like(input_ids, IGNORE_INDEX)

        embed_tokens = self.get_model().embed_tokens
        new_embeds, new_labels = [], []
        feature_index = 0
        for ids, mask, sample_labels, n_markers in zip(input_ids, attention_mask, labels, markers):
            ids, sample_labels = ids[mask], sample_labels[mask]  # drop padding
            if n_markers == 0:
                embeds = embed_tokens(ids)
                if uses_dummies:
                    # A zero-length slice of the placeholder's features, as upstream does: the projector
                    # stays in the graph (zero gradient, not None) when a micro-batch is all text, so
                    # DDP/ZeRO ranks that see different modalities reduce the same parameters.
                    embeds = torch.cat([embeds, features[feature_index][:0].to(embeds.dtype)])
                    feature_index += 1
                new_embeds.append(embeds)
                new_labels.append(sample_labels)
                continue
            positions = torch.where(ids == IMAGE_TOKEN_INDEX)[0].tolist()
            bounds = [-1, *positions, ids.shape[0]]
            text_ids = [ids[bounds[i] + 1: bounds[i + 1]] for i in range(len(bounds) - 1)]
            text_labels = [sample_labels[bounds[i] + 1: bounds[i + 1]] for i in range(len(bounds) - 1)]
            text_embeds = embed_tokens(torch.cat(text_ids)).split([t.shape[0] for t in text_ids])
            pieces, piece_labels = [], []
            for i, (embeds, chunk_labels) in enumerate(zip(text_embeds, text_labels)):
                pieces.append(embeds)
                piece_labels.append(chunk_labels)
                if i < n_markers:
                    image_features = features[feature_index].to(embeds.dtype)
                    feature_index += 1
                    pieces.append(image_features)
                    piece_labels.append(
                        torch.full((image_features.shape[0],), IGNORE_INDEX, device=ids.device, dtype=labels.dtype)
                    )
            new_embeds.append(torch.cat(pieces))
            new_labels.append(torch.cat(piece_labels))

        max_length = getattr(self.config, "tokenizer_model_max_length", None)
        if max_length is not None:
            new_embeds = [e[:max_length] for e in new_embeds]
            new_labels = [lab[:max_length] for lab in new_labels]

        side = padding_side or getattr(self.config, "tokenizer_padding_side", "right")
        if side not in ("left", "right"):
            raise ValueError(f"padding side must be 'left' or 'right', not {side!r}")
        batch, longest = len(new_embeds), max(e.shape[0] for e in new_embeds)
        hidden = new_embeds[0].shape[1]
        device, dtype = new_embeds[0].device, new_embeds[0].dtype
        embeds_padded = torch.zeros(batch, longest, hidden, device=device, dtype=dtype)
        labels_padded = torch.full((batch, longest), IGNORE_INDEX, device=device, dtype=labels.dtype)
        attention_mask = torch.zeros(batch, longest, device=device, dtype=attention_mask.dtype)
        position_ids = torch.zeros(batch, longest, device=device, dtype=torch.long)
        for row, (embeds, sample_labels) in enumerate(zip(new_embeds, new_labels)):
            n = embeds.shape[0]
            span = slice(longest - n, longest) if side == "left" else slice(0, n)
            embeds_padded[row, span] = embeds
            labels_padded[row, span] = sample_labels
            attention_mask[row, span] = True
            position_ids[row, span] = torch.arange(n, device=device)

        return (
            None,
            position_ids if had_position_ids else None,
            attention_mask if had_attention_mask else None,
            past_key_values,
            embeds_padded,
            labels_padded if had_labels else None,
        )

    def initialize_vision_tokenizer(self, model_args, tokenizer) -> None:
        """Add the optional image patch / start / end tokens and size the embeddings to match."""
        if getattr(model_args, "mm_use_im_patch_token", False):
            tokenizer.add_tokens([DEFAULT_IMAGE_PATCH_TOKEN], special_tokens=True)
            self.resize_token_embeddings(len(tokenizer))
        if not getattr(model_args, "mm_use_im_start_end", False):
            if getattr(model_args, "mm_use_im_patch_token", False) and getattr(model_args, "tune_mm_mlp_adapter", False):
                for p in self.get_input_embeddings().parameters():
                    p.requires_grad = False
                for p in self.get_output_embeddings().parameters():
                    p.requires_grad = False
            return
        num_new = tokenizer.add_tokens([DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN], special_tokens=True)
        self.resize_token_embeddings(len(tokenizer))
        input_embeddings = self.get_input_embeddings().weight.data
        output_embeddings = self.get_output_embeddings().weight.data
        if num_new > 0:
            # New rows start at the mean of the existing ones rather than at random.
            input_embeddings[-num_new:] = input_embeddings[:-num_new].mean(dim=0, keepdim=True)
            output_embeddings[-num_new:] = output_embeddings[:-num_new].mean(dim=0, keepdim=True)
        if getattr(model_args, "tune_mm_mlp_adapter", False):
            for p in self.get_input_embeddings().parameters():
                p.requires_grad = True
            for p in self.get_output_embeddings().parameters():
                p.requires_grad = False
        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if adapter:
            state = torch.load(adapter, map_location="cpu", weights_only=True)
            if "model.embed_tokens.weight" in state:
                saved = state["model.embed_tokens.weight"]
                if saved.shape == input_embeddings.shape:
                    input_embeddings.copy_(saved)
                elif saved.shape[0] == num_new:
                    input_embeddings[-num_new:] = saved
                else:
                    raise ValueError(
                        f"embed_tokens in {adapter} has shape {tuple(saved.shape)}; expected "
                        f"{tuple(input_embeddings.shape)} or ({num_new}, {input_embeddings.shape[1]})"
                    )

"""Multimodal helpers: image loading and preprocessing, image-aware tokenisation, stopping criteria."""

from __future__ import annotations

import base64
import os
import warnings
import weakref
from collections import OrderedDict
from io import BytesIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import StoppingCriteria

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX


def cache_transformers_vision_check() -> None:
    """Make transformers 4.31's `is_vision_available()` answer from a cache; results do not change.

    In 4.31 every call reads Pillow's package metadata (`importlib.metadata.version("Pillow")`, about 0.8 ms
    on the demo's 2-core Xeon), and `CLIPImageProcessor.preprocess` calls it about seven times per image:
    some 90 % of the preprocessing of a 48-pixel image, and of a toy training step's time a third or more.
    Later transformers versions decide this once at import; this does the same for the installed 4.31 by
    replacing the function, in every transformers module already imported that holds it, with a cached
    one (modules imported later take it from `transformers.utils`, replaced here too). Idempotent.
    """
    import functools
    import sys

    from transformers.utils import import_utils

    original = import_utils.is_vision_available
    if hasattr(original, "cache_info"):
        return
    cached = functools.lru_cache(maxsize=None)(original)
    for name, module in list(sys.modules.items()):
        if (name == "transformers" or name.startswith("transformers.")) and module is not None:
            if module.__dict__.get("is_vision_available") is original:
                module.__dict__["is_vision_available"] = cached
    backend = import_utils.BACKENDS_MAPPING.get("vision")
    if backend is not None and backend[0] is original:
        import_utils.BACKENDS_MAPPING["vision"] = (cached, backend[1])


cache_transformers_vision_check()


class ImageTooLargeError(ValueError):
    """An image with more pixels than Pillow's decompression-bomb limit: refused, never skipped."""


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any Pillow mode: 16/32-bit greyscale scaled to 8 bits, transparency composited onto white.

    Pillow's own `convert("RGB")` clips 16-bit values at 255 (a flat white image) and keeps the hidden colour
    of transparent pixels; both would show the model another picture than a viewer shows.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    if (image.mode in ("P", "L", "RGB") and "transparency" in image.info) or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def _too_large(source: str, error: Exception | str) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image file {source} is too large to decode safely ({error}); shrink it, or raise "
        "PIL.Image.MAX_IMAGE_PIXELS if the image is genuine"
    )


def _open_checked(fp, source: str) -> Image.Image:
    """`Image.open` with any image over `Image.MAX_IMAGE_PIXELS` refused before its pixels are decoded.

    Pillow raises only above twice its limit and merely warns between one and two times it; here both are
    an `ImageTooLargeError` naming `source`, so the limit means what it says.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(fp)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise _too_large(source, e) from e
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.size[0] * image.size[1]
    if limit is not None and pixels > limit:  # the warning filter is process-wide: check again
        image.close()
        raise _too_large(source, f"{image.size[0]}x{image.size[1]} = {pixels} pixels, over the limit of {limit}")
    return image


def open_image_header(path: str | os.PathLike) -> tuple[int, int]:
    """Read only an image's header (fast): its size; a missing, empty, non-image or over-large file is an error."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with _open_checked(path, path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot open image file {path}: {e or type(e).__name__}") from e


def load_image(path: str | os.PathLike, exif_orientation: bool = True) -> Image.Image:
    """Open and fully decode an image as RGB (see `to_rgb`), upright by its EXIF orientation unless told not to.

    The one image loader of training and inference. A missing, empty, truncated or non-image file raises an
    error naming it; an image over Pillow's pixel limit raises `ImageTooLargeError`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with _open_checked(path, path) as image:
            image.load()
            if exif_orientation:
                image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as e:  # e.g. a GIF frame larger than the declared size
        raise _too_large(path, e) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot open image file {path}: {e or type(e).__name__}") from e


def load_image_from_base64(data: str) -> Image.Image:
    """Decode a base64 image (MMBench) as RGB, with the same mode handling as `load_image`."""
    try:
        with _open_checked(BytesIO(base64.b64decode(data)), "(base64 data)") as image:
            image.load()
            return to_rgb(image)
    except Image.DecompressionBombError as e:
        raise _too_large("(base64 data)", e) from e


def expand2square(image: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Pad the shorter side symmetrically (extra pixel after) so the image becomes square."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background_color)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def processor_fill_color(image_processor) -> tuple[int, int, int]:
    """The processor's mean colour in 0-255, the colour LLaVA-1.5 pads with."""
    return tuple(int(x * 255) for x in image_processor.image_mean)


def process_images(images: list[Image.Image], image_processor, model_cfg) -> torch.Tensor | list[torch.Tensor]:
    """Preprocess PIL images for the vision tower.

    `image_aspect_ratio == "pad"` (LLaVA-1.5) pads each image to a square with the processor's mean colour
    first; any other mode leaves the processor's own resize and centre crop to do the work.
    """
    mode = getattr(model_cfg, "image_aspect_ratio", None)
    if mode == "pad":
        fill = processor_fill_color(image_processor)
        tensors = [
            image_processor.preprocess(expand2square(image, fill), return_tensors="pt")["pixel_values"][0]
            for image in images
        ]
    else:
        tensors = list(image_processor(images, return_tensors="pt")["pixel_values"])
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors, dim=0)
    return tensors


# tokenizer_image_token's memo of text chunks, per tokenizer. The chunk before `<image>` (system prompt and
# "USER: ") is the same in every record of a run, and training tokenises each record three times (the whole
# prompt, each round, each instruction) for its label mask; with the Python (slow) LLaMA tokenizer LLaVA uses,
# a toy training step spent about a sixth of its time there. A chunk's ids depend only on the text and the
# tokenizer's vocabulary and BOS/EOS settings, which are part of the key.
CHUNK_CACHE_SIZE = 8192
_chunk_caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _chunk_ids(tokenizer, chunk: str) -> list[int]:
    """`tokenizer(chunk).input_ids`, from the tokenizer's memo when the same chunk was tokenised before."""
    try:
        cache = _chunk_caches.setdefault(tokenizer, OrderedDict())
    except TypeError:  # an object that cannot be weakly referenced: no memo
        return list(tokenizer(chunk).input_ids)
    key = (chunk, len(tokenizer), getattr(tokenizer, "add_bos_token", None), getattr(tokenizer, "add_eos_token", None))
    ids = cache.get(key)
    if ids is None:
        ids = tuple(tokenizer(chunk).input_ids)
        cache[key] = ids
        if len(cache) > CHUNK_CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return list(ids)


def tokenizer_image_token(
    prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX, return_tensors: str | None = None
) -> list[int] | torch.Tensor:
    """Tokenise a prompt, putting `image_token_index` at every `<image>` and keeping a single leading BOS.

    Each text chunk is tokenised on its own (as LLaVA does), so the ids match what released checkpoints saw.
    """
    chunks = [_chunk_ids(tokenizer, chunk) for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]
    bos = tokenizer.bos_token_id
    input_ids: list[int] = []
    has_bos = bool(chunks and chunks[0] and bos is not None and chunks[0][0] == bos)
    if has_bos:
        input_ids.append(bos)
    for index, chunk in enumerate(chunks):
        if index > 0:
            input_ids.append(image_token_index)
        input_ids.extend(chunk[1:] if has_bos and chunk and chunk[0] == bos else chunk)
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"unsupported tensor type {return_tensors!r}; use 'pt' or None")


def get_model_name_from_path(model_path: str) -> str:
    """`.../llava-v1.5-7b` -> `llava-v1.5-7b`; `.../run/checkpoint-500` -> `run_checkpoint-500`."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop generation once every sequence in the batch has produced one of the keywords."""

    def __init__(self, keywords: list[str], tokenizer, input_ids: torch.Tensor | None = None):
        """`input_ids` is the prompt when `generate` returns prompt + answer; None when it returns only the answer."""
        self.keywords = keywords
        self.tokenizer = tokenizer
        self.keyword_ids = []
        for keyword in keywords:
            ids = tokenizer(keyword).input_ids
            if len(ids) > 1 and ids[0] == tokenizer.bos_token_id:
                ids = ids[1:]
            self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self.start_len = 0 if input_ids is None else input_ids.shape[1]
        self.prompt_ids = None if input_ids is None else input_ids.detach().cpu()
        self.done: torch.Tensor | None = None

    def _generated_part(self, row: int, sequence: torch.Tensor) -> torch.Tensor:
        """The answer part of `sequence`: after the prompt when the sequence starts with it.

        Callers written for upstream (VLMEvalKit, lmms-eval) pass the prompt, but LLaVA models here return only
        the new tokens: a sequence that does not start with the prompt is all answer.
        """
        if self.prompt_ids is None or sequence.shape[0] < self.start_len:
            return sequence
        prompt = self.prompt_ids[min(row, self.prompt_ids.shape[0] - 1)]
        if torch.equal(sequence[: self.start_len].cpu(), prompt):
            return sequence[self.start_len:]
        return sequence

    def _sequence_done(self, sequence: torch.Tensor, row: int = 0) -> bool:
        generated = self._generated_part(row, sequence)
        for ids in self.keyword_ids:
            n = ids.numel()
            if generated.numel() >= n and torch.equal(generated[-n:].cpu(), ids):
                return True
        max_len = max(len(ids) for ids in self.keyword_ids) + 3
        text = self.tokenizer.decode(generated[-max_len:], skip_special_tokens=True)
        return any(keyword in text for keyword in self.keywords)

    def __call__(self, output_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> bool:
        if self.done is None or self.done.numel() != output_ids.shape[0]:
            self.done = torch.zeros(output_ids.shape[0], dtype=torch.bool)
        for row in range(output_ids.shape[0]):
            if not self.done[row]:
                self.done[row] = self._sequence_done(output_ids[row], row)
        return bool(self.done.all())


def count_image_tokens(text: str) -> int:
    return text.count(DEFAULT_IMAGE_TOKEN)


def recorded_conv_template(model_path: str) -> str | None:
    """The conversation template a checkpoint records (`conv_template` in its config.json, written at training
    time), or None: a hub name, a folder without config.json, or a checkpoint trained before it was recorded."""
    import json

    config_file = os.path.join(os.path.expanduser(model_path), "config.json")
    if not os.path.isfile(config_file):
        return None
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # the loader reports an unreadable config, naming it
    value = config.get("conv_template") if isinstance(config, dict) else None
    return value if isinstance(value, str) and value else None


def choose_conv_mode(model_path: str, requested: str | None, guess_from_name) -> tuple[str, str]:
    """(conversation template, why): `requested` if given, else the checkpoint's recorded one, else the guess
    `guess_from_name(model name)` that upstream LLaVA makes (only for checkpoints that record none)."""
    recorded = recorded_conv_template(model_path)
    if requested is not None:
        why = "given with --conv-mode"
        if recorded is not None and recorded != requested:
            why += f"; the checkpoint was trained with {recorded!r}"
        return requested, why
    if recorded is not None:
        return recorded, f"recorded in {os.path.join(model_path, 'config.json')} at training time"
    name = get_model_name_from_path(model_path)
    return guess_from_name(name), f"guessed from the folder name {name!r} (the checkpoint records no conv_template)"

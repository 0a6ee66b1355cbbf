"""The one generation path: prompts, tokenisation, left padding, batched `generate`, decoding and streaming.

Batch inference (inference_visatb.py), the terminal chat (llava/serve/cli.py), one-off queries
(llava/eval/run_llava.py) and benchmark generation all answer through `LlavaGenerator`.
"""

from __future__ import annotations

import queue
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from PIL import Image
from transformers.generation.streamers import BaseStreamer

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IMAGE_PLACEHOLDER,
)
from llava.conversation import Conversation, SeparatorStyle, get_conv_template
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    choose_conv_mode,
    get_model_name_from_path,
    load_image,
    process_images,
    tokenizer_image_token,
)
from llava.model.llava_arch import LlavaMetaForCausalLM

# What one sample may carry: no image, one image, or several (for prompts with image placeholders).
SampleImages = Image.Image | Sequence[Image.Image] | None


# Image preprocessing of generators built while `image_preprocessing(...)` is active (None: the model config's).
IMAGE_PREPROCESSING_MODES = ("pad", "square")
_IMAGE_PREPROCESSING: ContextVar[str | None] = ContextVar("image_preprocessing", default=None)


@contextmanager
def image_preprocessing(mode: str | None) -> Iterator[None]:
    """Generators built inside preprocess images as `mode` says, whatever their model's config holds.

    "square" is the image processor's own resize and centre crop (upstream LLaVA's `model_vqa` and
    `model_vqa_science`); "pad" pads to a square first (`image_aspect_ratio pad`, LLaVA-1.5's training).
    """
    if mode is not None and mode not in IMAGE_PREPROCESSING_MODES:
        raise ValueError(f"image preprocessing must be one of {', '.join(IMAGE_PREPROCESSING_MODES)}, not {mode!r}")
    token = _IMAGE_PREPROCESSING.set(mode)
    try:
        yield
    finally:
        _IMAGE_PREPROCESSING.reset(token)


def infer_conv_mode(model_name: str) -> str:
    """LLaVA's guess of the conversation template from a checkpoint's name (used when none is given)."""
    name = model_name.lower()
    if "llama-2" in name:
        return "llava_llama_2"
    if "v1" in name:
        return "llava_v1"
    if "mpt" in name:
        return "mpt"
    return "llava_v0"


def open_image(path: str) -> Image.Image:
    """Load an image as RGB, turned upright by its EXIF orientation (the shared loader, `mm_utils.load_image`)."""
    return load_image(path)


def stop_string(conv: Conversation) -> str:
    """The text that ends an assistant turn in this template."""
    return conv.sep2 if conv.sep_style == SeparatorStyle.TWO else conv.sep


def _as_image_list(images: SampleImages) -> list[Image.Image]:
    if images is None:
        return []
    if isinstance(images, Image.Image):
        return [images]
    return list(images)


@dataclass
class PreparedBatch:
    """A batch ready for the model: rendered prompts, left-padded token ids and mask, preprocessed pixels."""

    prompts: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    images: torch.Tensor | list[torch.Tensor] | None = None


class LlavaGenerator:
    """Answers questions (optionally about images) with a loaded LLaVA model, in left-padded batches.

    Greedy decoding (temperature 0, one beam) gives the same answer for a sample whatever batch it is in.
    """

    def __init__(
        self,
        tokenizer,
        model,
        image_processor,
        conv_mode: str = "vicuna_v1",
        temperature: float = 0.0,
        top_p: float | None = None,
        num_beams: int = 1,
        max_new_tokens: int = 128,
        model_name: str | None = None,
        image_aspect_ratio: str | None = None,
        stop: str | None = None,
    ):
        get_conv_template(conv_mode)  # fail now, naming the known modes, rather than at the first question
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if image_aspect_ratio is None:
            image_aspect_ratio = _IMAGE_PREPROCESSING.get()
        if image_aspect_ratio is not None and image_aspect_ratio not in IMAGE_PREPROCESSING_MODES:
            raise ValueError(
                f"image_aspect_ratio must be one of {', '.join(IMAGE_PREPROCESSING_MODES)}, not {image_aspect_ratio!r}"
            )
        self.tokenizer = tokenizer
        self.model = model
        self.image_processor = image_processor
        self.conv_mode = conv_mode
        self.temperature = temperature
        self.top_p = top_p
        self.num_beams = num_beams
        self.max_new_tokens = max_new_tokens
        self.model_name = model_name
        # None: as the model config's `image_aspect_ratio` says (pad for LLaVA-1.5 checkpoints).
        self.image_aspect_ratio = image_aspect_ratio
        # None: the conversation template's stop string; "": none (generation ends at EOS or max_new_tokens).
        self.stop = stop
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.unk_token  # LLaVA's convention: LLaMA tokenizers ship no pad token
        self._special_ids = set(tokenizer.all_special_ids)
        # LLaVA models return only the new tokens; a plain causal LM returns prompt + new tokens.
        self._returns_prompt = not isinstance(model, LlavaMetaForCausalLM)

    @classmethod
    def from_pretrained(
        cls,
        model_path: str,
        model_base: str | None = None,
        conv_mode: str | None = "vicuna_v1",
        device: str | None = None,
        verbose: bool = True,
        load_8bit: bool = False,
        load_4bit: bool = False,
        **gen,
    ) -> LlavaGenerator:
        """Load a checkpoint with `load_pretrained_model`; `conv_mode=None` takes the template the checkpoint
        recorded at training time, and guesses it from the name as LLaVA does only for one that records none.

        `load_8bit` / `load_4bit` quantise the language model with bitsandbytes (CUDA only), as upstream.
        """
        from llava.model.builder import load_pretrained_model

        model_name = get_model_name_from_path(model_path)
        if conv_mode is None:
            conv_mode, why = choose_conv_mode(model_path, None, infer_conv_mode)
            if verbose:
                print(f"[llava] conversation template {conv_mode!r}: {why}", file=sys.stderr, flush=True)
        get_conv_template(conv_mode)  # before the (slow) load
        tokenizer, model, image_processor, _ = load_pretrained_model(
            model_path, model_base, model_name, load_8bit=load_8bit, load_4bit=load_4bit, device=device,
            verbose=verbose,
        )  # fmt: skip
        return cls(
            tokenizer, model, image_processor, conv_mode=conv_mode,
            model_name=model_name, **gen,
        )  # fmt: skip

    @property
    def settings(self) -> dict:
        """What determines the answers besides the model and the inputs (recorded with resumable runs)."""
        return {
            "conv_mode": self.conv_mode,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "num_beams": self.num_beams,
            "max_new_tokens": self.max_new_tokens,
        }

    @property
    def stop_str(self) -> str:
        if self.stop is not None:
            return self.stop
        return stop_string(get_conv_template(self.conv_mode))

    def with_settings(self, **changes) -> LlavaGenerator:
        """A generator on the same model and tokenizer with other decoding settings (checked as in `__init__`).

        `changes` may set conv_mode, temperature, top_p, num_beams, max_new_tokens, image_aspect_ratio, stop.
        """
        current = {**self.settings, "model_name": self.model_name, "image_aspect_ratio": self.image_aspect_ratio,
                   "stop": self.stop}  # fmt: skip
        unknown = set(changes) - set(current)
        if unknown:
            raise ValueError(f"unknown generation settings: {', '.join(sorted(unknown))}")
        return LlavaGenerator(self.tokenizer, self.model, self.image_processor, **{**current, **changes})

    @property
    def accepts_images(self) -> bool:
        get_vision_tower = getattr(self.model, "get_vision_tower", None)
        return self.image_processor is not None and get_vision_tower is not None and get_vision_tower() is not None

    def image_token_text(self) -> str:
        """How one image appears in a prompt: `<image>`, or wrapped in start/end tokens if the model uses them."""
        if getattr(self.model.config, "mm_use_im_start_end", False):
            return DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
        return DEFAULT_IMAGE_TOKEN

    def user_message(self, question: str, has_image: bool, num_images: int = 1) -> str:
        """The first user turn: `<image>` removed from the question and re-inserted as the model expects.

        Image placeholders (`<image-placeholder>`) in the question mark where each image goes; without
        them the images come first, each on its own line.
        """
        question = question.replace(DEFAULT_IMAGE_TOKEN, "").strip()
        if not has_image:
            return question.replace(IMAGE_PLACEHOLDER, "").strip()
        image_text = self.image_token_text()
        placeholders = question.count(IMAGE_PLACEHOLDER)
        if placeholders:
            if placeholders != num_images:
                raise ValueError(
                    f"the question has {placeholders} {IMAGE_PLACEHOLDER} markers but {num_images} images were given"
                )
            return re.sub(re.escape(IMAGE_PLACEHOLDER), lambda _: image_text, question)
        return "".join(image_text + "\n" for _ in range(num_images)) + question

    def build_prompt(self, question: str, has_image: bool, num_images: int = 1) -> str:
        """The full single-turn prompt of the conversation template, open for the assistant's answer."""
        conv = get_conv_template(self.conv_mode)
        conv.append_message(conv.roles[0], self.user_message(question, has_image, num_images))
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    def generation_kwargs(self) -> dict:
        """Keyword arguments for `model.generate` (sampling settings only when sampling)."""
        kwargs = {
            "do_sample": self.temperature > 0,
            "num_beams": self.num_beams,
            "max_new_tokens": self.max_new_tokens,
            "use_cache": True,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if self.temperature > 0:
            kwargs["temperature"] = self.temperature
            if self.top_p is not None:
                kwargs["top_p"] = self.top_p
        return kwargs

    def generate(self, questions: Sequence[str], images: Sequence[SampleImages]) -> list[str]:
        """Answer a batch of questions; `images[i]` is sample i's image (or list of images), None if text-only."""
        return self.generate_prepared(self.prepare(questions, images))

    def prepare(self, questions: Sequence[str], images: Sequence[SampleImages]) -> PreparedBatch:
        """The CPU half of `generate` (prompts, tokens, padding, pixels), which can run ahead in another thread."""
        if len(questions) != len(images):
            raise ValueError(f"{len(questions)} questions but {len(images)} image entries: give one per question")
        per_sample = [_as_image_list(sample_images) for sample_images in images]
        prompts = [
            self.build_prompt(question, bool(sample_images), len(sample_images))
            for question, sample_images in zip(questions, per_sample)
        ]
        return self.prepare_prompts(prompts, per_sample)

    def generate_from_prompts(
        self, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]], streamer=None
    ) -> list[str]:
        """Answer fully rendered prompts, each with one image per `<image>` it contains."""
        return self.generate_prepared(self.prepare_prompts(prompts, images), streamer=streamer)

    def prepare_prompts(self, prompts: Sequence[str], images: Sequence[Sequence[Image.Image]]) -> PreparedBatch:
        """Tokenise and left-pad rendered prompts and preprocess their images (one per `<image>`)."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} image lists: give one per prompt")
        flat_images: list[Image.Image] = []
        for index, (prompt, sample_images) in enumerate(zip(prompts, images)):
            markers = prompt.count(DEFAULT_IMAGE_TOKEN)
            if markers != len(sample_images):
                raise ValueError(f"prompt {index} has {markers} {DEFAULT_IMAGE_TOKEN} markers but {len(sample_images)} images")
            flat_images.extend(sample_images)
        if flat_images and not self.accepts_images:
            raise ValueError("this model has no vision tower, so it cannot answer questions about images")
        if not prompts:
            return PreparedBatch(list(prompts), torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 0, dtype=torch.long))
        input_ids, attention_mask = self._left_padded([tokenizer_image_token(p, self.tokenizer) for p in prompts])
        # Only the real images: with text-only samples in the batch the model matches one image per marker.
        pixels = process_images(flat_images, self.image_processor, self._image_config()) if flat_images else None
        return PreparedBatch(list(prompts), input_ids, attention_mask, pixels)

    def _image_config(self):
        if self.image_aspect_ratio is None:
            return self.model.config
        return SimpleNamespace(image_aspect_ratio=self.image_aspect_ratio)

    def generate_prepared(self, batch: PreparedBatch, streamer=None) -> list[str]:
        """The model half of `generate`: run `model.generate` on a prepared batch and decode the answers."""
        if not batch.prompts:
            return []
        if streamer is not None and len(batch.prompts) != 1:
            raise ValueError("streaming needs a batch of exactly one prompt")
        device, dtype = self.model.device, self.model.dtype
        kwargs = self.generation_kwargs()
        if batch.images is not None:
            if isinstance(batch.images, list):
                kwargs["images"] = [t.to(device=device, dtype=dtype) for t in batch.images]
            else:
                kwargs["images"] = batch.images.to(device=device, dtype=dtype)
        if self.stop_str and self.stop_str != self.tokenizer.eos_token:
            # generate() already stops rows at EOS; other stop strings need decoding every step (slow).
            kwargs["stopping_criteria"] = [
                KeywordsStoppingCriteria(
                    [self.stop_str], self.tokenizer, batch.input_ids if self._returns_prompt else None
                )
            ]
        with torch.inference_mode():
            output_ids = self.model.generate(
                batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device), streamer=streamer,
                **kwargs,
            )  # fmt: skip
        if self._returns_prompt:
            output_ids = output_ids[:, batch.input_ids.shape[1]:]
        stop = self.stop_str
        return [self._decode(row, stop) for row in output_ids.tolist()]

    def stream_from_prompt(
        self, prompt: str, images: Sequence[Image.Image] = (), interval: int = 1, timeout: float | None = None
    ) -> Iterator[str]:
        """Answer one rendered prompt, yielding the whole answer so far every `interval` new tokens.

        Each text is what `generate_from_prompts` would return had generation ended there (same decoding, cut
        at EOS and the stop string), so the last one equals its answer. Preparation errors (image count, no
        vision tower) raise before anything is yielded; an error in `generate` raises after the texts so far.
        """
        if interval < 1:
            raise ValueError(f"the stream interval must be >= 1 token, got {interval}")
        batch = self.prepare_prompts([prompt], [list(images)])
        streamer = _AnswerStreamer(self._decode, self.stop_str, interval)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.generate_prepared(batch, streamer=streamer)
            except BaseException as e:  # handed to the reading thread, which raises it
                failure.append(e)
            finally:
                streamer.finish()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        while True:
            text = streamer.texts.get(timeout=timeout)
            if text is None:
                break
            yield text
        thread.join()
        if failure:
            raise failure[0]

    def _left_padded(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), longest), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
        for row, ids in enumerate(sequences):
            input_ids[row, longest - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, longest - len(ids):] = 1
        return input_ids, attention_mask

    def _decode(self, token_ids: list[int], stop: str | None = None) -> str:
        # A finished row of a batch keeps producing padding (or, for templates whose stop string is not EOS,
        # text) until the whole batch stops, so cut at the first EOS and the first stop string.
        eos = self.tokenizer.eos_token_id
        if eos in token_ids:
            token_ids = token_ids[: token_ids.index(eos)]
        # Same as skip_special_tokens=True, which recomputes the special-token list for every token.
        token_ids = [t for t in token_ids if t not in self._special_ids]
        text = self.tokenizer.decode(token_ids, skip_special_tokens=False).strip()
        stop = self.stop_str if stop is None else stop
        if stop and stop in text:
            text = text[: text.index(stop)]
        return text.strip()

    def new_conversation(self) -> Conversation:
        """An empty conversation in this generator's template, for `stream_chat`."""
        return get_conv_template(self.conv_mode)

    def stream_chat(
        self, conversation: Conversation, message: str, image: SampleImages = None, streamer=None
    ) -> str:
        """Add a user turn to `conversation`, answer it (streaming tokens to `streamer`) and record the answer.

        Pass the chat's image(s) on every turn: the image tokens go into the first user turn only, but the
        model needs the pixels each time it reads the history.
        """
        sample_images = _as_image_list(image)
        first_turn = len(conversation.messages) <= conversation.offset
        has_image = bool(sample_images) and first_turn
        conversation.append_message(
            conversation.roles[0], self.user_message(message, has_image, len(sample_images))
        )
        conversation.append_message(conversation.roles[1], None)
        prompt = conversation.get_prompt()
        markers = prompt.count(DEFAULT_IMAGE_TOKEN)
        if markers and markers != len(sample_images):
            raise ValueError(f"the conversation has {markers} images but {len(sample_images)} were given")
        answer = self.generate_from_prompts([prompt], [sample_images if markers else []], streamer=streamer)[0]
        conversation.messages[-1][-1] = answer
        return answer


class _AnswerStreamer(BaseStreamer):
    """Collects the token ids `generate` streams and queues the decoded answer so far (None when done)."""

    def __init__(self, decode, stop: str, interval: int):
        self._decode, self._stop, self._interval = decode, stop, interval
        self._ids: list[int] = []
        self._prompt_seen = False  # generate's first put is the prompt (empty when it gets embeddings)
        self._since_last = 0
        self._finished = False
        self.texts: queue.Queue[str | None] = queue.Queue()

    def put(self, value) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._ids.extend(value.reshape(-1).tolist())
        self._since_last += 1
        if self._since_last >= self._interval:
            self._since_last = 0
            self.texts.put(self._decode(self._ids, self._stop))

    def end(self) -> None:
        self.finish()

    def finish(self) -> None:
        if not self._finished:
            self._finished = True
            self.texts.put(self._decode(self._ids, self._stop))
            self.texts.put(None)

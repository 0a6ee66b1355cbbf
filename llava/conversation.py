"""Conversation templates: the exact prompt formats that released LLaVA / Vicuna checkpoints expect."""

from __future__ import annotations

import copy as _copy
from dataclasses import dataclass, field
from enum import Enum, auto

from llava.constants import DEFAULT_IMAGE_TOKEN


class SeparatorStyle(Enum):
    """How turns are joined into a prompt."""

    SINGLE = auto()  # "ROLE: msg###" after every turn (v0)
    TWO = auto()  # sep after user turns, sep2 after assistant turns (vicuna v1)
    MPT = auto()  # "<|im_start|>role\nmsg<|im_end|>"
    PLAIN = auto()  # no system prompt and no roles (projector pretraining)
    LLAMA_2 = auto()  # "[INST] <<SYS>>...<</SYS>> msg [/INST] answer </s><s>"


@dataclass
class Conversation:
    """A conversation history plus the template that renders it as one prompt string."""

    system: str
    roles: tuple[str, str]
    messages: list = field(default_factory=list)
    offset: int = 0
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    skip_next: bool = False

    def _rendered_messages(self) -> list[tuple[str, str | None]]:
        """Messages as (role, text); an (text, image, mode) tuple becomes text with <image> put first."""
        rendered = []
        for index, (role, message) in enumerate(self.messages):
            if isinstance(message, tuple):
                text = message[0].replace(DEFAULT_IMAGE_TOKEN, "").strip()
                if index == 0 and "mmtag" in self.version:
                    rendered.append((self.roles[0], "<Image><image></Image>"))
                    rendered.append((self.roles[1], "Received."))
                    message = text
                elif index == 0:
                    message = DEFAULT_IMAGE_TOKEN + "\n" + text
                else:
                    message = text
            rendered.append((role, message))
        return rendered

    def get_prompt(self) -> str:
        """Render the whole history; a final `None` message leaves the prompt open for generation."""
        messages = self._rendered_messages()
        style = self.sep_style
        if style == SeparatorStyle.SINGLE:
            out = self.system + self.sep
            for role, message in messages:
                out += f"{role}: {message}{self.sep}" if message else f"{role}:"
            return out
        if style == SeparatorStyle.TWO:
            seps = (self.sep, self.sep2)
            out = self.system + seps[0]
            for i, (role, message) in enumerate(messages):
                out += f"{role}: {message}{seps[i % 2]}" if message else f"{role}:"
            return out
        if style == SeparatorStyle.MPT:
            out = self.system + self.sep
            for role, message in messages:
                out += f"{role}{message}{self.sep}" if message else role
            return out
        if style == SeparatorStyle.PLAIN:
            seps = (self.sep, self.sep2 if self.sep2 is not None else self.sep)
            out = self.system
            for i, (_, message) in enumerate(messages):
                if message:
                    out += message + seps[i % 2]
            return out
        if style == SeparatorStyle.LLAMA_2:
            return self._llama_2_prompt(messages)
        raise ValueError(f"unknown separator style {style}")

    def _llama_2_prompt(self, messages: list[tuple[str, str | None]]) -> str:
        if not messages or not messages[0][1] or messages[0][0] != self.roles[0]:
            raise ValueError("a LLaMA-2 conversation must start with a non-empty user message")
        out = ""
        for i, (_, message) in enumerate(messages):
            if not message:
                continue
            if i == 0 and self.system:
                message = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{message}"
            if i % 2 == 0:
                out += f"{self.sep}[INST] {message} [/INST]"
            else:
                out += f" {message} {self.sep2}"
        # The tokenizer adds the first BOS itself.
        return out[len(self.sep):] if out.startswith(self.sep) else out

    def append_message(self, role: str, message) -> None:
        self.messages.append([role, message])

    def copy(self) -> Conversation:
        return _copy.deepcopy(self)

    def to_gradio_chatbot(self) -> list[list[str | None]]:
        """Pairs of (user, assistant) texts for chat front ends."""
        pairs: list[list[str | None]] = []
        for i, (_, message) in enumerate(self.messages[self.offset:]):
            text = message[0] if isinstance(message, tuple) else message
            if i % 2 == 0:
                pairs.append([text, None])
            else:
                pairs[-1][-1] = text
        return pairs

    def dict(self) -> dict:
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": [[r, m[0] if isinstance(m, tuple) else m] for r, m in self.messages],
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


_HUMAN_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
_USER_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_MMTAG_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant is able to understand the visual content that the user provides, and assist the user "
    "with a variety of tasks using natural language."
    "The visual content will be provided with the following format: <Image>visual content</Image>."
)

# The one-shot example that Vicuna v0 checkpoints were trained with.
_V0_EXAMPLE = [
    ["Human", "What are the key differences between renewable and non-renewable energy sources?"],
    [
        "Assistant",
        "Renewable energy sources are those that can be replenished naturally in a relatively "
        "short amount of time, such as solar, wind, hydro, geothermal, and biomass. "
        "Non-renewable energy sources, on the other hand, are finite and will eventually be "
        "depleted, such as coal, oil, and natural gas. Here are some key differences between "
        "renewable and non-renewable energy sources:\n"
        "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable "
        "energy sources are finite and will eventually run out.\n"
        "2. Environmental impact: Renewable energy sources have a much lower environmental impact "
        "than non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, "
        "and other negative effects.\n"
        "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically "
        "have lower operational costs than non-renewable sources.\n"
        "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
        "locations than non-renewable sources.\n"
        "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
        "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
        "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
        "non-renewable sources are not, and their depletion can lead to economic and social instability.\n",
    ],
]

conv_vicuna_v0 = Conversation(
    system=_HUMAN_SYSTEM, roles=("Human", "Assistant"), messages=_copy.deepcopy(_V0_EXAMPLE), offset=2,
    sep_style=SeparatorStyle.SINGLE, sep="###",
)
conv_vicuna_v1 = Conversation(
    system=_USER_SYSTEM, roles=("USER", "ASSISTANT"), version="v1",
    sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>",
)
conv_llama_2 = Conversation(
    system=(
        "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
        "while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, "
        "dangerous, or illegal content. Please ensure that your responses are socially unbiased and positive "
        "in nature.\n\nIf a question does not make any sense, or is not factually coherent, explain why "
        "instead of answering something not correct. If you don't know the answer to a question, please "
        "don't share false information."
    ),
    roles=("USER", "ASSISTANT"), version="llama_v2", sep_style=SeparatorStyle.LLAMA_2, sep="<s>", sep2="</s>",
)
conv_llava_llama_2 = Conversation(
    system=(
        "You are a helpful language and vision assistant. "
        "You are able to understand the visual content that the user provides, "
        "and assist the user with a variety of tasks using natural language."
    ),
    roles=("USER", "ASSISTANT"), version="llama_v2", sep_style=SeparatorStyle.LLAMA_2, sep="<s>", sep2="</s>",
)
conv_mpt = Conversation(
    system="<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. "
    "The assistant gives helpful and honest answers.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"), version="mpt",
    sep_style=SeparatorStyle.MPT, sep="<|im_end|>",
)
conv_llava_plain = Conversation(system="", roles=("", ""), sep_style=SeparatorStyle.PLAIN, sep="\n")
conv_llava_v0 = Conversation(
    system=_HUMAN_SYSTEM, roles=("Human", "Assistant"), sep_style=SeparatorStyle.SINGLE, sep="###",
)
conv_llava_v0_mmtag = Conversation(
    system=_MMTAG_SYSTEM, roles=("Human", "Assistant"), sep_style=SeparatorStyle.SINGLE, sep="###",
    version="v0_mmtag",
)
# LLaVA-1.5 trains with `--version v1`, i.e. this template (the "human" system prompt, USER/ASSISTANT roles).
conv_llava_v1 = Conversation(
    system=_HUMAN_SYSTEM, roles=("USER", "ASSISTANT"), version="v1",
    sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>",
)
conv_llava_v1_mmtag = Conversation(
    system=_MMTAG_SYSTEM, roles=("USER", "ASSISTANT"), version="v1_mmtag",
    sep_style=SeparatorStyle.TWO, sep=" ", sep2="</s>",
)

default_conversation = conv_vicuna_v1
conv_templates: dict[str, Conversation] = {
    "default": conv_vicuna_v0,
    "v0": conv_vicuna_v0,
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llama_2": conv_llama_2,
    "plain": conv_llava_plain,
    "v0_plain": conv_llava_plain,
    "llava_v0": conv_llava_v0,
    "v0_mmtag": conv_llava_v0_mmtag,
    "llava_v1": conv_llava_v1,
    "v1_mmtag": conv_llava_v1_mmtag,
    "llava_llama_2": conv_llava_llama_2,
    "mpt": conv_mpt,
}


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the named template; an unknown name lists the known ones."""
    if name not in conv_templates:
        raise ValueError(f"unknown conversation mode {name!r}; known modes: {', '.join(conv_templates)}")
    return conv_templates[name].copy()

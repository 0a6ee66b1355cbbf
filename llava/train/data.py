"""Training data: the start-up scan of the data file, LLaVA's prompt preprocessing, the lazy dataset, the collator.

Every sample carries `task_ids` (its task's position in the task list), which the trainer passes to the
model's weighted loss.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from llava.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from llava.conversation import Conversation, SeparatorStyle
from llava.mm_utils import (
    ImageTooLargeError,
    load_image,
    open_image_header,
    process_images,
    tokenizer_image_token,
)
from llava.utils import load_json
from llava.visatb import check_data

# What truncation to model_max_length did to a sample's targets (LazySupervisedDataset's "truncation").
KEPT, CUT_SHORT, FULLY_MASKED = 0, 1, 2
# Fully masked samples named on stderr per dataset (the totals are reported by the trainer).
MAX_TRUNCATION_WARNINGS = 5
# Words an image stands for when grouping samples by length (LLaVA's estimate).
IMAGE_LENGTH_ESTIMATE = 128
MAX_EXAMPLES = 3


def _record_label(index: int, record: Any) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"record {index}" + (f" (id {rid!r})" if rid is not None else "")


@dataclass
class DataScan:
    """The records kept for training, their task ids, and what the scan skipped or filled in."""

    source: str
    tasks: list[str]
    records: list[dict]
    task_ids: list[int]
    skipped_missing_images: int = 0
    missing_image_examples: list[str] = field(default_factory=list)
    defaulted_tasks: int = 0
    dropped_first_turns: int = 0  # records whose first turn (from gpt) was dropped, as upstream LLaVA does

    def task_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.tasks, 0)
        for task_id in self.task_ids:
            counts[self.tasks[task_id]] += 1
        return counts

    def summary(self) -> str:
        """Per-task record counts and what was skipped, for the training log."""
        width = max(len(t) for t in self.tasks) + 2
        lines = [f"[data] {self.source}: {len(self.records)} training records"]
        lines += [f"[data]   {task:<{width}}{count:>9}" for task, count in self.task_counts().items()]
        if self.defaulted_tasks:
            lines.append(f"[data] {self.defaulted_tasks} record(s) without 'task' were given the default task")
        if self.dropped_first_turns:
            lines.append(f"[data] {self.dropped_first_turns} record(s) start with a gpt turn: that turn is dropped (as LLaVA does)")
        if self.skipped_missing_images:
            lines.append(
                f"[data] skipped {self.skipped_missing_images} record(s) whose image file is missing or unreadable "
                f"(--skip_missing_images), e.g. {'; '.join(self.missing_image_examples)}"
            )
        return "\n".join(lines)


def _problem_error(source: str, problems: check_data.ProblemList, what: str, hint: str = "") -> ValueError:
    examples = "; ".join(problems.examples[:MAX_EXAMPLES])
    more = f" (and {problems.count - MAX_EXAMPLES} more)" if problems.count > MAX_EXAMPLES else ""
    return ValueError(f"{source}: {problems.count} {what}: {examples}{more}{hint}")


def _drop_leading_gpt_turns(records: list[dict], scan: DataScan) -> list[dict]:
    """The records with a first turn from gpt removed (as upstream's preprocessing does), counted in `scan`."""
    kept = [check_data.without_leading_gpt_turn(record) for record in records]
    scan.dropped_first_turns += sum(new is not old for new, old in zip(kept, records))
    return kept


def scan_data(
    data_path: str | os.PathLike,
    image_folder: str | os.PathLike | None,
    tasks: Sequence[str],
    default_task: str | None = None,
    skip_missing_images: bool = False,
    single_task: bool = False,
    multimodal: bool = True,
) -> DataScan:
    """Read and check the whole data file before training; every problem names the file and the record.

    Fails on malformed JSON, an empty dataset, records without a known `task` (unless `default_task`, or
    `single_task` where the field is not used), bad conversations, and missing images (unless
    `skip_missing_images`, which drops those records and counts them).
    """
    source = os.fspath(data_path)
    records = load_json(source)
    if not isinstance(records, list):
        raise ValueError(f"{source}: expected a JSON list of records, got {type(records).__name__}")
    if not records:
        raise ValueError(f"{source}: the dataset is empty (no records)")
    tasks = list(tasks)
    # Training never reads the ids: a mix whose ids name images (as LLaVA's) trains as it is.
    report = check_data.check_records(records, None, None if single_task else tasks, source, allow_duplicate_ids=True)
    problems = report.problems
    known = f"; known tasks: {', '.join(tasks)}"
    if problems[check_data.NOT_A_RECORD].count:
        raise _problem_error(source, problems[check_data.NOT_A_RECORD], "entries are not JSON objects")
    if problems[check_data.MISSING_TASK].count and not (single_task or default_task):
        raise _problem_error(
            source,
            problems[check_data.MISSING_TASK],
            "record(s) have no 'task' field",
            f"; add a 'task' to every record or pass --default_task NAME{known}",
        )
    if problems[check_data.UNKNOWN_TASK].count:
        raise _problem_error(source, problems[check_data.UNKNOWN_TASK], "record(s) name an unknown task", known)
    if problems[check_data.BAD_CONVERSATION].count:
        raise _problem_error(source, problems[check_data.BAD_CONVERSATION], "record(s) have a malformed conversation")
    if problems[check_data.IMAGE_TOKEN].count:
        raise _problem_error(
            source, problems[check_data.IMAGE_TOKEN], f"record(s) disagree between {DEFAULT_IMAGE_TOKEN} and 'image'"
        )

    scan = DataScan(source=source, tasks=tasks, records=[], task_ids=[])
    records = _drop_leading_gpt_turns(records, scan)
    missing: list[str] = []
    exists: dict[str, str | None] = {}
    for index, record in enumerate(tqdm(records, desc="checking images", unit="rec", file=sys.stderr)):
        if "image" in record:
            label = _record_label(index, record)
            if not isinstance(record["image"], str):
                raise ValueError(f"{source}: {label}: one image path per record is supported, got {record['image']!r}")
            if not multimodal:
                raise ValueError(f"{source}: {label} has an image but no --vision_tower was given")
            if image_folder is None:
                raise ValueError(f"{source}: {label} has an image but --image_folder is not set")
            path = os.path.join(image_folder, record["image"])
            if path not in exists:
                try:
                    exists[path] = _header_problem(path)
                except ImageTooLargeError as e:  # never skipped: a bomb is not a missing image
                    raise ImageTooLargeError(f"{source}: {label}: {e}") from e
            if exists[path] is not None:
                missing.append(f"{label}: {exists[path]}")
                continue
        task = record.get("task")
        if single_task:
            task_id = 0
        elif isinstance(task, str) and task:
            task_id = tasks.index(task)
        else:
            task_id = tasks.index(default_task)
            scan.defaulted_tasks += 1
        scan.records.append(record)
        scan.task_ids.append(task_id)

    if missing and not skip_missing_images:
        more = f" (and {len(missing) - 1} more record(s) with a missing or unreadable image)" if len(missing) > 1 else ""
        error = FileNotFoundError if "image file not found" in missing[0] else ValueError
        raise error(f"{source}: {missing[0]}{more}; fix --image_folder or the files, or pass --skip_missing_images")
    scan.skipped_missing_images = len(missing)
    scan.missing_image_examples = missing[:MAX_EXAMPLES]
    if not scan.records:
        raise ValueError(f"{source}: no records left: all {len(records)} were skipped for missing images")
    return scan


def _header_problem(path: str) -> str | None:
    """Why an image cannot be used, from its header only (fast; truncation shows when the sample is read)."""
    try:
        open_image_header(path)
    except FileNotFoundError as e:
        return str(e)
    except ImageTooLargeError:
        raise
    except ValueError as e:
        return str(e)
    return None


# ---------------------------------------------------------------------------------------------
# Prompt preprocessing (LLaVA's formats, one sample = one list of {"from", "value"} turns)


def preprocess_multimodal(
    sources: list[list[dict]], is_multimodal: bool = True, mm_use_im_start_end: bool = False, mmtag: bool = False
) -> list[list[dict]]:
    """Put `<image>` at the start of the turn that holds it (then a newline), as LLaVA trains; modifies in place."""
    if not is_multimodal:
        return sources
    for source in sources:
        for turn in source:
            value = turn["value"]
            if DEFAULT_IMAGE_TOKEN in value:
                value = (DEFAULT_IMAGE_TOKEN + "\n" + value.replace(DEFAULT_IMAGE_TOKEN, "").strip()).strip()
                if mmtag:
                    value = value.replace(DEFAULT_IMAGE_TOKEN, "<Image>" + DEFAULT_IMAGE_TOKEN + "</Image>")
            if mm_use_im_start_end:
                value = value.replace(DEFAULT_IMAGE_TOKEN, DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN)
            turn["value"] = value
    return sources


def _tokenize(text: str, tokenizer, has_image: bool) -> list[int]:
    return tokenizer_image_token(text, tokenizer) if has_image else tokenizer(text).input_ids


def _render_prompt(source: list[dict], conv: Conversation) -> str:
    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    if source and source[0]["from"] != "human":
        source = source[1:]  # LLaVA drops a leading assistant turn
    conv = conv.copy()
    conv.messages = []
    for j, turn in enumerate(source):
        role = roles.get(turn["from"])
        if role != conv.roles[j % 2]:
            raise ValueError(f"turn {j} is from {turn['from']!r}; turns must alternate human, gpt, ...")
        conv.append_message(role, turn["value"])
    return conv.get_prompt()


def preprocess_v1(
    sources: list[list[dict]], tokenizer, conv: Conversation, has_image: bool = False
) -> dict[str, list]:
    """Vicuna-v1 prompts; labels keep only the assistant replies (and their `</s>`), masked round by round.

    When the rounds' token counts do not add up to the whole prompt's (a tokenisation mismatch), all of
    the sample's labels are masked, as LLaVA does; `mismatches` holds (counted, actual) for such samples.
    """
    if conv.sep_style != SeparatorStyle.TWO:
        raise ValueError(f"preprocess_v1 needs a two-separator template, not {conv.sep_style}")
    out: dict[str, list] = {"input_ids": [], "labels": [], "mismatches": []}
    assistant_sep = conv.sep + conv.roles[1] + ": "
    for source in sources:
        prompt = _render_prompt(source, conv)
        if has_image:
            input_ids = torch.tensor(tokenizer_image_token(prompt, tokenizer), dtype=torch.long)
        else:
            input_ids = tokenizer(
                prompt, return_tensors="pt", max_length=tokenizer.model_max_length, truncation=True
            ).input_ids[0]
        labels = input_ids.clone()
        total_len = int(input_ids.numel())
        cur_len = 1  # BOS
        labels[:cur_len] = IGNORE_INDEX
        for rou in prompt.split(conv.sep2):
            if rou == "":
                break
            parts = rou.split(assistant_sep)
            if len(parts) != 2:
                break
            # Tokenised alone, a round gets a BOS where the full prompt has the previous round's `</s>`.
            round_len = len(_tokenize(rou, tokenizer, has_image))
            # Minus BOS, and minus the trailing space of "ASSISTANT: ", which merges into the reply's first token.
            instruction_len = len(_tokenize(parts[0] + assistant_sep, tokenizer, has_image)) - 2
            labels[cur_len : cur_len + instruction_len] = IGNORE_INDEX
            cur_len += round_len
        labels[cur_len:] = IGNORE_INDEX
        mismatch = None
        if cur_len < tokenizer.model_max_length and cur_len != total_len:
            labels[:] = IGNORE_INDEX
            mismatch = (cur_len, total_len)
        out["input_ids"].append(input_ids)
        out["labels"].append(labels)
        out["mismatches"].append(mismatch)
    return out


def preprocess_plain(sources: list[list[dict]], tokenizer, conv: Conversation) -> dict[str, list]:
    """Projector pretraining: `<image>` + caption + separator; only the caption (and separator) is learned."""
    out: dict[str, list] = {"input_ids": [], "labels": [], "mismatches": []}
    prefix_len = len(tokenizer_image_token(DEFAULT_IMAGE_TOKEN, tokenizer))
    for source in sources:
        if len(source) != 2 or DEFAULT_IMAGE_TOKEN not in source[0]["value"]:
            raise ValueError(
                "the plain (pretraining) format needs exactly two turns, an image question with "
                f"{DEFAULT_IMAGE_TOKEN} and its caption"
            )
        prompt = DEFAULT_IMAGE_TOKEN + source[1]["value"] + conv.sep
        input_ids = torch.tensor(tokenizer_image_token(prompt, tokenizer), dtype=torch.long)
        labels = input_ids.clone()
        labels[:prefix_len] = IGNORE_INDEX
        out["input_ids"].append(input_ids)
        out["labels"].append(labels)
        out["mismatches"].append(None)
    return out


def preprocess(sources: list[list[dict]], tokenizer, conv: Conversation, has_image: bool = False) -> dict[str, list]:
    """Tokenise conversations with the template's format: plain (pretraining) or v1 (fine-tuning)."""
    if conv.sep_style == SeparatorStyle.PLAIN:
        return preprocess_plain(sources, tokenizer, conv)
    if conv.sep_style == SeparatorStyle.TWO:
        return preprocess_v1(sources, tokenizer, conv, has_image=has_image)
    raise ValueError(f"training supports the v1 and plain templates, not {conv.version!r} ({conv.sep_style})")


# ---------------------------------------------------------------------------------------------
# Dataset and collator


class LazySupervisedDataset(Dataset):
    """LLaVA's supervised dataset over scanned records; tokenises and loads images when a sample is read."""

    def __init__(self, scan: DataScan, tokenizer, conv: Conversation, data_args) -> None:
        super().__init__()
        self.records = scan.records
        self.task_ids = scan.task_ids
        self.source = scan.source
        self.tokenizer = tokenizer
        self.conv = conv
        self.image_folder = data_args.image_folder
        self.image_processor = getattr(data_args, "image_processor", None)
        self.image_aspect_ratio = data_args.image_aspect_ratio
        self.is_multimodal = bool(data_args.is_multimodal)
        self.mm_use_im_start_end = bool(getattr(data_args, "mm_use_im_start_end", False))
        # Positions one image takes in the model's sequence (the tower's patches), for the truncation check.
        self.image_token_count = int(getattr(data_args, "image_token_count", 1) or 1)
        self._word_counts: list[int] | None = None
        self._truncation_warnings = 0

    def __len__(self) -> int:
        return len(self.records)

    def _words(self) -> list[int]:
        if self._word_counts is None:
            self._word_counts = [
                sum(len(turn["value"].split()) for turn in record["conversations"]) for record in self.records
            ]
        return self._word_counts

    @property
    def lengths(self) -> list[int]:
        return [n + (IMAGE_LENGTH_ESTIMATE if "image" in r else 0) for n, r in zip(self._words(), self.records)]

    @property
    def modality_lengths(self) -> list[int]:
        """Word counts, negative for text-only samples (never 0, so the sign always tells the modality)."""
        return [max(1, n) if "image" in r else -max(1, n) for n, r in zip(self._words(), self.records)]

    def _image_tensor(self, relative_path: str) -> torch.Tensor:
        image = load_image(os.path.join(self.image_folder, relative_path))
        settings = SimpleNamespace(image_aspect_ratio=self.image_aspect_ratio)
        return process_images([image], self.image_processor, settings)[0]

    def _placeholder_image(self) -> torch.Tensor:
        crop = self.image_processor.crop_size
        return torch.zeros(3, crop["height"], crop["width"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        has_image = "image" in record
        sources = [copy.deepcopy(record["conversations"])]
        if has_image:
            try:
                image = self._image_tensor(record["image"])
            except (OSError, ValueError) as e:  # e.g. truncated: the start-up scan reads headers only
                raise type(e)(f"{self.source}: {_record_label(index, record)}: {e}") from e
            sources = preprocess_multimodal(
                sources, self.is_multimodal, self.mm_use_im_start_end, mmtag="mmtag" in self.conv.version
            )
        data = preprocess(sources, self.tokenizer, self.conv, has_image=has_image)
        mismatch = data["mismatches"][0]
        if mismatch is not None:
            print(
                f"WARNING: tokenization mismatch in {_record_label(index, record)}: {mismatch[0]} vs. "
                f"{mismatch[1]} tokens; its targets are masked (ignored)",
                file=sys.stderr,
                flush=True,
            )
        truncation = KEPT
        if self.tokenizer is not None:
            truncation = truncation_effect(
                data["input_ids"][0], data["labels"][0], self.tokenizer.model_max_length, self.image_token_count
            )
        if truncation == FULLY_MASKED and mismatch is None and self._truncation_warnings < MAX_TRUNCATION_WARNINGS:
            self._truncation_warnings += 1
            print(f"WARNING: {_record_label(index, record)} of {self.source} is longer than model_max_length "
                  f"({self.tokenizer.model_max_length}): none of its answer tokens is trained", file=sys.stderr,
                  flush=True)  # fmt: skip
        sample: dict[str, Any] = {
            "input_ids": data["input_ids"][0],
            "labels": data["labels"][0],
            "task_ids": torch.tensor(self.task_ids[index], dtype=torch.long),
            "tokenization_mismatch": mismatch is not None,
            "truncation": truncation,
        }
        if has_image:
            sample["image"] = image
        elif self.is_multimodal:
            # A zero image keeps the vision tower in every step, so ZeRO-3 ranks gather the same parameters.
            sample["image"] = self._placeholder_image()
        return sample


def truncation_effect(input_ids: torch.Tensor, labels: torch.Tensor, max_length: int, image_token_count: int) -> int:
    """KEPT, CUT_SHORT or FULLY_MASKED: what cutting the model's sequence at `max_length` does to the targets.

    Each image marker becomes `image_token_count` positions inside the model, so a sample whose token ids fit
    can still lose its answer. A text-only sample the tokenizer already cut to `max_length` counts as cut.
    """
    is_image = input_ids == IMAGE_TOKEN_INDEX
    images_before = torch.cumsum(is_image.long(), 0) - is_image.long()
    positions = torch.arange(input_ids.numel()) + (image_token_count - 1) * images_before
    length = input_ids.numel() + (image_token_count - 1) * int(is_image.sum())
    tokenizer_cut = not bool(is_image.any()) and input_ids.numel() >= max_length
    if length <= max_length and not tokenizer_cut:
        return KEPT
    targets = labels != IGNORE_INDEX
    if not targets.any():
        return FULLY_MASKED if tokenizer_cut else KEPT  # otherwise masked for another reason (a mismatch)
    return CUT_SHORT if (targets & (positions < max_length)).any() else FULLY_MASKED


@dataclass
class DataCollatorForSupervisedDataset:
    """Right-pads a list of samples into a batch with `task_ids`, `images` and the mismatch count."""

    tokenizer: Any

    def __call__(self, instances: Sequence[dict[str, Any]]) -> dict[str, Any]:
        max_length = self.tokenizer.model_max_length
        input_ids = [x["input_ids"][:max_length] for x in instances]
        labels = [x["labels"][:max_length] for x in instances]
        lengths = torch.tensor([ids.numel() for ids in input_ids])
        batch: dict[str, Any] = {
            "input_ids": torch.nn.utils.rnn.pad_sequence(
                input_ids, batch_first=True, padding_value=self.tokenizer.pad_token_id
            ),
            "labels": torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX),
        }
        # From the lengths, not `input_ids != pad`: the pad id (unk) can be a real token.
        batch["attention_mask"] = torch.arange(batch["input_ids"].shape[1])[None, :] < lengths[:, None]
        batch["task_ids"] = torch.stack([x["task_ids"] for x in instances])
        if "image" in instances[0]:
            images = [x["image"] for x in instances]
            batch["images"] = torch.stack(images) if all(i.shape == images[0].shape for i in images) else images
        batch["tokenization_mismatches"] = torch.tensor(sum(bool(x.get("tokenization_mismatch")) for x in instances))
        batch["truncated_samples"] = torch.tensor([int(x.get("truncation", KEPT)) for x in instances])
        return batch


def make_supervised_data_module(scan: DataScan, tokenizer, conv: Conversation, data_args) -> dict[str, Any]:
    """Dataset and collator in the form `Trainer(**module)` takes."""
    return {
        "train_dataset": LazySupervisedDataset(scan, tokenizer, conv, data_args),
        "eval_dataset": None,
        "data_collator": DataCollatorForSupervisedDataset(tokenizer=tokenizer),
    }

r"""Answer MMBench / MMBench-CN (a tsv with index, question, hint, options A-D and a base64 image per row).

The question is the hint (when there is one) and the question, then one `X. option` line per option;
`--single-pred-prompt` adds the instruction to answer with the letter (in Chinese with `--lang cn`).
`--all-rounds` asks each question once per rotation of its options (round_id 0, 1, ...); the answer
records carry the options as shown and `option_char`, the original letter of each.

    python -m llava.eval.model_vqa_mmbench --model-path liuhaotian/llava-v1.5-7b \
        --question-file mmbench_dev_20230712.tsv --answers-file answers/llava-v1.5-7b.jsonl \
        --single-pred-prompt --lang en --temperature 0 --conv-mode vicuna_v1
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence

from llava.answers.benchmark_answers import EvalItem, generation_parser, main_with
from llava.answers.jsonio import read_tsv

OPTION_LETTERS = ("A", "B", "C", "D")
SINGLE_PRED_PROMPTS = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}
REQUIRED_COLUMNS = ("index", "question", "image")

# Upstream reads the table with pandas, which turns these cells into NaN; an option or hint that reads as
# missing (or as 'nan'/'none' in any case) is treated as absent, as upstream does.
_PANDAS_NA = {
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
    "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
}  # fmt: skip
_INTEGER = re.compile(r"-?\d+")


def is_missing(value: str | None) -> bool:
    """Whether a cell counts as empty (see `_PANDAS_NA`)."""
    return value is None or value in _PANDAS_NA or value.lower() in ("nan", "none")


def row_options(row: dict[str, str]) -> list[str]:
    """The options of a row in letter order, up to the first missing one."""
    options = []
    for letter in OPTION_LETTERS:
        if is_missing(row.get(letter)):
            break
        options.append(row[letter])
    return options


def load_questions(question_file: str) -> list[dict[str, str]]:
    """Read the tsv, checking its columns and that every row has at least options A and B."""
    rows = read_tsv(question_file)
    if rows:
        missing = [column for column in REQUIRED_COLUMNS if column not in rows[0]]
        if missing:
            raise ValueError(f"{question_file}: no {', '.join(missing)} column(s) (columns: {', '.join(rows[0])})")
    for n, row in enumerate(rows, start=1):
        if len(row_options(row)) < 2:
            raise ValueError(f"{question_file}: row {n} (index {row['index']}) has fewer than two options (A, B)")
    return rows


def format_question(question: str, hint: str | None, options: Sequence[str]) -> str:
    """Hint, question, then `A. option` lines: the text LLaVA asks and records as the prompt."""
    text = question if is_missing(hint) else f"{hint}\n{question}"
    return text + "".join(f"\n{letter}. {option}" for letter, option in zip(OPTION_LETTERS, options))


def item_maker(args: argparse.Namespace) -> Callable[[dict[str, str], int], list[EvalItem]]:
    """One item per row, or one per option rotation with --all-rounds."""
    instruction = SINGLE_PRED_PROMPTS[args.lang] if args.single_pred_prompt else None

    def to_items(row: dict[str, str], position: int) -> list[EvalItem]:
        index = row["index"]
        question_id = int(index) if _INTEGER.fullmatch(index) else index
        options = row_options(row)
        letters = list(OPTION_LETTERS[: len(options)])
        items = []
        for round_id in range(len(options) if args.all_rounds else 1):
            prompt = format_question(row["question"], row.get("hint"), options)
            items.append(
                EvalItem(
                    question_id=question_id,
                    question=prompt if instruction is None else f"{prompt}\n{instruction}",
                    prompt=prompt,
                    source=f"{args.question_file}: row {position + 1} (index {index})",
                    image_base64=row["image"],
                    round_id=round_id,
                    extra={"options": list(options), "option_char": list(letters)},
                )
            )
            options, letters = options[1:] + options[:1], letters[1:] + letters[:1]
        return items

    return to_items


def build_parser() -> argparse.ArgumentParser:
    """LLaVA's flags with upstream's defaults for this module."""
    parser = generation_parser(__doc__, conv_mode="llava_v1", temperature=0.2, max_new_tokens=1024)
    parser.add_argument(
        "--single-pred-prompt", "--single_pred_prompt", dest="single_pred_prompt", action="store_true",
        help="append the instruction to answer with the option's letter",
    )  # fmt: skip
    parser.add_argument(
        "--all-rounds", "--all_rounds", dest="all_rounds", action="store_true",
        help="ask each question once per rotation of its options (round_id 0, 1, ...)",
    )  # fmt: skip
    parser.add_argument("--lang", choices=sorted(SINGLE_PRED_PROMPTS), default="en", help="language of the instruction")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return main_with(build_parser(), argv, load_questions, item_maker)


if __name__ == "__main__":
    sys.exit(main())

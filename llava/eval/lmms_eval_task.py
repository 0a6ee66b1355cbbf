"""An lmms-eval task for a question file in LLaVA's training format, so that lmms-eval scores it like our answers.

    python -m llava.eval.lmms_eval_task --question-file val.json --image-folder IMAGES --output-dir TASKS \
        --task my_task --max-new-tokens 128
    python -m lmms_eval eval --model llava_hf --model_args pretrained=EXPORT,... --tasks my_task \
        --include_path TASKS ...

It writes TASKS/<task>.yaml (the records as a JSON dataset, greedy generation, exact match against the gpt turn)
and TASKS/utils.py (the image of a record from the image folder, its first human turn without the <image> token
as the prompt, its gpt turn as the target). One task per folder: utils.py is shared by name.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from llava.utils import load_json_or_lines

TASK_NAME = re.compile(r"[A-Za-z0-9_]+")

TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: !function utils.doc_to_target
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

TASK_UTILS = """import os

from PIL import Image

IMAGES = {images}


def doc_to_visual(doc):
    return [Image.open(os.path.join(IMAGES, doc["image"])).convert("RGB")]


def doc_to_text(doc):
    return doc["conversations"][0]["value"].replace("<image>", "").strip()


def doc_to_target(doc):
    return doc["conversations"][1]["value"]
"""


def check_records(question_file: Path) -> int:
    """The number of records; a record without an image or without a human turn followed by a gpt turn is
    refused, naming the file, the record's index and id (lmms-eval would fail on it mid-run)."""
    records = load_json_or_lines(question_file)
    if not isinstance(records, list) or not records:
        raise ValueError(f"{question_file}: expected a non-empty list of records")
    for index, record in enumerate(records):
        turns = record.get("conversations") if isinstance(record, dict) else None
        where = f"{question_file}: record {index}" + (f" (id {record.get('id')!r})" if isinstance(record, dict) else "")
        if not isinstance(record, dict) or not isinstance(record.get("image"), str):
            raise ValueError(f"{where}: no 'image' (lmms-eval's llava_hf answers about an image)")
        first = turns[:2] if isinstance(turns, list) else []
        if not (len(first) == 2 and all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in first)
                and [t.get("from") for t in first] == ["human", "gpt"]):  # fmt: skip
            raise ValueError(f"{where}: 'conversations' must start with a human turn and a gpt turn (the target)")
    return len(records)


def write_task(output_dir: Path, task: str, question_file: Path, image_folder: Path, max_new_tokens: int) -> Path:
    """Write <task>.yaml and utils.py into `output_dir`; returns the YAML's path. Paths are written absolute."""
    if not TASK_NAME.fullmatch(task):
        raise ValueError(f"--task {task!r}: use letters, digits and '_' (lmms-eval's task names)")
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {max_new_tokens}: expected at least 1")
    check_records(question_file)
    output_dir.mkdir(parents=True, exist_ok=True)
    # JSON strings are valid YAML and Python literals: a path with spaces or quotes stays one value.
    data = json.dumps(str(question_file.resolve()))
    yaml_file = output_dir / f"{task}.yaml"
    yaml_file.write_text(TASK_YAML.format(task=task, data=data, max_new_tokens=max_new_tokens), encoding="utf-8")
    (output_dir / "utils.py").write_text(TASK_UTILS.format(images=json.dumps(str(image_folder.resolve()))),
                                         encoding="utf-8")  # fmt: skip
    return yaml_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--question-file", required=True, type=Path,
                        help="records with an image and a human/gpt conversation (a JSON list)")  # fmt: skip
    parser.add_argument("--image-folder", required=True, type=Path)
    parser.add_argument("--output-dir", required=True, type=Path, help="the folder to pass as --include_path")
    parser.add_argument("--task", default="visatb_task", help="the task's name for --tasks (default: visatb_task)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args(argv)
    if not args.question_file.is_file():
        print(f"error: --question-file {args.question_file}: no such file", file=sys.stderr)
        return 2
    if not args.image_folder.is_dir():
        print(f"error: --image-folder {args.image_folder}: no such folder", file=sys.stderr)
        return 2
    try:
        yaml_file = write_task(args.output_dir, args.task, args.question_file, args.image_folder, args.max_new_tokens)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {yaml_file} and {args.output_dir / 'utils.py'}: --tasks {args.task} --include_path {args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

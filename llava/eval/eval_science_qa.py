r"""ScienceQA: accuracy over a split and on its image questions (SQA-IMG, the number LLaVA-1.5 reports).

    python -m llava.eval.eval_science_qa --base-dir scienceqa --result-file answers.jsonl \
        --output-file answers_output.jsonl --output-result answers_result.json
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.answers.jsonio import read_answers
from llava.utils import atomic_write_json, load_json

OPTIONS = ("A", "B", "C", "D", "E")
FAILED = "FAILED"
_ANSWER_SENTENCE = re.compile(r"The answer is ([A-Z]).")


def parse_choice(text: str, options: Sequence[str] = OPTIONS) -> str:
    """The option letter of an answer: a bare letter, 'X. ...', or one 'The answer is X.'; else FAILED."""
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_SENTENCE.findall(text)
    return found[0] if len(found) == 1 else FAILED


def load_split(base_dir: str | os.PathLike, split: str = "test") -> dict[str, dict[str, Any]]:
    """The problems of one split from `problems.json` and `pid_splits.json` under `base_dir`."""
    base = Path(base_dir)
    splits = load_json(base / "pid_splits.json")
    if split not in splits:
        raise ValueError(f"{base / 'pid_splits.json'}: no split {split!r} (has: {', '.join(splits)})")
    problems = load_json(base / "problems.json")
    missing = [pid for pid in splits[split] if pid not in problems]
    if missing:
        raise ValueError(f"{base / 'problems.json'}: {len(missing)} problem(s) of split {split!r} absent, e.g. {missing[0]}")
    for pid in splits[split]:
        for field in ("choices", "answer"):
            if field not in problems[pid]:
                raise ValueError(f"{base / 'problems.json'}: problem {pid} has no {field!r} field")
    return {pid: problems[pid] for pid in splits[split]}


def evaluate_science_qa(
    problems: dict[str, dict[str, Any]], answers: Sequence[dict[str, Any]], options: Sequence[str] = OPTIONS
) -> dict[str, Any]:
    """Accuracy (percent) over all problems and over those with an image; a problem with no answer counts as wrong."""
    answer_by_id = {str(a["question_id"]): a for a in answers}
    per_problem = []
    for pid, problem in problems.items():
        answer = answer_by_id.get(str(pid))
        text = answer["text"] if answer is not None else FAILED
        parsed = parse_choice(text, options)
        predicted = options.index(parsed) if parsed in options[: len(problem["choices"])] else -1
        per_problem.append(
            {
                "question_id": pid,
                "parsed_ans": parsed,
                "ground_truth": options[problem["answer"]],
                "pred": text,
                "pred_idx": predicted,
                "is_multimodal": bool(problem.get("image")),
                "correct": predicted == problem["answer"],
                "answered": answer is not None,
            }
        )
    if not per_problem:
        raise ValueError("the split has no problems")
    image_rows = [r for r in per_problem if r["is_multimodal"]]
    correct = sum(r["correct"] for r in per_problem)
    image_correct = sum(r["correct"] for r in image_rows)
    return {
        "count": len(per_problem),
        "correct": correct,
        "acc": 100.0 * correct / len(per_problem),
        "img_count": len(image_rows),
        "img_correct": image_correct,
        "img_acc": 100.0 * image_correct / len(image_rows) if image_rows else 0.0,
        "unparsed": sum(r["parsed_ans"] == FAILED and r["answered"] for r in per_problem),
        "missing": sum(not r["answered"] for r in per_problem),
        "problems": per_problem,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-dir", required=True, help="folder with problems.json and pid_splits.json")
    parser.add_argument("--result-file", required=True, help="answers jsonl")
    parser.add_argument("--output-file", help="per-problem analysis (correct / incorrect lists), JSON")
    parser.add_argument("--output-result", help="summary and per-problem predictions, JSON")
    parser.add_argument("--split", default="test")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = evaluate_science_qa(load_split(args.base_dir, args.split), read_answers(args.result_file))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result["missing"]:
        print(f"warning: {result['missing']} problem(s) have no answer and count as wrong", file=sys.stderr)
    print(
        f"Total: {result['count']}, Correct: {result['correct']}, Accuracy: {result['acc']:.2f}%, "
        f"IMG-Accuracy: {result['img_acc']:.2f}%"
    )
    rows = result["problems"]
    if args.output_file:
        atomic_write_json(
            args.output_file,
            {"correct": [r for r in rows if r["correct"]], "incorrect": [r for r in rows if not r["correct"]]},
        )
    if args.output_result:
        summary = {k: v for k, v in result.items() if k != "problems"}
        summary["results"] = {r["question_id"]: r["pred_idx"] for r in rows}
        summary["outputs"] = {r["question_id"]: r["pred"] for r in rows}
        atomic_write_json(args.output_result, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

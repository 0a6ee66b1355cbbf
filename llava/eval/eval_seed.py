r"""SEED-Bench: accuracy per question type, on image and video questions, and overall; plus the upload file.

A prediction is right when the answer text is exactly the option letter (LLaVA-1.5's rule, with its
"Answer with the option's letter from the given choices directly." prompt). A question without an
answer counts as wrong, as in LLaVA's script. SEED-Image, the number LLaVA-1.5 reports, is `image`.

    python -m llava.eval.eval_seed --annotation-file SEED-Bench.json --result-file merge.jsonl \
        --result-upload-file answers_upload/<model>.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from llava.answers.jsonio import read_answers
from llava.utils import atomic_write_json, atomic_write_text, load_json


def load_annotations(annotation_file: str | os.PathLike) -> dict[str, Any]:
    """SEED-Bench.json, checked for `questions` (with the fields scored here) and `question_type`."""
    data = load_json(annotation_file)
    if not isinstance(data, dict) or "questions" not in data or "question_type" not in data:
        raise ValueError(f"{annotation_file}: expected an object with 'questions' and 'question_type' (SEED-Bench.json)")
    for i, question in enumerate(data["questions"]):
        for field in ("question_id", "answer", "question_type_id", "data_type"):
            if field not in question:
                raise ValueError(f"{annotation_file}: questions[{i}] has no {field!r} field")
    return data


def _accuracy(correct: int, total: int) -> dict[str, float]:
    return {"correct": correct, "total": total, "accuracy": 100.0 * correct / total if total else 0.0}


def evaluate_seed(annotations: dict[str, Any], answers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (percent) per question type name, per data type (image, video) and overall."""
    type_names = {int(type_id): name for name, type_id in annotations["question_type"].items()}
    answer_by_id = {str(a["question_id"]): a for a in answers}
    counts: dict[str, dict[Any, list[int]]] = {"type": defaultdict(lambda: [0, 0]), "data": defaultdict(lambda: [0, 0])}
    missing = 0
    for question in annotations["questions"]:
        answer = answer_by_id.get(str(question["question_id"]))
        missing += answer is None
        right = answer is not None and str(answer["text"]).strip() == question["answer"]
        for group, key in (("type", int(question["question_type_id"])), ("data", question["data_type"])):
            counts[group][key][0] += right
            counts[group][key][1] += 1
    by_type = {type_names.get(t, str(t)): _accuracy(*counts["type"][t]) for t in sorted(counts["type"])}
    by_data = {d: _accuracy(*c) for d, c in sorted(counts["data"].items())}
    overall = _accuracy(sum(c[0] for c in counts["data"].values()), sum(c[1] for c in counts["data"].values()))
    return {"by_type": by_type, "by_data_type": by_data, "overall": overall, "missing": missing}


def upload_records(annotations: dict[str, Any], answers: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One {question_id, prediction} per answered question, in the annotation's order (the leaderboard format)."""
    answer_by_id = {str(a["question_id"]): a for a in answers}
    return [
        {"question_id": q["question_id"], "prediction": answer_by_id[str(q["question_id"])]["text"]}
        for q in annotations["questions"]
        if str(q["question_id"]) in answer_by_id
    ]


def format_results(result: dict[str, Any]) -> str:
    """Per-type accuracies, then image / video / overall."""
    lines = [f"{name}: {m['accuracy']:.2f}% ({m['correct']}/{m['total']})" for name, m in result["by_type"].items()]
    lines += [f"{data} accuracy: {m['accuracy']:.2f}% ({m['correct']}/{m['total']})" for data, m in result["by_data_type"].items()]
    lines.append(f"Total accuracy: {result['overall']['accuracy']:.2f}%")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation-file", required=True, help="SEED-Bench.json")
    parser.add_argument("--result-file", required=True, help="answers jsonl")
    parser.add_argument("--result-upload-file", help="write the leaderboard jsonl here")
    parser.add_argument("--output-result", help="also write the accuracies as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        annotations = load_annotations(args.annotation_file)
        answers = read_answers(args.result_file)
        result = evaluate_seed(annotations, answers)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if result["missing"]:
        print(f"warning: {result['missing']} question(s) have no answer and count as wrong", file=sys.stderr)
    print(format_results(result))
    if args.result_upload_file:
        lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in upload_records(annotations, answers))
        atomic_write_text(args.result_upload_file, "".join(lines))
    if args.output_result:
        atomic_write_json(args.output_result, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

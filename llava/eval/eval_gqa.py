r"""GQA: convert LLaVA answers to the official prediction format, and score them locally on testdev-balanced.

The local score is the official evaluator's accuracy (exact match over balanced questions), with its
binary/open split and its per-structural-type and per-semantic-type accuracies; consistency, validity,
plausibility and distribution need extra files and are left to the official eval.py.

    python -m llava.eval.eval_gqa --src merge.jsonl --dst testdev_balanced_predictions.json \
        --questions testdev_balanced_questions.json
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from llava.answers.jsonio import read_answers
from llava.eval.vqa_normalize import normalize_gqa_answer
from llava.utils import atomic_write_json, load_json


def convert_gqa(answers: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """LLaVA answers as official GQA predictions: [{questionId, prediction}] with the light normalisation."""
    return [{"questionId": a["question_id"], "prediction": normalize_gqa_answer(a["text"])} for a in answers]


def load_questions(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """A GQA questions file ({question id: question}), each checked for `answer` and `types`."""
    questions = load_json(path)
    if not isinstance(questions, dict):
        raise ValueError(f"{path}: expected an object keyed by question id (GQA *_questions.json)")
    for qid, question in questions.items():
        if "answer" not in question or "types" not in question:
            raise ValueError(f"{path}: question {qid} has no 'answer' or 'types' field")
    return questions


def _percent(scores: list[float]) -> float:
    return 100.0 * sum(scores) / len(scores) if scores else 0.0


def evaluate_gqa(questions: dict[str, dict[str, Any]], predictions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (percent) over balanced questions, binary vs open, and per structural / semantic type."""
    predicted = {str(p["questionId"]): p["prediction"] for p in predictions}
    balanced = {qid: q for qid, q in questions.items() if q.get("isBalanced", True)}
    missing = [qid for qid in balanced if str(qid) not in predicted]
    if missing:
        raise ValueError(f"{len(missing)} balanced question(s) have no prediction, e.g. {missing[0]}")
    scores: dict[str, Any] = {"accuracy": [], "binary": [], "open": []}
    per_structural: dict[str, list[float]] = defaultdict(list)
    per_semantic: dict[str, list[float]] = defaultdict(list)
    for qid, question in balanced.items():
        score = float(predicted[str(qid)] == question["answer"])
        scores["accuracy"].append(score)
        # Official rule: "query" questions are open-ended, every other structure (verify, logical,
        # choose, compare) has a binary answer.
        scores["open" if question["types"]["structural"] == "query" else "binary"].append(score)
        per_structural[question["types"]["structural"]].append(score)
        per_semantic[question["types"]["semantic"]].append(score)
    return {
        "accuracy": _percent(scores["accuracy"]),
        "binary": _percent(scores["binary"]),
        "open": _percent(scores["open"]),
        "count": len(scores["accuracy"]),
        "per_structural_type": {k: (_percent(v), len(v)) for k, v in sorted(per_structural.items())},
        "per_semantic_type": {k: (_percent(v), len(v)) for k, v in sorted(per_semantic.items())},
    }


def format_results(result: dict[str, Any]) -> str:
    """The official evaluator's headline lines, then the per-type accuracies."""
    lines = [f"Binary: {result['binary']:.2f}%", f"Open: {result['open']:.2f}%", f"Accuracy: {result['accuracy']:.2f}%"]
    for key, title in (("per_structural_type", "Accuracy / structural type"), ("per_semantic_type", "Accuracy / semantic type")):
        lines.append(f"{title}:")
        lines += [f"  {name}: {acc:.2f}% ({n} questions)" for name, (acc, n) in result[key].items()]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="LLaVA answers jsonl")
    parser.add_argument("--dst", required=True, help="where to write the official predictions JSON")
    parser.add_argument("--questions", help="testdev_balanced_questions.json: also print the local accuracy")
    parser.add_argument("--output-result", help="also write the local scores as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        predictions = convert_gqa(read_answers(args.src))
        atomic_write_json(args.dst, predictions, indent=None)
        print(f"wrote {len(predictions)} predictions to {args.dst}")
        if args.questions:
            result = evaluate_gqa(load_questions(args.questions), predictions)
            print(format_results(result))
            if args.output_result:
                atomic_write_json(args.output_result, result)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

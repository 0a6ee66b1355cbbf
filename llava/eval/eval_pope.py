r"""POPE: accuracy, precision, recall, F1 and yes-ratio per split (adversarial, popular, random).

The label files `coco_pope_{split}.json` (jsonl) list the questions of each split in the same order as
LLaVA's question file does; answers are paired with labels through that order and checked by image
and question text.

    python -m llava.eval.eval_pope --annotation-dir pope/coco --question-file llava_pope_test.jsonl \
        --result-file answers.jsonl
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llava.answers.jsonio import read_answers, read_jsonl
from llava.utils import atomic_write_json

LABEL_FILE_PREFIX = "coco_pope_"


def parse_yes_no(text: str) -> str:
    """LLaVA's POPE reading of an answer: 'no' if its first sentence has the word no/No/not, else 'yes'."""
    words = text.split(".")[0].replace(",", "").split(" ")
    return "no" if any(w in ("No", "no", "not") for w in words) else "yes"


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def binary_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Confusion counts and accuracy/precision/recall/F1/yes-ratio (percent) with 'yes' as the positive class."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"need as many predictions as labels (got {len(predictions)} and {len(labels)}), and some")
    pairs = list(zip(predictions, labels))
    tp = sum(p == "yes" and g == "yes" for p, g in pairs)
    fp = sum(p == "yes" and g != "yes" for p, g in pairs)
    tn = sum(p != "yes" and g != "yes" for p, g in pairs)
    fn = sum(p != "yes" and g == "yes" for p, g in pairs)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "TP": tp,
        "FP": fp,
        "TN": tn,
        "FN": fn,
        "accuracy": 100.0 * (tp + tn) / len(pairs),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": 100.0 * (tp + fp) / len(pairs),
    }


def load_labels(annotation_dir: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Label records per split from `coco_pope_{split}.json` files in `annotation_dir`."""
    folder = Path(annotation_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (POPE label files coco_pope_*.json go there)")
    files = sorted(folder.glob(f"{LABEL_FILE_PREFIX}*.json"))
    if not files:
        raise FileNotFoundError(f"{folder}: no {LABEL_FILE_PREFIX}*.json label files")
    labels = {}
    for path in files:
        records = read_jsonl(path)
        for n, record in enumerate(records, start=1):
            if record.get("label") not in ("yes", "no"):
                raise ValueError(f"{path}: record {n} has label {record.get('label')!r}, expected 'yes' or 'no'")
        labels[path.stem[len(LABEL_FILE_PREFIX) :]] = records
    return labels


def evaluate_pope(
    questions: Sequence[dict[str, Any]],
    answers: Sequence[dict[str, Any]],
    labels: dict[str, list[dict[str, Any]]],
) -> dict[str, dict[str, float]]:
    """Metrics per split, plus `average` (the mean of each metric over the splits)."""
    answer_by_id = {}
    for n, answer in enumerate(answers, start=1):
        qid = str(answer.get("question_id"))
        if qid in answer_by_id:
            raise ValueError(f"answer {n}: question_id {qid} is answered twice")
        answer_by_id[qid] = answer
    known_splits = set(labels)
    unknown = sorted({str(q.get("category")) for q in questions} - known_splits)
    if unknown:
        raise ValueError(f"questions of split(s) {', '.join(unknown)} have no {LABEL_FILE_PREFIX}<split>.json label file")

    results: dict[str, dict[str, float]] = {}
    for split, split_labels in labels.items():
        split_questions = [q for q in questions if q.get("category") == split]
        if len(split_questions) != len(split_labels):
            raise ValueError(
                f"split {split}: {len(split_questions)} questions but {len(split_labels)} labels; "
                "are the question file and label files from the same release?"
            )
        predictions = []
        for pos, (question, label) in enumerate(zip(split_questions, split_labels), start=1):
            same_image = question.get("image") == label.get("image")
            same_text = str(label.get("text", "")) in str(question.get("text", ""))
            if not (same_image and same_text):
                raise ValueError(
                    f"split {split}, question {pos} (question_id {question.get('question_id')}) does not match "
                    f"label {pos} (image {label.get('image')!r}, text {label.get('text')!r}): the files are out of order"
                )
            answer = answer_by_id.get(str(question.get("question_id")))
            if answer is None:
                raise ValueError(f"split {split}: question_id {question.get('question_id')} has no answer")
            predictions.append(parse_yes_no(answer["text"]))
        results[split] = binary_metrics(predictions, [label["label"] for label in split_labels])

    metric_names = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    results["average"] = {m: sum(results[s][m] for s in labels) / len(labels) for m in metric_names}
    return results


def format_results(results: dict[str, dict[str, float]]) -> str:
    """A table with one row per split (and the average), metrics in percent."""
    lines = [f"{'split':<12} {'TP':>5} {'FP':>5} {'TN':>5} {'FN':>5}  {'acc':>6} {'prec':>6} {'recall':>6} {'F1':>6} {'yes%':>6}"]
    for split, m in results.items():
        counts = " ".join(f"{m[k]:>5}" if k in m else f"{'':>5}" for k in ("TP", "FP", "TN", "FN"))
        lines.append(
            f"{split:<12} {counts}  {m['accuracy']:6.2f} {m['precision']:6.2f} {m['recall']:6.2f} "
            f"{m['f1']:6.2f} {m['yes_ratio']:6.2f}"
        )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotation-dir", required=True, help="folder with coco_pope_{split}.json")
    parser.add_argument("--question-file", required=True, help="llava_pope_test.jsonl")
    parser.add_argument("--result-file", required=True, help="answers jsonl")
    parser.add_argument("--output-result", help="also write the metrics as JSON here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = evaluate_pope(read_jsonl(args.question_file), read_answers(args.result_file), load_labels(args.annotation_dir))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_results(results))
    if args.output_result:
        atomic_write_json(args.output_result, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Command-line plumbing shared by the four metric scripts in eval/."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from llava.answers import provenance
from llava.utils import same_file
from llava.visatb.metrics.task_metrics import (
    METRIC_NAMES,
    check_one_generator,
    check_task,
    empty_answers_warning,
    evaluate,
    load_answers,
)
from llava.visatb.scores import record_score
from llava.visatb.tasks import CAPTION, CAPTION_LIST, GROUNDING, QA

DESCRIPTIONS = {
    CAPTION: "CIDEr of each answer against its one reference caption.",
    CAPTION_LIST: "CIDEr of each answer against its list of reference captions.",
    GROUNDING: "Accuracy of predicted boxes: the first [x1, y1, x2, y2] with IoU > 0.5 against the reference.",
    QA: "Exact-match accuracy after lowercasing, stripping and dropping one trailing period.",
}


def build_parser(metric_type: str) -> argparse.ArgumentParser:
    """The argument parser of one metric script."""
    parser = argparse.ArgumentParser(
        description=DESCRIPTIONS[metric_type]
        + " Reads an answer file written by inference_visatb.py (a JSON list of records with"
        " conversations[1].generative_value)."
    )
    parser.add_argument(
        "-a", "--answers-file", "--answers_file", "--answer-file", "--answer_file",
        dest="answers_file", required=True, help="answer file (JSON list of records)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the text line")
    group = parser.add_argument_group("recording into the scores table (all three together)")
    group.add_argument("--scores", help="scores table to update (created if missing)")
    group.add_argument(
        "--model-key", "--model_key", dest="model_key", help="model key, e.g. mini or a task name"
    )
    group.add_argument("--task", help="task name the answers belong to, e.g. GQA")
    return parser


def main(metric_type: str, argv: Sequence[str] | None = None) -> int:
    """Score an answer file, print it as the release does (or as JSON) and optionally record it."""
    args = build_parser(metric_type).parse_args(argv)
    recording = {"--scores": args.scores, "--model-key": args.model_key, "--task": args.task}
    given = [flag for flag, value in recording.items() if value is not None]
    if given and len(given) != len(recording):
        missing = [flag for flag in recording if flag not in given]
        print(f"error: {', '.join(given)} also needs {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.scores is not None and same_file(args.scores, args.answers_file):
        print(f"error: --scores {args.scores} is the answer file itself; give the scores table's path", file=sys.stderr)
        return 2
    try:
        records = load_answers(args.answers_file, metric_type)
        generator = check_one_generator(records, args.answers_file)
        for warning in provenance.check_for_scoring(args.answers_file, generator):
            print(f"warning: {warning}", file=sys.stderr)
        if args.task is not None:
            check_task(records, args.task, args.answers_file)
        empty = empty_answers_warning(records, args.answers_file)
        if empty:
            print(empty, file=sys.stderr)
        result = evaluate(records, metric_type, progress=not args.json, source=args.answers_file)
        if args.scores is not None:
            record_score(args.scores, args.model_key, args.task, result.score)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        kept = f"; {args.scores} is unchanged" if args.scores is not None else ""
        print(f"interrupted: {args.answers_file} was not scored{kept}", file=sys.stderr)
        return 130
    if args.json:
        line = {
            "metric": METRIC_NAMES[metric_type],
            "metric_type": metric_type,
            "score": result.score,
            "n": result.n,
            "answers_file": args.answers_file,
        }
        if result.correct is not None:
            line["correct"] = result.correct
        if args.scores is not None:
            line.update(scores_file=args.scores, model_key=args.model_key, task=args.task)
        print(json.dumps(line))
    else:
        print(result.summary_line())
        if args.scores is not None:
            print(
                f"recorded {result.score} as {args.model_key!r} / {args.task!r} in {args.scores}",
                file=sys.stderr,
            )
    return 0

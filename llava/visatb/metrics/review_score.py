"""The chain's `gpt_review` metric: a GPT judge's relative score of one task's answers on a review set.

The answers are inference_visatb.py's answer file of the task's validation file (llava.visatb.metrics.review_set
split); each is judged against the reference answer by llava.eval.eval_gpt_review_bench on the endpoint of
OPENAI_BASE_URL with OPENAI_API_KEY. Reviews go to --reviews as they arrive and are reused while the judge
model and the prompt (so both answers) are unchanged: a rerun asks only what is not reviewed yet. The score is
LLaVA-Bench's relative score in percent: 100 * mean model score / mean reference score.

    python eval/gpt_review.py -a answers.json --review-set data/llava-bench-coco --task conversation \
        --tasks conversation,detail,complex_reasoning --reviews reviews/visatb/conversation.jsonl [--judge-model gpt-4-0314] [--json] \
        [--scores scores.json --model-key VisATB]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from llava.answers.jsonio import read_jsonl
from llava.eval import eval_gpt_review_bench as bench
from llava.eval.summarize_gpt_review import summarize_reviews
from llava.utils import load_json
from llava.visatb.metrics.review_set import load_questions_by_task, locate_review_set
from llava.visatb.scores import record_score

METRIC_NAME = "gpt_review_relative"


def model_answers(
    answers_file: str | os.PathLike, task: str, question_ids: Sequence[Any]
) -> list[dict[str, Any]]:
    """The model's answers as the review reads them (question_id, text, answer_id), one per question of the
    task: a missing, extra or other-task answer names the file and question."""
    records = load_json(answers_file)
    if not isinstance(records, list):
        raise ValueError(f"{answers_file}: expected a JSON list of answered records")
    wanted = {str(q) for q in question_ids}
    answers = {}
    for n, record in enumerate(records):
        where = f"{answers_file}: record {n}"
        turns = record.get("conversations") if isinstance(record, dict) else None
        if (
            "question_id" not in record
            or not isinstance(turns, list)
            or len(turns) < 2
            or "generative_value" not in turns[1]
        ):
            raise ValueError(
                f"{where}: needs 'question_id' and conversations[1].generative_value (inference_visatb.py's)"
            )
        qid = str(record["question_id"])
        if record.get("task", task) != task or qid not in wanted:
            raise ValueError(f"{where}: question_id {qid} (task {record.get('task')!r}) is not a {task} question "
                             "of the review set")  # fmt: skip
        answers[qid] = {"question_id": record["question_id"], "text": turns[1]["generative_value"],
                        "answer_id": f"{record.get('generator', 'model')}:{qid}"}  # fmt: skip
    missing = [q for q in question_ids if str(q) not in answers]
    if missing:
        raise ValueError(f"{answers_file}: no answer for {len(missing)} {task} question(s), question_id "
                         f"{', '.join(map(str, missing[:10]))}")  # fmt: skip
    return [answers[str(q)] for q in question_ids]


def score_task(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    """Review the task's answers (reusing done reviews) and summarise them."""
    review_set = locate_review_set(args.review_set, args.review_image_folder)
    tasks = [t.strip() for t in (args.tasks or args.task).split(",") if t.strip()]
    if args.task not in tasks:
        raise ValueError(f"--task {args.task} is not among --tasks {args.tasks}")
    questions = load_questions_by_task(review_set, tasks, check_images=False)[args.task]
    answers = model_answers(args.answers_file, args.task, [q["question_id"] for q in questions])
    sources = bench.ReviewSources(str(review_set.context), str(review_set.reference), str(args.answers_file),
                                  str(review_set.rules))  # fmt: skip
    reviews = bench.review_answers(
        questions, read_jsonl(review_set.context), read_jsonl(review_set.reference), answers, args.reviews,
        bench.load_rules(review_set.rules), args.judge_model, args.max_tokens, args.max_retries, args.retry_delay,
        client, sources,
    )  # fmt: skip
    summary = summarize_reviews(reviews)["all"]
    if summary["unscored"]:
        print(f"warning: {summary['unscored']} review(s) in {args.reviews} hold no two scores; left out of the "
              "score and asked again on the next run", file=sys.stderr)  # fmt: skip
    if not summary["count"]:
        raise ValueError(f"{args.reviews}: no review of {args.task} holds two scores; nothing to score")
    return {"metric": METRIC_NAME, "metric_type": "gpt_review", "score": summary["relative"], "n": summary["count"],
            "reference": summary["reference"], "model": summary["model"], "unscored": summary["unscored"],
            "judge_model": args.judge_model, "answers_file": str(args.answers_file), "reviews": str(args.reviews)}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "-a", "--answers-file", required=True, help="inference_visatb.py's answer file of the task"
    )
    parser.add_argument("--review-set", required=True, help="folder, or QUESTIONS,CONTEXT,REFERENCE[,RULES]")
    parser.add_argument("--review-image-folder", help="image root of the review set (only checked to exist)")
    parser.add_argument("--task", required=True, help="the judged task (its questions' category)")
    parser.add_argument("--tasks", help="every judged task of the review set, A,B,... (default: --task alone); "
                        "each question's category must name one")  # fmt: skip
    parser.add_argument("--reviews", required=True, help="reviews jsonl (appended to; reused on reruns)")
    parser.add_argument("--judge-model", default=os.environ.get("JUDGE_MODEL") or bench.DEFAULT_JUDGE_MODEL,
                        help="judge model name (default: $JUDGE_MODEL, else %(default)s)")  # fmt: skip
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--max-retries", type=int, default=6)
    parser.add_argument("--retry-delay", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for one judge response")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of the text line")
    parser.add_argument("--scores", help="scores table to update (with --model-key)")
    parser.add_argument("--model-key", help="model key of the row, e.g. VisATB or alone:detail")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.scores is None) != (args.model_key is None):
        print("error: --scores and --model-key go together", file=sys.stderr)
        return 2
    try:
        client = bench.make_judge_client(args.timeout)
        result = score_task(args, client)
        if args.scores is not None:
            record_score(args.scores, args.model_key, args.task, result["score"])
    except bench.MissingAPIKeyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, bench.JudgeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        if args.scores is not None:
            result.update(scores_file=args.scores, model_key=args.model_key, task=args.task)
        print(json.dumps(result))
    else:
        print(f"{args.task}: relative score {result['score']:.1f}% (reference {result['reference']:.1f}, model "
              f"{result['model']:.1f}, {result['n']} reviews, judge {args.judge_model})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

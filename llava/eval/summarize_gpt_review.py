"""Summarise GPT reviews: per category and overall, the relative score (model / reference, percent) and both
mean scores on a 1-100 scale, as LLaVA reports LLaVA-Bench.

    python -m llava.eval.summarize_gpt_review -f reviews/<model>.jsonl

Output: per review file a header line with the file, then `category relative reference model count`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from llava.answers.jsonio import read_jsonl
from llava.utils import atomic_write_json


def load_reviews(review_file: str | os.PathLike) -> list[dict[str, Any]]:
    """Reviews of a file, one per question: a later line for the same question_id replaces an earlier one."""
    by_question: dict[str, dict[str, Any]] = {}
    for n, review in enumerate(read_jsonl(review_file), start=1):
        if "question_id" not in review:
            raise ValueError(f"{review_file}: review {n} has no 'question_id' field")
        by_question[str(review["question_id"])] = review
    return list(by_question.values())


def _scores(review: dict[str, Any]) -> list[float] | None:
    pair = review.get("tuple")
    # LLaVA's own script writes [-1, -1] for a review it could not parse.
    if not pair or len(pair) != 2 or -1 in pair:
        return None
    return [float(pair[0]), float(pair[1])]


def summarize_reviews(reviews: Iterable[dict[str, Any]], ignore: Iterable[Any] = ()) -> dict[str, dict[str, Any]]:
    """Per category and `all`: relative score (percent), reference and model scores (x10), counts."""
    ignored = {str(q) for q in ignore}
    pairs: dict[str, list[list[float]]] = defaultdict(list)
    unscored: dict[str, int] = defaultdict(int)
    for review in reviews:
        if str(review.get("question_id")) in ignored:
            continue
        category = str(review.get("category", "all"))
        scores = _scores(review)
        groups = ["all"] if category == "all" else [category, "all"]
        for group in groups:
            if scores is None:
                unscored[group] += 1
            else:
                pairs[group].append(scores)
    summary = {}
    for group in sorted(set(pairs) | set(unscored)):
        values = pairs.get(group, [])
        reference = sum(v[0] for v in values) / len(values) if values else 0.0
        model = sum(v[1] for v in values) / len(values) if values else 0.0
        summary[group] = {
            "relative": 100.0 * model / reference if reference else 0.0,
            "reference": 10.0 * reference,
            "model": 10.0 * model,
            "count": len(values),
            "unscored": unscored.get(group, 0),
        }
    return summary


def format_summary(summary: dict[str, dict[str, Any]]) -> str:
    """One line per category: name, relative score, reference score, model score, number of scored reviews."""
    lines = []
    for group, s in summary.items():
        note = f" ({s['unscored']} unscored)" if s["unscored"] else ""
        lines.append(f"{group} {s['relative']:.1f} {s['reference']:.1f} {s['model']:.1f} {s['count']}{note}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", "--files", nargs="*", default=[], help="review jsonl files")
    parser.add_argument("-d", "--dir", help="summarise every .jsonl in this folder")
    parser.add_argument("-i", "--ignore", nargs="*", default=[], help="question ids to leave out")
    parser.add_argument("--output-result", help="write the summaries as JSON here ({file: {category: ...}})")
    args = parser.parse_args(argv)
    if not args.files and not args.dir:
        parser.error("give review files (-f) or a folder (-d)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    files = [Path(f) for f in args.files]
    results = {}
    try:
        if args.dir:
            if not Path(args.dir).is_dir():
                raise FileNotFoundError(f"{args.dir}: no such folder")
            files += sorted(Path(args.dir).glob("*.jsonl"))
        if not files:
            raise FileNotFoundError(f"{args.dir}: no .jsonl review files")
        for path in files:
            results[str(path)] = summarize_reviews(load_reviews(path), args.ignore)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path, summary in results.items():
        print(f"{Path(path).stem}  (category relative reference model count)")
        print(format_summary(summary))
        print("=================================")
    if args.output_result:
        atomic_write_json(args.output_result, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

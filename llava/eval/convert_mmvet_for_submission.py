"""MM-Vet: LLaVA answers to the official evaluator's results file, {"v1_<question_id>": answer}.

    python -m llava.eval.convert_mmvet_for_submission --src answers.jsonl --dst results/<model>.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from llava.answers.jsonio import read_answers
from llava.utils import atomic_write_json


def convert_mmvet(answers: Sequence[dict[str, Any]]) -> dict[str, str]:
    """{"v1_<question_id>": text}; a question answered twice is an error."""
    results: dict[str, str] = {}
    for answer in answers:
        key = f"v1_{answer['question_id']}"
        if key in results:
            raise ValueError(f"question {answer['question_id']} is answered twice")
        results[key] = answer["text"]
    return results


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="answers jsonl")
    parser.add_argument("--dst", required=True, help="results JSON for MM-Vet's evaluator")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = convert_mmvet(read_answers(args.src))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    atomic_write_json(args.dst, results)
    print(f"wrote {len(results)} answers to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

r"""Merge the per-GPU answer chunks `{answers_dir}/{num_chunks}_{idx}.jsonl` into one file in question order.

The chunks must answer every question of the question file exactly once, and share one provenance record
(model, settings, this question file); the logic is `llava.answers.benchmark_answers.merge_chunks`.

    python -m llava.eval.merge_chunks --question-file Q.jsonl --answers-dir DIR --num-chunks 4 \
        --output-file DIR/merge.jsonl
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from llava.answers.benchmark_answers import merge_chunks


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--question-file", required=True, help="questions (.jsonl, .json list or MMBench .tsv)")
    parser.add_argument("--answers-dir", required=True, help="folder of the {num_chunks}_{idx}.jsonl chunk files")
    parser.add_argument("--num-chunks", type=int, required=True)
    parser.add_argument("--output-file", required=True, help="merged answers (jsonl)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        merged = merge_chunks(args.question_file, args.answers_dir, args.num_chunks, args.output_file)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"merged {len(merged)} answers from {args.num_chunks} chunk(s) into {args.output_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

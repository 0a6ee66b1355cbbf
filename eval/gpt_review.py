"""GPT-judged relative score of one task's answers on a LLaVA-Bench-style review set (llava/visatb/metrics/review_score.py).

Usage: python eval/gpt_review.py -a answers.json --review-set DIR --task NAME --reviews FILE [--json] [--scores FILE --model-key KEY]
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("llava") is None:  # not pip-installed: use this checkout
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from llava.visatb.metrics.review_score import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

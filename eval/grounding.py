"""IoU > 0.5 accuracy of predicted boxes.

Usage: python eval/grounding.py -a answers.json [--json] [--scores FILE --model-key KEY --task NAME]
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("llava") is None:  # not pip-installed: use this checkout
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from llava.visatb.metrics.cli import main  # noqa: E402
from llava.visatb.tasks import GROUNDING  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(GROUNDING))

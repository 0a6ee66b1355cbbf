"""Upstream LLaVA's `scripts/merge_lora_weights.py`, at upstream's path: runs scripts_visatb/merge_lora_weights.py.

    python scripts/merge_lora_weights.py --model-path LORA --model-base BASE --save-model-path MERGED
"""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts_visatb" / "merge_lora_weights.py"),
                   run_name="__main__")  # fmt: skip

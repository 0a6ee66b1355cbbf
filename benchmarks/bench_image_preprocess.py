"""Per-image preprocessing time (`llava.mm_utils.process_images`, LLaVA-1.5's pad mode) with transformers
4.31's uncached `is_vision_available` (the baseline) against the cached one `llava.mm_utils` installs.

    python benchmarks/bench_image_preprocess.py                 # 48-pixel images, the toy's size
    python benchmarks/bench_image_preprocess.py --size 336      # CLIP ViT-L/14-336's size

Both run in this process, the baseline first; the ratio is cached time / uncached time (lower is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

if importlib.util.find_spec("llava") is None:  # not pip-installed: use this checkout
    sys.path.append(str(Path(__file__).resolve().parents[1]))

import transformers.image_utils  # noqa: E402
from transformers import CLIPImageProcessor  # noqa: E402
from transformers.utils import import_utils  # noqa: E402

from llava.mm_utils import process_images  # noqa: E402  (installs the cache)


def seconds_per_image(images, processor, cfg, rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        process_images(images, processor, cfg)
    return (time.perf_counter() - start) / (rounds * len(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--images", type=int, default=16, help="images per call (a toy training batch)")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
              for _ in range(args.images)]  # fmt: skip
    processor = CLIPImageProcessor(size={"shortest_edge": args.size},
                                   crop_size={"height": args.size, "width": args.size})  # fmt: skip
    cfg = type("Cfg", (), {"image_aspect_ratio": "pad"})()
    cached = import_utils.is_vision_available
    backend = import_utils.BACKENDS_MAPPING["vision"]
    transformers.image_utils.is_vision_available = cached.__wrapped__
    import_utils.BACKENDS_MAPPING["vision"] = (cached.__wrapped__, backend[1])
    seconds_per_image(images, processor, cfg, 2)  # warm-up
    uncached = seconds_per_image(images, processor, cfg, args.rounds)
    transformers.image_utils.is_vision_available = cached
    import_utils.BACKENDS_MAPPING["vision"] = backend
    fast = seconds_per_image(images, processor, cfg, args.rounds)
    print(f"{args.size}-pixel images, {args.images} per call, {args.rounds} rounds")
    print(f"uncached is_vision_available: {uncached * 1e3:.3f} ms per image")
    print(f"cached (llava.mm_utils):      {fast * 1e3:.3f} ms per image")
    print(f"ratio cached / uncached: {fast / uncached:.3f}")


if __name__ == "__main__":
    main()

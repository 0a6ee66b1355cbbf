"""Seconds to generate the toy benchmark, against writing as many plain PNG files of the same size.

    python benchmarks/bench_toy_generation.py                  # scale 0.05 (the tests' size), 64-pixel images
    python benchmarks/bench_toy_generation.py --scale 1 --image-size 48   # the demo's benchmark

The baseline runs in the same process right after: one grey image saved once per image the benchmark
writes, so the ratio is what scene drawing, noise and the record files cost on top of PNG encoding and disk.
(This replaced a test that asserted a wall time, which failed whenever the machine was busy.)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

if importlib.util.find_spec("llava") is None:  # not pip-installed: use this checkout
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from llava.visatb.toy import benchmark as toy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = toy.generate_toy_benchmark(Path(tmp) / "toy", seed=args.seed, scale=args.scale,
                                              image_size=args.image_size)  # fmt: skip
        generation = time.perf_counter() - start
        images = len(list((Path(tmp) / "toy" / toy.IMAGE_DIR).glob("*.png")))

        plain = Image.new("RGB", (args.image_size, args.image_size), (140, 140, 140))
        folder = Path(tmp) / "plain"
        folder.mkdir()
        start = time.perf_counter()
        for index in range(images):
            plain.save(folder / f"{index:06d}.png", format="PNG")
        baseline = time.perf_counter() - start

    print(f"toy benchmark: scale {args.scale}, {args.image_size}-pixel images, {manifest['train_count']} training "
          f"records, {images} images")
    print(f"generation     {generation:8.3f} s  ({images / generation:8.1f} images/s)")
    print(f"plain PNGs     {baseline:8.3f} s  ({images / baseline:8.1f} images/s)")
    print(f"ratio          {generation / baseline:8.2f}x the time of writing plain PNGs")


if __name__ == "__main__":
    main()

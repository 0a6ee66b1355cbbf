"""The vision tower's feature time: `CLIPVisionModel`'s whole forward then `hidden_states[select_layer]` (the
baseline, as upstream LLaVA computes it) against `clip_encoder.selected_hidden_state` (what `CLIPVisionTower` calls), which stops at the
selected layer.

    python benchmarks/bench_vision_tower.py                      # the toy's tower: 2 layers, 48 px, 12x12 patches
    python benchmarks/bench_vision_tower.py --layers 24 --hidden 1024 --image-size 336 --patch 14 --batch 2
                                                                 # CLIP ViT-L/14-336's shape (random weights)

Both run in this process on the same random weights and images, alternating, after a warm-up; the features
must be equal. The ratio is selected-layer time / baseline time (lower is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

if importlib.util.find_spec("llava") is None:  # not pip-installed: use this checkout
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel  # noqa: E402

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--select-layer", type=int, default=-2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()

    config = CLIPVisionConfig(hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                              num_attention_heads=max(1, args.hidden // 128), image_size=args.image_size,
                              patch_size=args.patch)  # fmt: skip
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        CLIPVisionModel(config).save_pretrained(tmp)
        CLIPImageProcessor(size={"shortest_edge": args.image_size},
                           crop_size={"height": args.image_size, "width": args.image_size}).save_pretrained(tmp)  # fmt: skip
        tower = CLIPVisionTower(tmp, SimpleNamespace(mm_vision_select_layer=args.select_layer))
    pixels = torch.randn(args.batch, 3, args.image_size, args.image_size)

    def baseline():
        return tower.feature_select(tower.vision_tower(pixels, output_hidden_states=True))

    def selected():
        return tower(pixels)

    with torch.no_grad():
        if not torch.equal(baseline(), selected()):
            sys.exit("error: the selected-layer forward changed the features")
        times = {"baseline": 0.0, "selected": 0.0}
        for _ in range(args.rounds):
            for name, fn in (("baseline", baseline), ("selected", selected)):
                start = time.perf_counter()
                fn()
                times[name] += time.perf_counter() - start
    print(f"tower: {args.layers} layers, hidden {args.hidden}, {args.image_size} px / patch {args.patch}, "
          f"layer {args.select_layer}, batch {args.batch}, {args.rounds} rounds, {torch.get_num_threads()} thread(s)")
    for name, seconds in times.items():
        print(f"{name:9s} {1000 * seconds / args.rounds:.2f} ms per batch")
    print(f"ratio selected / baseline: {times['selected'] / times['baseline']:.3f}")


if __name__ == "__main__":
    main()

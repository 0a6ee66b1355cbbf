"""Answers per second of batched generation against one question at a time (the release's only mode).

    python benchmarks/bench_batched_inference.py                      # small random LLaVA on the CPU
    python benchmarks/bench_batched_inference.py --llava-shaped --device cuda   # LLaVA-1.5-7B shapes, fp16

Both runs answer the same question file (each question with its own image) through the inference workflow
of inference_visatb.py in one process, with the model loaded once; the batched answers should equal the
one-at-a-time answers (exactly on a CPU in fp32; in fp16 on a GPU, kernels chosen by batch shape may
round differently). The models have random weights, so answers rarely stop early and most run to
--max-new-tokens.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

if importlib.util.find_spec("llava") is None:  # not pip-installed: use this checkout
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from llava.answers.validation_answers import InferenceJob, run_inference  # noqa: E402
from llava.generation import LlavaGenerator  # noqa: E402
from llava.model.tiny import TinyConfig, build_tiny_llava, build_vision_tower, train_tokenizer  # noqa: E402

# The tests' tiny language model with 64 image tokens per question (LLaVA-1.5 has 576). On a CPU a wider
# model makes every step compute- and memory-bound (transformers 4.31 also copies the whole KV cache each
# step), which shrinks what batching saves; on a GPU, where one-at-a-time decoding leaves the chip idle,
# the opposite holds. --hidden-size/--layers change it.
CPU_MODEL = TinyConfig(image_size=64, patch_size=8, vision_hidden_size=64, vision_intermediate_size=128)
# LLaVA-1.5-7B: Vicuna-7B (32 layers, width 4096) and CLIP ViT-L/14 at 336 px (576 patches).
LLAVA_7B = TinyConfig(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    max_position_embeddings=4096, model_max_length=2048, image_size=336, patch_size=14,
    vision_hidden_size=1024, vision_intermediate_size=4096, vision_layers=24, vision_heads=16,
)  # fmt: skip
QUESTION_TEMPLATES = [
    "What is in the image?",
    "Describe the image in detail.",
    "What colour is the shape? Answer the question using a single word or phrase.",
    "Please provide the bounding box coordinate of the region this sentence describes: the {n}th shape.",
    "Is there a circle in picture {n}?",
]


def make_questions(n: int, image_size: int, folder: Path) -> tuple[Path, Path]:
    """A question file of `n` VisATB-style records, each with its own image; returns (file, image folder)."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        size = (image_size + 7 * (i % 5), image_size)
        Image.new("RGB", size, ((37 * i) % 256, (91 * i) % 256, 128)).save(images / f"{i}.png")
        question = QUESTION_TEMPLATES[i % len(QUESTION_TEMPLATES)].format(n=i)
        records.append({
            "id": str(i), "image": f"{i}.png", "task": "bench",
            "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": ""}],
        })  # fmt: skip
    question_file = folder / "bench_val.json"
    question_file.write_text(json.dumps(records))
    return question_file, images


def tiny_generator(out: Path, device: str | None, max_new_tokens: int, cfg: TinyConfig) -> LlavaGenerator:
    """Build the CPU benchmark model as a checkpoint and load it the way users do."""
    path = build_tiny_llava(out, cfg=cfg)["full"]
    return LlavaGenerator.from_pretrained(path, device=device, max_new_tokens=max_new_tokens, verbose=False)


def llava_shaped_generator(out: Path, device: str, max_new_tokens: int) -> LlavaGenerator:
    """A randomly initialised LLaVA-1.5-7B-shaped model in fp16, built in memory on the device.

    Writing 13 GB of random weights to disk only to read them back would dominate the run; the tokenizer
    is the tiny one (so the vocabulary, and the output layer, are small).
    """
    from transformers import LlamaTokenizer

    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

    cfg = LLAVA_7B
    train_tokenizer(QUESTION_TEMPLATES, out / "tokenizer", cfg.vocab_size)
    tokenizer = LlamaTokenizer.from_pretrained(str(out / "tokenizer"))
    tower_dir = build_vision_tower(out / "vision_tower", cfg)
    config = LlavaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        mm_vision_tower=tower_dir, mm_hidden_size=cfg.vision_hidden_size, mm_projector_type=cfg.mm_projector_type,
        mm_vision_select_layer=cfg.mm_vision_select_layer, mm_vision_select_feature="patch",
        mm_use_im_start_end=False, mm_use_im_patch_token=False, image_aspect_ratio="pad",
        tokenizer_padding_side="right", tokenizer_model_max_length=cfg.model_max_length,
    )  # fmt: skip
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        with torch.device(device):
            model = LlavaLlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    tower = model.get_vision_tower()
    tower.load_model()
    model.to(device=device, dtype=torch.float16).eval()
    return LlavaGenerator(
        tokenizer, model, tower.image_processor, max_new_tokens=max_new_tokens, model_name="llava-7b-shaped"
    )


def answers_per_second(
    generator: LlavaGenerator, question_file: Path, images: Path, answers: Path, batch_size: int
) -> tuple[float, float, list[str]]:
    """(seconds, answers per second, answers) of the inference workflow at one batch size, model loaded."""
    job = InferenceJob(
        str(question_file), str(answers), "bench", image_folder=str(images), batch_size=batch_size, progress=False
    )
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    report = run_inference(job, lambda: generator)
    seconds = time.perf_counter() - start
    records = json.loads(report.answers_file.read_text(encoding="utf-8"))
    return seconds, len(records) / seconds, [r["conversations"][1]["generative_value"] for r in records]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--hidden-size", type=int, default=CPU_MODEL.hidden_size, help="small model's width")
    parser.add_argument("--layers", type=int, default=CPU_MODEL.num_hidden_layers, help="small model's depth")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--llava-shaped", action="store_true", help="LLaVA-1.5-7B shapes in fp16 (needs a GPU)")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads on the CPU (0: torch's default); one gives steadier numbers on a shared machine",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="also print one JSON line with the numbers")
    args = parser.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads and device == "cpu":
        # On a loaded machine a second thread that cannot be scheduled stalls every multi-threaded matmul.
        torch.set_num_threads(args.threads)
    if args.llava_shaped and not device.startswith("cuda"):
        print("error: --llava-shaped needs a CUDA device", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as tmp:
        if args.llava_shaped:
            generator = llava_shaped_generator(Path(tmp), device, args.max_new_tokens)
            model_desc = "random LLaVA-1.5-7B-shaped (Vicuna-7B + CLIP ViT-L/14-336), fp16"
            image_size = LLAVA_7B.image_size
        else:
            c = replace(
                CPU_MODEL, hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
                num_hidden_layers=args.layers,
            )  # fmt: skip
            generator = tiny_generator(Path(tmp), device, args.max_new_tokens, c)
            model_desc = (
                f"random small LLaVA (LM width {c.hidden_size}, {c.num_hidden_layers} layers; "
                f"{(c.image_size // c.patch_size) ** 2} image tokens), {str(generator.model.dtype).split('.')[-1]}"
            )
            image_size = c.image_size
        question_file, images = make_questions(args.questions, image_size, Path(tmp))
        card = torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
        print(f"model: {model_desc}")
        print(f"device: {card}; {args.questions} questions with one image each, {args.max_new_tokens} new tokens")

        generator.generate(["warm-up"], [Image.new("RGB", (image_size, image_size))])  # allocations, kernels
        one_s, one_rate, one_answers = answers_per_second(generator, question_file, images, Path(tmp) / "one", 1)
        many_s, many_rate, many_answers = answers_per_second(
            generator, question_file, images, Path(tmp) / "batched", args.batch_size
        )
        same = sum(a == b for a, b in zip(one_answers, many_answers))
        ratio = many_rate / one_rate
        print(f"batch size {1:>3}: {one_s:7.2f} s, {one_rate:8.2f} answers/s")
        print(f"batch size {args.batch_size:>3}: {many_s:7.2f} s, {many_rate:8.2f} answers/s")
        print(f"speed-up: {ratio:.2f}x; batched answers identical to one-at-a-time: {same}/{len(one_answers)}")
        if args.json:
            print(json.dumps({
                "device": card, "model": model_desc, "questions": args.questions,
                "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                "answers_per_s_batch_1": one_rate, "answers_per_s_batched": many_rate, "speedup": ratio,
                "identical_answers": same,
            }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Answers per second: our batched inference_visatb.py against lmms-eval's llava_hf class on the export.

    bash scripts_visatb/setup_ecosystem_env.sh     # once: .venv-ecosystem (transformers 5.x, lmms-eval)
    python benchmarks/bench_lmms_eval.py [--questions 48] [--batch-size 8] [--max-new-tokens 8]

One small random LLaVA (the tests' tiny shapes with 64 image tokens, output rows of byte pieces zeroed so that
answers are text both tokenizers decode alike) answers one question file twice: with
`inference_visatb.py --batch-size B` in our pinned environment, and with `python -m lmms_eval eval --model
llava_hf` on its `convert_to_hf` export in .venv-ecosystem (transformers 5.x; that class answers one
question at a time). Both are timed end to end as a user runs them (start-up and model load included), with
the same threads; the answers are compared. Prints both rates and their ratio.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("llava") is None:  # not pip-installed: use this checkout
    sys.path.append(str(REPO))

from llava.eval.lmms_eval_task import write_task  # noqa: E402
from llava.model.convert_to_hf import convert  # noqa: E402
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM  # noqa: E402
from llava.model.tiny import TinyConfig, build_tiny_llava  # noqa: E402

MODEL = TinyConfig(image_size=64, patch_size=8, vision_hidden_size=64, vision_intermediate_size=128)
QUESTIONS = ["What is in the image?", "Describe the image in detail.", "What colour is the shape?",
             "Where is the shape?", "Is there a circle in the picture?"]  # fmt: skip


def build_model(folder: Path) -> Path:
    """The tiny checkpoint with larger random weights (varied answers), never answering with byte pieces."""
    checkpoint = Path(build_tiny_llava(folder, cfg=MODEL)["full"])
    model = LlavaLlamaForCausalLM.from_pretrained(checkpoint)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
        eos = model.lm_head.weight[2].clone()
        model.lm_head.weight[:259] = 0
        model.lm_head.weight[2] = eos
    model.save_pretrained(checkpoint)
    return checkpoint


def make_records(n: int, folder: Path) -> tuple[Path, Path]:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        image = Image.new("RGB", (64 + 9 * (i % 4), 64 - 5 * (i % 3)), (40 * (i % 6), 255 - 30 * (i % 8), 90))
        image.paste((250, 250, 250), (3 + i % 20, 4, 20 + i % 30, 18))
        image.save(images / f"{i}.png")
        records.append({"id": f"q{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{QUESTIONS[i % len(QUESTIONS)]}"}, {"from": "gpt", "value": "x"}]})
    question_file = folder / "BenchQA_val.json"
    question_file.write_text(json.dumps(records))
    return question_file, images


def timed(command: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or "Error during evaluation" in proc.stderr:
        sys.exit(f"failed: {' '.join(command)}\n{proc.stderr[-4000:]}")
    return elapsed, proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8, help="inference_visatb.py's batch size")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of both runs")
    args = parser.parse_args(argv)
    setup = subprocess.run(["bash", str(REPO / "scripts_visatb/setup_ecosystem_env.sh")], capture_output=True,
                           text=True)  # fmt: skip
    if setup.returncode != 0:
        sys.exit(f"scripts_visatb/setup_ecosystem_env.sh failed:\n{setup.stderr[-3000:]}")
    ecosystem_python = setup.stdout.strip().splitlines()[-1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}  # fmt: skip

    work = Path(tempfile.mkdtemp(prefix="bench_lmms_eval_"))
    try:
        checkpoint = build_model(work / "model")
        export = work / "llava-tiny-hf"
        convert(checkpoint, export)
        question_file, images = make_records(args.questions, work / "data")

        ours_s, _ = timed([sys.executable, "inference_visatb.py", "--model-path", str(checkpoint), "--image-folder",
                           str(images), "--question-file", str(question_file), "--answers-folder", str(work / "ans"),
                           "--batch-size", str(args.batch_size), "--max_new_tokens", str(args.max_new_tokens),
                           "--device", "cpu", "--quiet"], env)  # fmt: skip
        outputs = [json.loads(f.read_text()) for f in sorted((work / "ans").glob("*.json"))]
        ours = next(o for o in outputs if isinstance(o, list))
        our_answers = [r["conversations"][1]["generative_value"] for r in ours]

        tasks = work / "tasks"
        write_task(tasks, "visatb_bench", question_file, images, args.max_new_tokens)
        lmms_s, _ = timed([ecosystem_python, "-m", "lmms_eval", "eval", "--model", "llava_hf", "--model_args",
                           f"pretrained={export},device=cpu,device_map=cpu,dtype=float32", "--tasks", "visatb_bench",
                           "--include_path", str(tasks), "--batch_size", "1", "--output_path", str(work / "lmms"),
                           "--log_samples"], env)  # fmt: skip
        (samples_file,) = (work / "lmms").rglob("*_samples_visatb_bench.jsonl")
        samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
        their_answers = [(s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"]).strip()
                         for s in samples]  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = args.questions
    same = sum(a == b for a, b in zip(our_answers, their_answers))
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS={args.threads}; torch {torch.__version__}")  # fmt: skip
    print(f"{n} questions, max {args.max_new_tokens} new tokens, end to end (start-up and model load included)")
    print(f"  inference_visatb.py --batch-size {args.batch_size}: {ours_s:6.1f} s  {n / ours_s:6.2f} answers/s")
    print(f"  lmms-eval llava_hf (export, batch 1):   {lmms_s:6.1f} s  {n / lmms_s:6.2f} answers/s")
    print(f"  ratio (ours / lmms-eval): {lmms_s / ours_s:.2f}x; equal answers: {same}/{n}")
    return 0 if same == n else 1


if __name__ == "__main__":
    sys.exit(main())

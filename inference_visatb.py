"""Answer VisATB validation question files with a model: batched, shardable, resumable.

    python inference_visatb.py --model-path checkpoints/llava-v1.5-7b-mini --image-folder data/images \
        --question-file data/GQA_val-1k.json --answers-folder answers [--batch-size 8]
    # several validation sets with one model load (--max_new_tokens: one value, or one per file):
    python inference_visatb.py ... --question-file data/GQA_val-1k.json data/RefCOCO-bbox_val-1k.json \
        --max_new_tokens 16 64
    # shards: run --num-chunks 4 --chunk-idx 0..3 (e.g. one per GPU); the last one to finish merges,
    # or merge explicitly with --num-chunks 4 --merge

Answers go to `{answers-folder}/{question-name}_{model-name}.json` (underscores turned into hyphens),
the question records with conversations[1].generative_value and generator added. Every flag is also
accepted in its underscore spelling (--model_path, --question_file, ...).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

try:  # torch and transformers take seconds to import: a Ctrl-C then gets one line, not a traceback
    from llava.answers import provenance
    from llava.answers.engine import DEFAULT_BATCH_SIZE
    from llava.answers.validation_answers import (
        DEFAULT_SAVE_EVERY,
        InferenceInterrupted,
        InferenceJob,
        format_report,
        merge_chunks,
        question_name,
        run_inference,
    )
    from llava.generation import LlavaGenerator
    from llava.mm_utils import get_model_name_from_path
    from llava.visatb.defaults import DEFAULT_MAX_NEW_TOKENS
except KeyboardInterrupt:
    print("interrupted while starting (importing torch): nothing was read or answered", file=sys.stderr)
    raise SystemExit(130) from None

INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C (128 + SIGINT)
TERMINATED = 143  # ... and by SIGTERM (128 + 15)


def _add(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """Register `--a-b` and `--a_b` as one option."""
    spellings = dict.fromkeys([f"--{name}", f"--{name.replace('_', '-')}", f"--{name.replace('-', '_')}"])
    parser.add_argument(*spellings, dest=name.replace("-", "_"), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Answer a question file (JSON list of LLaVA-format records) with a LLaVA model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add(parser, "model-path", required=True, help="checkpoint folder or hub name")
    _add(parser, "model-base", default=None, help="base model for LoRA / projector-only checkpoints")
    _add(parser, "image-folder", default=None, help="folder the records' 'image' paths are relative to")
    _add(parser, "question-file", required=True, nargs="+",
         help="JSON list(s) of records with conversations [human, gpt]; several files share one model load")
    _add(parser, "answers-folder", required=True, help="where answer files go (chunk files in its tmp/)")
    _add(parser, "conv-mode", default="vicuna_v1", help="conversation template")
    _add(parser, "num-chunks", type=int, default=1, help="split the questions into this many balanced chunks")
    _add(parser, "chunk-idx", type=int, default=0, help="which chunk this process answers (0-based)")
    _add(parser, "temperature", type=float, default=0.0, help="0 means greedy decoding")
    _add(parser, "top_p", type=float, default=None, help="nucleus sampling (with temperature > 0)")
    _add(parser, "num_beams", type=int, default=1)
    _add(parser, "max_new_tokens", type=int, nargs="+", default=[DEFAULT_MAX_NEW_TOKENS],
         help="generation limit: one value for every question file, or one per question file")
    _add(parser, "batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="questions per generate call (left-padded)")
    _add(parser, "save-every", type=int, default=DEFAULT_SAVE_EVERY, help="save progress every N batches")
    _add(parser, "merge", action="store_true", help="only join the chunk files of --num-chunks into the answer file")
    _add(parser, "overwrite", action="store_true", help="recompute even if the answer file exists")
    _add(parser, "skip-missing-images", action="store_true", help="skip (and list) records whose image is missing")
    _add(parser, "device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda if available)")
    _add(parser, "quiet", action="store_true", help="no progress bar")
    return parser


def _looks_local(path: str) -> bool:
    """A path, not a hub name (`org/name`): absolute, relative with ./ or ../, or more than one folder deep."""
    return os.path.isabs(path) or path.startswith(".") or path.count("/") > 1


def _flag_problem(args: argparse.Namespace, model_path: str, limits: list[int]) -> str | None:
    """What is wrong with the flags, found before any model is loaded (None when nothing is)."""
    if args.temperature < 0 or args.temperature != args.temperature:
        return f"--temperature must be >= 0, got {args.temperature}"
    if args.top_p is not None and not 0 < args.top_p <= 1:
        return f"--top_p must be in (0, 1], got {args.top_p}"
    if args.num_beams < 1:
        return f"--num_beams must be >= 1, got {args.num_beams}"
    if any(limit < 1 for limit in limits):
        return f"--max_new_tokens must be >= 1, got {' '.join(map(str, limits))}"
    if not args.merge and _looks_local(model_path) and not os.path.exists(model_path):
        return f"--model-path: model folder {model_path}: no such folder"
    if args.model_base and _looks_local(args.model_base) and not os.path.exists(os.path.expanduser(args.model_base)):
        return f"--model-base: model folder {args.model_base}: no such folder"
    return None


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, `kill`), handled as Ctrl-C so that finished answers are saved."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    """Run the command; SIGTERM is handled like Ctrl-C while it runs (exit code 143 instead of 130)."""
    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = _main(argv)
    except _Terminated:  # outside the answering loop (argument checks): nothing to keep
        code = TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)
    return code


def _stop_code(error: KeyboardInterrupt) -> int:
    return TERMINATED if isinstance(error, _Terminated) or isinstance(error.__context__, _Terminated) else INTERRUPTED


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model_path = os.path.expanduser(args.model_path)
    model_name = get_model_name_from_path(model_path)
    question_files = [os.path.expanduser(f) for f in args.question_file]
    limits = args.max_new_tokens
    if len(limits) not in (1, len(question_files)):
        print(f"error: --max_new_tokens takes one value or one per question file ({len(question_files)}), "
              f"got {len(limits)}", file=sys.stderr)  # fmt: skip
        return 2
    limits = limits * len(question_files) if len(limits) == 1 else limits
    problem = _flag_problem(args, model_path, limits)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    loaded: list[LlavaGenerator] = []
    identity = provenance.model_identity(
        model_name, model_path, args.model_base and os.path.expanduser(args.model_base)
    ) if not args.merge else None  # fmt: skip

    def generator_loader(max_new_tokens: int):
        # The model loads once, on the first file that has questions left; later files reuse it.
        def load_generator() -> LlavaGenerator:
            if not loaded:
                loaded.append(LlavaGenerator.from_pretrained(
                    model_path, args.model_base, conv_mode=args.conv_mode, device=args.device,
                    temperature=args.temperature, top_p=args.top_p, num_beams=args.num_beams,
                    max_new_tokens=max_new_tokens,
                ))  # fmt: skip
                # One device per process; the chain's cost accounting reads this line from the log.
                print(f"[inference] {model_name} loaded on {loaded[0].model.device}", flush=True)
            loaded[0].max_new_tokens = max_new_tokens
            return loaded[0]

        return load_generator

    failed = []
    for question_file, max_new_tokens in zip(question_files, limits):
        try:
            if args.merge:
                report = merge_chunks(
                    question_file, args.answers_folder, model_name, args.num_chunks, overwrite=args.overwrite
                )
            else:
                job = InferenceJob(
                    question_file=question_file,
                    answers_folder=os.path.expanduser(args.answers_folder),
                    model_name=model_name,
                    image_folder=args.image_folder and os.path.expanduser(args.image_folder),
                    num_chunks=args.num_chunks,
                    chunk_idx=args.chunk_idx,
                    batch_size=args.batch_size,
                    save_every=args.save_every,
                    overwrite=args.overwrite,
                    skip_missing_images=args.skip_missing_images,
                    progress=not args.quiet,
                    model_identity=identity,
                    settings={"conv_mode": args.conv_mode, "temperature": args.temperature, "top_p": args.top_p,
                              "num_beams": args.num_beams, "max_new_tokens": max_new_tokens},
                )
                print(f"Start inference of {question_name(question_file)} using {model_name}", flush=True)
                report = run_inference(job, generator_loader(max_new_tokens))
        except InferenceInterrupted as e:
            print(e.message(), file=sys.stderr)
            return _stop_code(e)
        except KeyboardInterrupt as e:  # while loading the model or reading the files: no new answer yet
            print(f"interrupted before a new answer for {question_file}; answers saved by an earlier run are "
                  "kept; rerun to resume", file=sys.stderr)  # fmt: skip
            return _stop_code(e)
        except (OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            failed.append(question_file)
            continue
        print(format_report(report), flush=True)
    if failed and len(question_files) > 1:
        print(f"error: {len(failed)} of {len(question_files)} question file(s) failed: {', '.join(failed)}",
              file=sys.stderr)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Tokenising training records (`llava.train.data.preprocess`, the v1 template LLaVA-1.5 fine-tunes with) with
`tokenizer_image_token`'s chunk memo switched off (the baseline) and on.

    python benchmarks/bench_tokenize.py                 # the toy benchmark's records, scale 0.05
    python benchmarks/bench_tokenize.py --scale 0.2

The tokenizer is the toy's (a SentencePiece model trained on the benchmark's text, loaded as transformers'
Python LlamaTokenizer, as LLaVA loads Vicuna's with use_fast=False). Both passes run in this process on the
same records, the baseline first; every record's ids and labels must come out equal. The ratio is memo time
/ baseline time (lower is faster).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

if importlib.util.find_spec("llava") is None:  # not pip-installed: use this checkout
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from llava import mm_utils  # noqa: E402
from llava.conversation import conv_templates  # noqa: E402
from llava.model.tiny import TinyConfig, build_base_lm  # noqa: E402
from llava.train.data import preprocess, preprocess_multimodal  # noqa: E402
from llava.utils import load_json  # noqa: E402
from llava.visatb.toy import benchmark as toy  # noqa: E402


def tokenise_all(records, tokenizer, conv) -> tuple[float, list]:
    start = time.perf_counter()
    out = []
    for record in records:
        has_image = "image" in record
        sources = [copy.deepcopy(record["conversations"])]  # as the dataset does
        if has_image:
            sources = preprocess_multimodal(sources, True, False)
        data = preprocess(sources, tokenizer, conv, has_image=has_image)
        out.append((data["input_ids"][0].tolist(), data["labels"][0].tolist()))
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05)
    args = parser.parse_args()

    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        manifest = toy.generate_toy_benchmark(Path(tmp) / "toy", seed=0, scale=args.scale, image_size=48)
        records = load_json(Path(tmp) / "toy" / manifest["train_file"])
        base = build_base_lm(Path(tmp) / "base", TinyConfig(vocab_size=1000), texts=toy.toy_corpus(Path(tmp) / "toy"))
        tokenizer = LlamaTokenizer.from_pretrained(base)
    conv = conv_templates["v1"]
    memo = mm_utils._chunk_ids

    def no_memo(tok, chunk):
        return list(tok(chunk).input_ids)

    mm_utils._chunk_ids = no_memo
    baseline, expected = tokenise_all(records, tokenizer, conv)
    mm_utils._chunk_ids = memo
    cached, got = tokenise_all(records, tokenizer, conv)
    if got != expected:
        sys.exit("error: the memo changed some record's ids or labels")
    print(f"{len(records)} records (toy benchmark, scale {args.scale}), v1 template, Python LlamaTokenizer")
    print(f"baseline (no memo): {1000 * baseline / len(records):.3f} ms per record")
    print(f"chunk memo:         {1000 * cached / len(records):.3f} ms per record")
    print(f"ratio memo / baseline: {cached / baseline:.3f}")


if __name__ == "__main__":
    main()

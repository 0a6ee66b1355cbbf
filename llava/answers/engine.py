"""The one answer engine: a chunk of questions, answered batch by batch while the next batch is prepared.

Both answer-file formats drive it: LLaVA's benchmark answers (`benchmark_answers`: jsonl, appended after
every batch, for llava/eval's model_vqa* modules) and VisATB's validation answers (`validation_answers`:
a JSON list, saved as a progress file, for inference_visatb.py). The engine owns what they share: which
questions a chunk holds, the progress bar, and the loop in which one worker thread loads the images and
prepares batch k+1 while the model generates batch k. What each format writes, how it resumes a killed run
and how it merges chunks is its own, since the files differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from tqdm import tqdm

from llava.utils import chunk_bounds

B = TypeVar("B")
P = TypeVar("P")
T = TypeVar("T")

DEFAULT_BATCH_SIZE = 8


def split_chunks(items: Sequence[T], n: int, k: int) -> list[T]:
    """Chunk `k` of `n` balanced chunks of `items` (sizes differ by at most one; 9 items, 4 chunks: 3,2,2,2)."""
    start, end = chunk_bounds(len(items), n, k)
    return list(items[start:end])


def batches_of(items: Sequence[T], batch_size: int) -> list[Sequence[T]]:
    """`items` cut into consecutive batches of `batch_size` (the last one may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, got {batch_size}")
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


def progress_bar(total: int, done: int, desc: str, enabled: bool = True) -> tqdm:
    """The bar both formats show: questions of this chunk, starting at those answered before."""
    return tqdm(total=total, initial=done, desc=desc, unit="question", disable=not enabled)


def answer_batches(
    batches: Sequence[B],
    prepare: Callable[[B], P],
    generate: Callable[[P], list[str]],
    handle: Callable[[P, list[str]], None],
) -> None:
    """For each batch in order: `prepare` it (images, tokens), `generate` its answers, `handle` them.

    `prepare` runs in one worker thread, a batch ahead of generation, so the images of batch k+1 load while
    the model answers batch k. An error in preparing a batch surfaces after the batch before it is handled.
    """
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead: Future | None = pool.submit(prepare, batches[0])
        for position in range(len(batches)):
            prepared = ahead.result()
            ahead = pool.submit(prepare, batches[position + 1]) if position + 1 < len(batches) else None
            handle(prepared, generate(prepared))

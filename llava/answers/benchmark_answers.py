"""LLaVA's benchmark answer files: chunk, resume, answer through the engine, append; merge the chunks.

Each llava/eval module (`model_vqa_loader`, `model_vqa`, `model_vqa_science`, `model_vqa_mmbench`) only says
how to read its question file and turn a question into `EvalItem`s; this module answers them with the answer
engine (`llava.answers.engine`) and writes LLaVA's answer jsonl (`question_id`, [`round_id`], `prompt`,
`text`, [extra fields], `answer_id`, `model_id`, `metadata`). Answers are appended and flushed after every
batch, so a killed run continues where it stopped: answers already in the file are skipped (an unfinished
last line is dropped and redone). The per-process chunks `{answers_dir}/{num_chunks}_{idx}.jsonl` merge
into one file in question order (`merge_chunks`, the logic of `python -m llava.eval.merge_chunks`).
"""

from __future__ import annotations

import argparse
import binascii
import json
import os
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from llava.answers import provenance
from llava.answers.engine import DEFAULT_BATCH_SIZE, answer_batches, batches_of, progress_bar
from llava.answers.jsonio import load_question_ids, read_jsonl_lines
from llava.generation import LlavaGenerator, PreparedBatch
from llava.mm_utils import get_model_name_from_path, load_image, load_image_from_base64
from llava.utils import answer_key, atomic_write_text, chunk_bounds, refuse_same_file

Q = TypeVar("Q")

# shortuuid's alphabet: LLaVA's answer ids are 22 characters of it.
_ID_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_ID_LENGTH = 22


def new_answer_id() -> str:
    """A random 22-character id in shortuuid's alphabet (what LLaVA writes as `answer_id`)."""
    number, chars = uuid.uuid4().int, []
    while number:
        number, digit = divmod(number, len(_ID_ALPHABET))
        chars.append(_ID_ALPHABET[digit])
    return "".join(reversed(chars)).rjust(_ID_LENGTH, _ID_ALPHABET[0])


@dataclass(frozen=True)
class EvalItem:
    """One question to answer: what the model is asked, what the answer record shows, and the image."""

    question_id: Any
    question: str  # for `LlavaGenerator.build_prompt`: `<image>` is (re)inserted as the model expects
    prompt: str  # the record's `prompt` field (the scorers match TextVQA/MME answers by it)
    source: str  # names the record in errors, e.g. "q.jsonl: question 3 (question_id 7)"
    image_file: str | None = None
    image_base64: str | None = None
    round_id: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more fields of the answer record (MMBench options)

    @property
    def key(self) -> tuple[str, int]:
        return str(self.question_id), self.round_id or 0

    @property
    def has_image(self) -> bool:
        return self.image_file is not None or self.image_base64 is not None


def load_item_image(item: EvalItem) -> Image.Image | None:
    """The item's image as RGB (None when text-only); a missing or broken image names the file and the record."""
    if item.image_file is not None:
        try:
            # Upstream's benchmark scripts do not turn images by their EXIF orientation; neither do these.
            return load_image(item.image_file, exif_orientation=False)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{item.source}: {e}") from e
        except ValueError as e:
            raise ValueError(f"{item.source}: {e}") from e
    if item.image_base64 is not None:
        try:
            return load_image_from_base64(item.image_base64)
        except (binascii.Error, ValueError, OSError) as e:
            raise ValueError(f"{item.source}: cannot decode its base64 image: {e}") from e
    return None


def answer_record(item: EvalItem, text: str, model_id: str) -> dict[str, Any]:
    """LLaVA's answer record for one item, fields in LLaVA's order."""
    record: dict[str, Any] = {"question_id": item.question_id}
    if item.round_id is not None:
        record["round_id"] = item.round_id
    record.update(prompt=item.prompt, text=text, **item.extra)
    record.update(answer_id=new_answer_id(), model_id=model_id, metadata={})
    return record


def resume_answers(answers_file: str | os.PathLike, items: Sequence[EvalItem], model_id: str) -> Counter:
    """How many answers per key the file already holds, after dropping an unfinished last line from it.

    Every answer must belong to `items` (same questions, same chunk) and to model `model_id`.
    """
    path = Path(answers_file)
    if not path.is_file():
        return Counter()
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) != len(data):
        # The writer died mid-line: cut the partial line off so that its question is answered again.
        with open(path, "r+b") as f:
            f.truncate(len(complete))
    expected = Counter(item.key for item in items)
    done: Counter = Counter()
    hint = "delete it to start over"
    for lineno, line in enumerate(complete.decode("utf-8").split("\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {lineno} is not valid JSON ({e.msg}); {hint}") from e
        if not isinstance(record, dict) or "question_id" not in record or "text" not in record:
            raise ValueError(f"{path}: line {lineno} is not an answer record with question_id and text; {hint}")
        key = answer_key(record)
        done[key] += 1
        if done[key] > expected[key]:
            round_note = f" (round {key[1]})" if key[1] else ""
            raise ValueError(
                f"{path}: line {lineno} answers question_id {key[0]!r}{round_note}, which this run's questions "
                f"do not ask (again): was the file written for other questions or chunks? {hint}"
            )
        if record.get("model_id", model_id) != model_id:
            raise ValueError(
                f"{path}: line {lineno} was written by model {record['model_id']!r}, this run's model is "
                f"{model_id!r}; {hint}"
            )
    return done


def pending_items(items: Sequence[EvalItem], done: Counter) -> list[EvalItem]:
    """The items still to answer: for each key, the first `done[key]` occurrences are already answered."""
    left = Counter(done)
    pending = []
    for item in items:
        if left[item.key] > 0:
            left[item.key] -= 1
        else:
            pending.append(item)
    return pending


def check_image_files(items: Sequence[EvalItem]) -> None:
    """Fail before loading the model if an image file is missing, naming the first and counting them all."""
    missing = [item for item in items if item.image_file is not None and not os.path.isfile(item.image_file)]
    if missing:
        raise FileNotFoundError(
            f"image file not found: {missing[0].image_file} ({missing[0].source}); {len(missing)} of "
            f"{len(items)} images to answer are missing: check --image-folder"
        )


@dataclass
class GenerationReport:
    """What one run did: where the answers are, how many it answered and how many were there before."""

    answers_file: Path
    total: int
    answered: int
    resumed: int

    def summary(self) -> str:
        before = f", {self.resumed} answered before" if self.resumed else ""
        return f"{self.answers_file}: {self.answered} answered{before}, {self.total} in all"


def _prepare(generator: LlavaGenerator, batch: Sequence[EvalItem]) -> tuple[Sequence[EvalItem], PreparedBatch]:
    images = [load_item_image(item) for item in batch]
    return batch, generator.prepare([item.question for item in batch], images)


def answer_items(
    items: Sequence[EvalItem],
    answers_file: str | os.PathLike,
    load_generator: Callable[[], LlavaGenerator],
    model_id: str,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    origin: dict[str, Any] | None = None,
) -> GenerationReport:
    """Answer `items` into `answers_file` in batches, continuing a killed run; the model is loaded only if needed.

    `origin` (see `llava.answers.provenance`) is recorded beside the file; answers already in the file are only
    continued when their recorded origin is the same. One worker thread loads images and prepares the next
    batch while the model answers the current one.
    """
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, got {batch_size}")
    path = Path(answers_file)
    done = resume_answers(path, items, model_id)
    if origin is not None and sum(done.values()):
        _check_origin(path, origin)
    pending = pending_items(items, done)
    report = GenerationReport(path, total=len(items), answered=0, resumed=len(items) - len(pending))
    check_image_files(pending)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()  # an empty chunk still leaves its (empty) file for the merge
    if origin is not None:
        provenance.write_provenance(path, origin)
    if not pending:
        return report

    generator = load_generator()
    batches = batches_of(pending, batch_size)
    bar = progress_bar(len(items), report.resumed, path.name, progress)
    with bar, open(path, "a", encoding="utf-8") as out:

        def append(prepared: tuple[Sequence[EvalItem], PreparedBatch], texts: list[str]) -> None:
            batch = prepared[0]
            records = [answer_record(item, text, model_id) for item, text in zip(batch, texts, strict=True)]
            out.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
            out.flush()
            report.answered += len(batch)
            bar.update(len(batch))

        answer_batches(batches, lambda batch: _prepare(generator, batch),
                       lambda prepared: generator.generate_prepared(prepared[1]), append)  # fmt: skip
    if origin is not None:
        provenance.write_provenance(path, origin)  # with the hash of the finished file
    return report


def _check_origin(path: Path, origin: dict[str, Any]) -> None:
    """Answers in `path` may only be continued by a run with the same questions, model and settings."""
    record = provenance.read_provenance(path)
    reasons = provenance.differences(record, origin) if record is not None else [
        f"it has no provenance record ({provenance.provenance_path(path).name})"]  # fmt: skip
    if reasons:
        raise ValueError(f"{path} was written with other inputs: {'; '.join(reasons)}; delete it to start over")


def benchmark_origin(args: argparse.Namespace, items: Sequence[EvalItem], start: int, stop: int,
                     model_id: str) -> dict[str, Any]:  # fmt: skip
    """The provenance of one benchmark run's answers: question file and ids, model files, generation settings."""
    keys = [f"{key[0]}/{key[1]}" for key in (item.key for item in items)]
    questions = provenance.question_identity(args.question_file, keys, 0, len(keys))
    questions["range"] = [start, stop]
    model_path = os.path.expanduser(args.model_path)
    identity = provenance.model_identity(model_id, model_path, args.model_base and os.path.expanduser(args.model_base))
    settings = {"conv_mode": args.conv_mode, "temperature": args.temperature, "top_p": args.top_p,
                "num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}  # fmt: skip
    return provenance.make_provenance(questions, identity, settings, args.image_folder or None)


# ---------------------------------------------------------------- the command line the modules share


def _flag(parser: argparse.ArgumentParser, name: str, **kwargs) -> None:
    """A flag under LLaVA's spelling and its other one (`--top_p` and `--top-p`, `--model-path` and `--model_path`)."""
    other = "--" + (name[2:].replace("-", "_") if "-" in name[2:] else name[2:].replace("_", "-"))
    spellings = [name] if other == name else [name, other]
    parser.add_argument(*spellings, dest=name[2:].replace("-", "_"), **kwargs)


def generation_parser(
    description: str, *, conv_mode: str = "llava_v1", temperature: float = 0.2, max_new_tokens: int = 128
) -> argparse.ArgumentParser:
    """LLaVA's generation flags (with upstream's defaults for the module), plus `--batch-size` and `--device`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    _flag(parser, "--model-path", required=True, help="checkpoint folder or hub name")
    _flag(parser, "--model-base", default=None, help="base LLM of a LoRA / projector-only checkpoint")
    _flag(parser, "--image-folder", default="", help="folder the questions' image paths are relative to")
    _flag(parser, "--question-file", required=True)
    _flag(parser, "--answers-file", required=True, help="answers jsonl (appended to: a rerun continues it)")
    _flag(parser, "--conv-mode", default=conv_mode, help=f"conversation template (default {conv_mode})")
    _flag(parser, "--num-chunks", type=int, default=1, help="split the questions into this many chunks")
    _flag(parser, "--chunk-idx", type=int, default=0, help="which chunk this process answers (0-based)")
    _flag(parser, "--temperature", type=float, default=temperature, help=f"0 is greedy (default {temperature})")
    _flag(parser, "--top_p", type=float, default=None)
    _flag(parser, "--num_beams", type=int, default=1)
    _flag(parser, "--max_new_tokens", type=int, default=max_new_tokens, help=f"(default {max_new_tokens})")
    _flag(parser, "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"questions per batch (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu, ... (default: cuda if available)")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the shared flags (a bad value exits with status 2 and the parser's usage)."""
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        chunk_bounds(0, args.num_chunks, args.chunk_idx)
    except ValueError as e:
        parser.error(f"--num-chunks {args.num_chunks} --chunk-idx {args.chunk_idx}: {e}")
    return args


def run_benchmark(
    args: argparse.Namespace,
    load_questions: Callable[[str], Sequence[Q]],
    to_items: Callable[[Q, int], list[EvalItem]],
    progress: bool = True,
) -> GenerationReport:
    """Answer this process's chunk of the question file: `to_items(question, position)` gives its item(s)."""
    questions = load_questions(args.question_file)
    start, stop = chunk_bounds(len(questions), args.num_chunks, args.chunk_idx)
    items = [item for position in range(start, stop) for item in to_items(questions[position], position)]

    def load_generator() -> LlavaGenerator:
        return LlavaGenerator.from_pretrained(
            os.path.expanduser(args.model_path), args.model_base, conv_mode=args.conv_mode, device=args.device,
            temperature=args.temperature, top_p=args.top_p, num_beams=args.num_beams,
            max_new_tokens=args.max_new_tokens, verbose=False,
        )  # fmt: skip

    model_id = get_model_name_from_path(os.path.expanduser(args.model_path))
    origin = benchmark_origin(args, items, start, stop, model_id)
    return answer_items(items, args.answers_file, load_generator, model_id, args.batch_size, progress, origin)


def main_with(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    load_questions: Callable[[str], Sequence[Q]],
    to_items: Callable[[argparse.Namespace], Callable[[Q, int], list[EvalItem]]],
) -> int:
    """A module's `main`: parse, answer, print a summary line; a bad input is one `error: ...` line and status 1."""
    args = parse_args(parser, argv)
    try:
        report = run_benchmark(args, load_questions, to_items(args))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


# ---------------------------------------------------------------- merging the per-process chunks


def chunk_path(answers_dir: str | os.PathLike, num_chunks: int, chunk_idx: int) -> Path:
    """Where generation writes chunk `chunk_idx` of `num_chunks`."""
    return Path(answers_dir) / f"{num_chunks}_{chunk_idx}.jsonl"


def _examples(ids: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def merge_chunks(
    question_file: str | os.PathLike,
    answers_dir: str | os.PathLike,
    num_chunks: int,
    output_file: str | os.PathLike | None = None,
) -> list[dict[str, Any]]:
    """Merge the chunk files in question order, checking that every question is answered exactly once."""
    if num_chunks < 1:
        raise ValueError(f"--num-chunks must be at least 1, got {num_chunks}")
    if output_file is not None:
        chunks = {f"chunk {k}": chunk_path(answers_dir, num_chunks, k) for k in range(num_chunks)}
        refuse_same_file(output_file, {"--question-file": question_file, **chunks}, "--output-file")
    question_ids = load_question_ids(question_file)
    expected = Counter(question_ids)
    first_position: dict[str, int] = {}
    for pos, qid in enumerate(question_ids):
        first_position.setdefault(qid, pos)

    entries: list[tuple[str, dict[str, Any]]] = []
    seen_in: dict[tuple[str, int], list[str]] = defaultdict(list)
    for idx in range(num_chunks):
        path = chunk_path(answers_dir, num_chunks, idx)
        if not path.is_file():
            raise FileNotFoundError(f"chunk {idx} of {num_chunks} is missing: {path} (did its generation process fail?)")
        lines = read_jsonl_lines(path)
        start, stop = chunk_bounds(len(question_ids), num_chunks, idx)
        if not lines and stop > start:
            raise ValueError(f"chunk {idx} of {num_chunks} ({path}) is empty but should answer {stop - start} questions")
        for lineno, (line, record) in enumerate(lines, start=1):
            if "question_id" not in record:
                raise ValueError(f"{path}: answer {lineno} has no 'question_id' field")
            key = answer_key(record)
            if key[0] not in expected:
                raise ValueError(f"{path}: answer {lineno} has question_id {key[0]!r}, which is not in {question_file}")
            seen_in[key].append(path.name)
            entries.append((line, record))

    duplicated = [key for key, where in seen_in.items() if len(where) > expected[key[0]]]
    if duplicated:
        key = duplicated[0]
        raise ValueError(
            f"question_id {key[0]!r} (round {key[1]}) is answered {len(seen_in[key])} times "
            f"(in {', '.join(seen_in[key])}); {len(duplicated)} duplicated answer(s) in all"
        )
    missing = [qid for qid in expected if len(seen_in.get((qid, 0), ())) < expected[qid]]
    if missing:
        raise ValueError(
            f"{len(missing)} question(s) of {question_file} have no answer in the {num_chunks} chunk(s) "
            f"under {answers_dir}: {_examples(missing)}"
        )

    origin = _common_origin(question_file, answers_dir, num_chunks)
    # A stable sort keeps chunk order among answers to the same question (repeated ids, rounds).
    entries.sort(key=lambda entry: first_position[str(entry[1]["question_id"])])
    if output_file is not None:
        atomic_write_text(output_file, "".join(line + "\n" for line, _ in entries))
        if origin is not None:
            provenance.write_provenance(output_file, origin)
    return [record for _, record in entries]


def _common_origin(question_file: str | os.PathLike, answers_dir: str | os.PathLike, num_chunks: int) -> dict | None:
    """The chunks' shared provenance (model, settings, this question file); chunks that disagree are an error.

    Chunks without a record (written by an older version) are merged with a warning; then None is returned.
    """
    sha = provenance.file_sha256(question_file)
    first: dict[str, Any] | None = None
    for idx in range(num_chunks):
        path = chunk_path(answers_dir, num_chunks, idx)
        record = provenance.read_provenance(path)
        if record is None:
            print(f"warning: chunk {idx} of {num_chunks} ({path}) has no provenance record: which model and settings "
                  "made it cannot be checked", file=sys.stderr)  # fmt: skip
            return None
        if (record.get("questions") or {}).get("sha256") != sha:
            raise ValueError(f"chunk {idx} of {num_chunks} ({path}) answers another version of {question_file} (its "
                             "content changed since); regenerate that chunk")  # fmt: skip
        if first is None:
            first = record
            continue
        reasons = provenance.differences(first, {**record, "questions": first["questions"]})
        if reasons:
            raise ValueError(f"chunk {idx} of {num_chunks} ({path}) was made from other inputs than chunk 0: "
                             f"{'; '.join(reasons)}; regenerate it")  # fmt: skip
    if first is None:
        return None
    whole = {**first["questions"], "range": None, "count": None, "ids_sha256": None}
    return provenance.make_provenance(whole, first["model"], first["generation"], first["image_folder"])

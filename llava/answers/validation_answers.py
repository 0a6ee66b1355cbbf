"""VisATB's validation answer files: a question file answered through the engine, chunked, resumable, merged.

Output naming follows the VisATB release: `{question-name}_{model-name}.json` in the answers folder, where
the question name is the file name up to `.json` and both parts have `_` turned into `-`; chunk `k` of `n`
is `tmp/{question-name}_{model-name}_{k}-{n}.json`. Work in progress is kept in `tmp/<name>.partial.json`
(rewritten atomically) and records skipped for a missing image in `tmp/<name>.skipped.json`; an answer
file only appears once it is complete. The batches are answered by `llava.answers.engine`.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llava.answers import provenance
from llava.answers.engine import DEFAULT_BATCH_SIZE, answer_batches, batches_of, progress_bar
from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.generation import LlavaGenerator, PreparedBatch, open_image
from llava.mm_utils import ImageTooLargeError
from llava.utils import atomic_write_json, chunk_bounds, load_json, load_json_or_lines, refuse_same_file

CHUNK_FOLDER = "tmp"
DEFAULT_SAVE_EVERY = 10


def question_name(question_file: str | os.PathLike) -> str:
    """The release's name of a question file: its file name up to the first `.json`."""
    return os.path.basename(os.fspath(question_file)).split(".json")[0]


def answers_file_name(question_file: str | os.PathLike, model_name: str, num_chunks: int = 1, chunk_idx: int = 0) -> str:
    """`{question-name}_{model-name}.json`, or `..._{k}-{n}.json` for a chunk; underscores become hyphens."""
    stem = f"{question_name(question_file).replace('_', '-')}_{model_name.replace('_', '-')}"
    if num_chunks == 1:
        return f"{stem}.json"
    chunk_bounds(0, num_chunks, chunk_idx)  # validates the pair
    return f"{stem}_{chunk_idx}-{num_chunks}.json"


def answers_path(
    answers_folder: str | os.PathLike, question_file: str | os.PathLike, model_name: str,
    num_chunks: int = 1, chunk_idx: int = 0,
) -> Path:  # fmt: skip
    """Where an answer file (the whole set, or one chunk in the `tmp/` subfolder) goes."""
    name = answers_file_name(question_file, model_name, num_chunks, chunk_idx)
    folder = Path(answers_folder) if num_chunks == 1 else Path(answers_folder) / CHUNK_FOLDER
    return folder / name


def progress_path(answers_folder: str | os.PathLike, answers_file: Path) -> Path:
    """The work-in-progress file of an answer file (whole set or chunk), in the `tmp/` subfolder."""
    return Path(answers_folder) / CHUNK_FOLDER / f"{answers_file.stem}.partial.json"


def skipped_path(answers_folder: str | os.PathLike, answers_file: Path) -> Path:
    """The list of records skipped for a missing or unreadable image, in the `tmp/` subfolder."""
    return Path(answers_folder) / CHUNK_FOLDER / f"{answers_file.stem}.skipped.json"


def _describe(index: int, record: Any) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"record {index}" + (f" (id {rid!r})" if rid is not None else "")


def load_questions(question_file: str | os.PathLike) -> list[dict]:
    """Read a question file and check the fields inference reads; each record id may appear once.

    The file is a JSON list of LLaVA-format records, or JSON Lines (one record per line, as LLaVA's own
    evaluation question files are written).
    """
    records = load_json_or_lines(question_file)
    if not isinstance(records, list):
        raise ValueError(f"{question_file}: expected a JSON list of records, found {type(records).__name__} "
                         "(JSON Lines, one record per line, is read too)")  # fmt: skip
    if not records:
        raise ValueError(f"{question_file}: the question file is empty (no records): nothing to answer")
    first_with_id: dict[str, int] = {}
    for index, record in enumerate(records):
        where = f"{question_file}: {_describe(index, record)}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object, found {type(record).__name__}")
        if record.get("id") is not None:
            key = str(record["id"])  # answers are matched by the id's text: 1 and "1" are one question
            if key in first_with_id:
                raise ValueError(
                    f"{where}: id {record['id']!r} is also record {first_with_id[key]}'s; each question must "
                    "appear once, or its answer is scored twice"
                )
            first_with_id[key] = index
        turns = record.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) for t in turns[:2]):
            raise ValueError(f"{where}: 'conversations' must be a list holding a human turn and a gpt reference turn")
        if not isinstance(turns[0].get("value"), str):
            raise ValueError(f"{where}: conversations[0]['value'] (the question) must be a string")
        image = record.get("image")
        if image is not None and (not isinstance(image, str) or not image):
            raise ValueError(f"{where}: 'image' must be a non-empty relative path string when present")
        markers = turns[0]["value"].count(DEFAULT_IMAGE_TOKEN)
        if markers and image is None:
            raise ValueError(
                f"{where}: the question has an {DEFAULT_IMAGE_TOKEN} marker but the record has no 'image' "
                "(missing or null): add the image, or drop the marker for a text-only question"
            )
        if markers > 1:
            raise ValueError(f"{where}: the question has {markers} {DEFAULT_IMAGE_TOKEN} markers; one image per "
                             "record is supported")  # fmt: skip
    return records


def _without_outputs(record: dict) -> dict:
    """The record as it was in the question file: the fields inference adds are dropped."""
    record = copy.deepcopy(record)
    record.pop("generator", None)
    turns = record.get("conversations")
    if isinstance(turns, list) and len(turns) > 1 and isinstance(turns[1], dict):
        turns[1].pop("generative_value", None)
    return record


def answered_record(question: dict, answer: str, model_name: str) -> dict:
    """The question record with the model's answer and the model's name added."""
    record = copy.deepcopy(question)
    record["conversations"][1]["generative_value"] = answer
    record["generator"] = model_name
    return record


def image_path(record: dict, image_folder: str | os.PathLike | None) -> str | None:
    image = record.get("image")
    if image is None:
        return None
    return os.path.join(os.fspath(image_folder or ""), image)


@dataclass
class InferenceJob:
    """One (question file, model, chunk) to answer, and how."""

    question_file: str
    answers_folder: str
    model_name: str
    image_folder: str | None = None
    num_chunks: int = 1
    chunk_idx: int = 0
    batch_size: int = DEFAULT_BATCH_SIZE
    save_every: int = DEFAULT_SAVE_EVERY
    overwrite: bool = False
    skip_missing_images: bool = False
    progress: bool = True
    # What identifies the model beyond its name (provenance.model_identity) and the generation settings
    # (LlavaGenerator.settings); with settings None the generator is loaded to learn them.
    model_identity: dict | None = None
    settings: dict | None = None

    def __post_init__(self) -> None:
        chunk_bounds(0, self.num_chunks, self.chunk_idx)
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.save_every < 1:
            raise ValueError(f"--save-every must be at least 1, got {self.save_every}")

    @property
    def answers_file(self) -> Path:
        return answers_path(self.answers_folder, self.question_file, self.model_name, self.num_chunks, self.chunk_idx)

    @property
    def final_file(self) -> Path:
        """The answer file of the whole question set (the merge target when chunked)."""
        return answers_path(self.answers_folder, self.question_file, self.model_name)


@dataclass
class InferenceReport:
    """What a run did: where the answers are, how many were produced, resumed or skipped."""

    answers_file: Path
    status: str  # "answered", "already complete" or "merged"
    total: int = 0
    answered: int = 0
    resumed: int = 0
    skipped: list[dict] = field(default_factory=list)
    skipped_file: Path | None = None
    merged_file: Path | None = None


def format_report(report: InferenceReport) -> str:
    """Lines for people (and greppable by scripts): what was written where."""
    if report.status == "already complete":
        return f"{report.answers_file} already exists and is complete; pass --overwrite to recompute it"
    if report.status == "merged":
        lines = [f"Merged chunks into {report.answers_file} ({report.answered} answers for {report.total} questions)"]
    else:
        resumed = f", continued after {report.resumed} done before" if report.resumed else ""
        lines = [f"Saved inference results to {report.answers_file} ({report.answered} answered{resumed})"]
    if report.skipped:
        lines.append(
            f"skipped {len(report.skipped)} records whose image is missing or unreadable; "
            f"listed in {report.skipped_file}"
        )
    if report.merged_file is not None:
        lines.append(f"all chunks are done: merged into {report.merged_file}")
    return "\n".join(lines)


def _skip_entry(index: int, record: dict, path: str, reason: str) -> dict:
    return {"index": index, "id": record.get("id"), "image": path, "reason": reason}


def _missing_images(questions: list[dict], start: int, image_folder: str | None) -> dict[int, str]:
    missing = {}
    for offset, record in enumerate(questions):
        path = image_path(record, image_folder)
        if path is not None and not os.path.isfile(path):
            missing[start + offset] = path
    return missing


def _resume_point(state: Any, path: Path, job: InferenceJob, chunk: list[dict], start: int, origin: dict) -> int:
    """Where a progress file stops; it is only continued for the same questions, chunk range and model."""
    hint = f"delete it or rerun with --overwrite to start over ({path})"
    end = start + len(chunk)
    if not isinstance(state, dict) or not {"answers", "skipped", "next", "settings"} <= set(state):
        raise ValueError(f"{path} is not a progress file of inference_visatb.py; {hint}")
    changed = provenance.differences(state.get("provenance"), origin)
    if changed:
        raise ValueError(f"progress file {path} was written with other inputs: {'; '.join(changed)}; {hint}")
    for key, value in {"model_name": job.model_name, "range": [start, end]}.items():
        if state.get(key) != value:
            raise ValueError(f"{path} was written with {key} {state.get(key)!r}, this run has {value!r}; {hint}")
    if not isinstance(state["next"], int) or not start <= state["next"] <= end:
        raise ValueError(f"{path}: 'next' must be a question index in [{start}, {end}]; {hint}")
    _check_records(state["answers"], state["skipped"], chunk[: state["next"] - start], start, str(path))
    return state["next"]


def _check_records(answers: Any, skipped: Any, questions: list[dict], start: int, source: str) -> None:
    """Answers plus skipped entries must account for `questions` exactly, in order."""
    if not isinstance(answers, list) or not isinstance(skipped, list):
        raise ValueError(f"{source}: expected a list of answer records")
    skipped_indices = {entry.get("index") for entry in skipped if isinstance(entry, dict)}
    expected = [(start + offset, q) for offset, q in enumerate(questions) if start + offset not in skipped_indices]
    if len(answers) != len(expected):
        raise ValueError(
            f"{source} is incomplete: {len(answers)} answers and {len(skipped_indices)} skipped records "
            f"for {len(questions)} questions"
        )
    for position, (answer, (index, question)) in enumerate(zip(answers, expected)):
        if not isinstance(answer, dict) or _without_outputs(answer) != _without_outputs(question):
            raise ValueError(
                f"{source}: answer {position} does not match question {_describe(index, question)} "
                "of the question file (was the question file changed?)"
            )


class InferenceInterrupted(KeyboardInterrupt):
    """Ctrl-C during answering: `kept` answers are saved in the progress file `path` (None: none are saved)."""

    def __init__(self, path: Path | None, kept: int, problem: str | None = None) -> None:
        super().__init__(path, kept)
        self.path, self.kept, self.problem = path, kept, problem

    def message(self) -> str:
        """The one line the command prints."""
        if self.problem:
            return f"interrupted: the progress could not be saved ({self.problem}); rerun to start again"
        if self.path is None or not self.kept:
            return "interrupted: no answers were finished yet, nothing kept"
        return f"interrupted: {self.kept} answers kept in {self.path}; rerun to resume"


class _Progress:
    """Answers and skips so far, saved atomically so that a killed run can continue where it stopped."""

    def __init__(self, path: Path, job: InferenceJob, settings: dict, start: int, end: int, origin: dict):
        self.path = path
        self.saved_answers = 0  # how many answers the file on disk holds
        self.state = {
            "question_file": os.fspath(job.question_file),
            "model_name": job.model_name,
            "range": [start, end],
            "settings": settings,
            "provenance": origin,
            "next": start,
            "answers": [],
            "skipped": [],
        }

    def save(self) -> None:
        atomic_write_json(self.path, self.state, indent=None)
        self.saved_answers = len(self.state["answers"])


@dataclass
class _Batch:
    """One batch of consecutive questions, with images loaded and tokens/pixels prepared."""

    indices: range
    kept: list[int]
    skipped: list[dict]
    prepared: PreparedBatch | None


def _prepare_batch(
    generator: LlavaGenerator, job: InferenceJob, questions: list[dict], indices: range, missing: dict[int, str]
) -> _Batch:
    """Load the batch's images (skipping missing/unreadable ones if asked) and prepare it for the model."""
    kept, skipped, texts, images = [], [], [], []
    for index in indices:
        record = questions[index]
        path = image_path(record, job.image_folder)
        if index in missing:
            skipped.append(_skip_entry(index, record, path, "missing"))
            continue
        image = None
        if path is not None:
            try:
                image = open_image(path)
            except ImageTooLargeError as e:
                raise ImageTooLargeError(f"{_describe(index, record)} of {job.question_file}: {e}") from e
            except (OSError, ValueError) as e:
                if not job.skip_missing_images:
                    raise ValueError(f"{_describe(index, record)} of {job.question_file}: {e}") from e
                skipped.append(_skip_entry(index, record, path, f"unreadable: {e}"))
                continue
        kept.append(index)
        texts.append(record["conversations"][0]["value"])
        images.append(image)
    return _Batch(indices, kept, skipped, generator.prepare(texts, images) if kept else None)


def _answer_all(
    generator: LlavaGenerator, job: InferenceJob, questions: list[dict], end: int, missing: dict[int, str],
    progress: _Progress, bar: tqdm,
) -> None:  # fmt: skip
    """Answer from `progress`'s next question to `end`, saving every `job.save_every` batches.

    The engine loads and preprocesses the next batch while the model answers the current one.
    """
    batches = batches_of(range(progress.state["next"], end), job.batch_size)
    since_save = [0]

    def keep(batch: _Batch, outputs: list[str]) -> None:
        progress.state["skipped"].extend(batch.skipped)
        for index, answer in zip(batch.kept, outputs, strict=True):
            progress.state["answers"].append(answered_record(questions[index], answer, job.model_name))
        progress.state["next"] = batch.indices.stop
        bar.update(len(batch.indices))
        since_save[0] += 1
        if since_save[0] >= job.save_every and batch.indices.stop < end:
            progress.save()
            since_save[0] = 0

    try:
        answer_batches(
            batches,
            lambda indices: _prepare_batch(generator, job, questions, indices, missing),
            lambda batch: generator.generate_prepared(batch.prepared) if batch.prepared is not None else [],
            keep,
        )
    except BaseException as error:
        # Keep what was finished (an error, Ctrl-C); a hard kill falls back to the last periodic save.
        problem = None
        if since_save[0]:
            try:
                progress.save()
            except OSError as save_error:  # e.g. the disk that just filled up: the first error is the news
                problem = str(save_error)
        if isinstance(error, KeyboardInterrupt):
            path = progress.path if progress.path.is_file() else None
            raise InferenceInterrupted(path, progress.saved_answers, problem) from None
        if problem and not isinstance(error, OSError):
            print(f"warning: {problem}; the answers since the last save are lost", file=sys.stderr)
        raise


def _all_chunks_done(job: InferenceJob) -> bool:
    return all(
        answers_path(job.answers_folder, job.question_file, job.model_name, job.num_chunks, k).is_file()
        for k in range(job.num_chunks)
    )


def _question_ids(questions: list[dict]) -> list[Any]:
    return [q.get("id", q.get("question_id")) for q in questions]


def expected_provenance(job: InferenceJob, questions: list[dict], start: int, end: int, settings: dict) -> dict:
    """The provenance this run's answers for questions [start, end) would carry."""
    identity = job.model_identity or {"name": job.model_name, "checkpoint": None, "base": None, "vision_tower": None}
    return provenance.make_provenance(
        provenance.question_identity(job.question_file, _question_ids(questions), start, end),
        identity, settings, job.image_folder,
    )  # fmt: skip


def _refuse_stale(path: Path, origin: dict) -> None:
    reasons = provenance.stale_reasons(path, origin)
    if reasons:
        raise ValueError(
            f"{path} exists but was made from other inputs: {'; '.join(reasons)}. Pass --overwrite to recompute "
            "it (the old file stays until the new one is complete), or use another --answers-folder"
        )


def _write_answers(path: Path, answers: list[dict], origin: dict) -> None:
    """The answer file and then its provenance record (a kill in between leaves a record that no longer matches)."""
    atomic_write_json(path, answers, indent=4)
    provenance.write_provenance(path, origin)


def run_inference(job: InferenceJob, load_generator: Callable[[], LlavaGenerator]) -> InferenceReport:
    """Answer the job's chunk of questions, continuing a killed run; `load_generator` is only called if needed.

    A finished or half-finished answer file is only reused when its recorded questions, model and settings are
    this run's; otherwise it is an error (or, with `overwrite`, recomputed: the old file is replaced only once
    the new one is complete). When the last chunk of a chunked run finishes, the chunks are merged.
    """
    folder = Path(job.answers_folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"--answers-folder {folder} is a file, not a folder")
    questions = load_questions(job.question_file)
    start, end = chunk_bounds(len(questions), job.num_chunks, job.chunk_idx)
    chunk = questions[start:end]
    out = job.answers_file
    refuse_same_file(out, {"--question-file": job.question_file}, "the answer file")
    partial, skipped_file = progress_path(job.answers_folder, out), skipped_path(job.answers_folder, out)
    loaded: list[LlavaGenerator] = []
    settings = job.settings
    if settings is None:
        loaded.append(load_generator())
        settings = loaded[0].settings
    origin = expected_provenance(job, questions, start, end, settings)
    if not job.overwrite:
        whole = expected_provenance(job, questions, 0, len(questions), settings)
        for done, expected in ((out, origin), (job.final_file, whole)):
            if done.is_file():
                _refuse_stale(done, expected)
                return InferenceReport(done, "already complete", total=len(chunk))

    state = load_json(partial) if partial.is_file() and not job.overwrite else None
    resume_at = start if state is None else _resume_point(state, partial, job, chunk, start, origin)
    missing = _missing_images(questions[resume_at:end], resume_at, job.image_folder)
    if missing and not job.skip_missing_images:
        first = min(missing)
        raise FileNotFoundError(
            f"image file not found: {missing[first]} ({_describe(first, questions[first])} of "
            f"{job.question_file}); {len(missing)} of {end - resume_at} images to answer are missing. Check "
            "--image-folder, or pass --skip-missing-images to answer the others and list the skipped records"
        )
    if missing:
        print(
            f"warning: {len(missing)} of {end - resume_at} images to answer are missing "
            f"(first: {missing[min(missing)]}); their records are skipped",
            file=sys.stderr,
        )

    generator = loaded[0] if loaded else load_generator()
    if generator.settings != settings:
        raise ValueError(f"the loaded generator's settings {generator.settings!r} are not the job's {settings!r}")
    progress = _Progress(partial, job, generator.settings, start, end, origin)
    if state is not None:
        if state["settings"] != generator.settings:
            raise ValueError(
                f"{partial} was written with settings {state['settings']!r}, this run has "
                f"{generator.settings!r}; delete it or rerun with --overwrite to start over"
            )
        progress.state.update(answers=state["answers"], skipped=state["skipped"], next=resume_at)
        progress.saved_answers = len(state["answers"])
    resumed, answered_before = resume_at - start, len(progress.state["answers"])

    with progress_bar(len(chunk), resumed, out.stem, job.progress) as bar:
        _answer_all(generator, job, questions, end, missing, progress, bar)

    # The skipped list is written first: once the answer file exists the chunk counts as complete.
    if progress.state["skipped"]:
        atomic_write_json(skipped_file, progress.state["skipped"])
    else:
        skipped_file.unlink(missing_ok=True)
    _write_answers(out, progress.state["answers"], origin)
    partial.unlink(missing_ok=True)
    skipped = progress.state["skipped"]
    report = InferenceReport(
        out, "answered", total=len(chunk), answered=len(progress.state["answers"]) - answered_before,
        resumed=resumed, skipped=skipped, skipped_file=skipped_file if skipped else None,
    )  # fmt: skip
    if job.num_chunks > 1 and _all_chunks_done(job):
        merge = merge_chunks(job.question_file, job.answers_folder, job.model_name, job.num_chunks, overwrite=True)
        report.merged_file = merge.answers_file
    return report


def _chunk_origin(path: Path, name: str, questions: list[dict], question_file: str | os.PathLike,
                  start: int, end: int) -> dict:  # fmt: skip
    """A chunk's provenance record, checked against the chunk file and the current question file."""
    record = provenance.read_provenance(path)
    hint = f"rerun that chunk with --overwrite (--chunk-idx of {name})"
    if record is None:
        raise ValueError(f"{name} has no provenance record {provenance.provenance_path(path).name}; {hint}")
    current = provenance.question_identity(question_file, _question_ids(questions), start, end)
    reasons = provenance.differences(record, {**record, "questions": current})
    if record.get("answers_sha256") != provenance.file_sha256(path):
        reasons.insert(0, "the chunk file was changed after its provenance record was written")
    if reasons:
        raise ValueError(f"{name} does not match the current question file: {'; '.join(reasons)}; {hint}")
    return record


def merge_chunks(
    question_file: str | os.PathLike, answers_folder: str | os.PathLike, model_name: str, num_chunks: int,
    overwrite: bool = False,
) -> InferenceReport:  # fmt: skip
    """Join the `num_chunks` chunk files into the answer file, in question-file order.

    A missing chunk, one that does not account for every question of its range, or chunks made from other
    questions, another model or other settings than the rest are errors naming the chunk.
    """
    if num_chunks < 2:
        raise ValueError(f"merging needs --num-chunks of at least 2, got {num_chunks}")
    final = answers_path(answers_folder, question_file, model_name)
    questions = load_questions(question_file)
    if final.is_file() and not overwrite:
        record = provenance.read_provenance(final)
        current = provenance.question_identity(question_file, _question_ids(questions), 0, len(questions))
        if record is not None:
            _refuse_stale(final, {**record, "questions": current})
        else:
            _refuse_stale(final, {})
        return InferenceReport(final, "already complete", total=len(questions))
    merged, skipped = [], []
    first_origin: dict | None = None
    for k in range(num_chunks):
        start, end = chunk_bounds(len(questions), num_chunks, k)
        path = answers_path(answers_folder, question_file, model_name, num_chunks, k)
        name = f"chunk {k} of {num_chunks} ({path})"
        if not path.is_file():
            partial = progress_path(answers_folder, path)
            if partial.is_file():
                state = load_json(partial)
                next_index = state.get("next") if isinstance(state, dict) else None
                done = next_index - start if isinstance(next_index, int) else 0
                raise ValueError(
                    f"{name} is incomplete: {done} of {end - start} questions done; "
                    f"rerun inference with --chunk-idx {k} to finish it"
                )
            raise FileNotFoundError(f"{name} is missing; run inference with --num-chunks {num_chunks} --chunk-idx {k}")
        answers = load_json(path)
        chunk_skipped_file = skipped_path(answers_folder, path)
        chunk_skipped = load_json(chunk_skipped_file) if chunk_skipped_file.is_file() else []
        _check_records(answers, chunk_skipped, questions[start:end], start, name)
        origin = _chunk_origin(path, name, questions, question_file, start, end)
        if first_origin is None:
            first_origin = origin
        else:
            reasons = provenance.differences(first_origin, {**origin, "questions": first_origin["questions"]})
            if reasons:
                raise ValueError(f"{name} was made from other inputs than chunk 0: {'; '.join(reasons)}; rerun it "
                                 "with --overwrite")  # fmt: skip
        merged.extend(answers)
        skipped.extend(chunk_skipped)
    final_skipped = skipped_path(answers_folder, final)
    if skipped:
        atomic_write_json(final_skipped, skipped)
    else:
        final_skipped.unlink(missing_ok=True)
    whole = provenance.question_identity(question_file, _question_ids(questions), 0, len(questions))
    origin = provenance.make_provenance(whole, first_origin["model"], first_origin["generation"],
                                        first_origin["image_folder"])  # fmt: skip
    _write_answers(final, merged, origin)
    return InferenceReport(
        final, "merged", total=len(questions), answered=len(merged), skipped=skipped,
        skipped_file=final_skipped if skipped else None,
    )  # fmt: skip

"""The four task metrics of VisATB's validation sets (caption, caption list, grounding, qa).

Answer files are what inference writes: a JSON list of LLaVA-format records whose
`conversations[1]` holds the reference in `value` and the model's answer in `generative_value`.

CIDEr is computed on the raw text, split on whitespace by pycocoevalcap's `Cider`, exactly as
the release's eval scripts do (they never run PTBTokenizer), so scores are comparable with the
paper's tables and no Java is needed. COCO-style PTB tokenisation (lowercasing, dropping
punctuation) gives different, usually higher, numbers.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocoevalcap.cider.cider import Cider
from tqdm import tqdm

from llava.utils import load_json
from llava.visatb.tasks import CAPTION, CAPTION_LIST, GROUNDING, METRIC_TYPES, QA

Box = tuple[float, float, float, float]

# What each metric type reports, by name, in `--json` output.
METRIC_NAMES = {CAPTION: "cider", CAPTION_LIST: "cider", GROUNDING: "iou_accuracy", QA: "exact_match"}

# The first bracketed group, as the release's `\[(.*?)\]`; its contents are parsed strictly.
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class MetricResult:
    """A metric's value on one answer file; `correct` is set for the accuracy metrics."""

    metric_type: str
    score: float
    n: int
    correct: int | None = None

    @property
    def metric(self) -> str:
        return METRIC_NAMES[self.metric_type]

    def summary_line(self) -> str:
        """The line the release's eval scripts print: `CIDEr:  x` or `k / n = x`."""
        if self.correct is None:
            return f"CIDEr:  {self.score}"
        return f"{self.correct} / {self.n} = {self.score}"


# ---------------------------------------------------------------------------- qa


def normalize_answer(text: str) -> str:
    """Strip, lowercase and drop one trailing period, in the release's order."""
    text = text.strip().lower()
    return text[:-1] if text.endswith(".") else text


def qa_match(prediction: str, reference: str) -> bool:
    """Exact match after `normalize_answer` on both sides."""
    return normalize_answer(prediction) == normalize_answer(reference)


# ---------------------------------------------------------------------------- grounding


def parse_box(text: str) -> Box | None:
    """The first `[x1, y1, x2, y2]` in `text` as floats; None when there is no bracket or it is not four numbers."""
    match = _BRACKETS.search(text)
    if match is None:
        return None
    parts = [p.strip() for p in match.group(1).split(",")]
    if len(parts) != 4 or not all(_NUMBER.fullmatch(p) for p in parts):
        return None
    x1, y1, x2, y2 = (float(p) for p in parts)
    return (x1, y1, x2, y2)


# Above the side of any image Pillow opens by default (its limit is 89,478,485 pixels in all): a reference box
# coordinate beyond it (or an overflow such as 1e999) is a broken reference, not a box.
MAX_BOX_COORDINATE = 1e8


def box_problem(box: Box | None) -> str | None:
    """Why `box` cannot be a reference box (none, not finite, absurdly large, or without area), or None."""
    if box is None:
        return "no four numbers in brackets"
    if not all(math.isfinite(v) for v in box):
        return f"a coordinate is not finite {list(box)}"
    if any(abs(v) > MAX_BOX_COORDINATE for v in box):
        return f"a coordinate is beyond {MAX_BOX_COORDINATE:g}, larger than any image {list(box)}"
    if is_degenerate(box):
        return f"no area {list(box)} (needs x2 > x1 and y2 > y1)"
    return None


def is_degenerate(box: Box) -> bool:
    """A box with no area (x2 <= x1 or y2 <= y1)."""
    return box[2] <= box[0] or box[3] <= box[1]


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two non-degenerate `[x1, y1, x2, y2]` boxes."""
    if is_degenerate(a) or is_degenerate(b):
        raise ValueError(f"IoU needs boxes with x2 > x1 and y2 > y1, got {list(a)} and {list(b)}")
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def grounding_iou(prediction: str, reference: str) -> float | None:
    """IoU between the first boxes of prediction and reference; None when the prediction has no valid box."""
    ref_box = parse_box(reference)
    problem = box_problem(ref_box)
    if problem:
        raise ValueError(f"reference {reference!r} has no valid [x1, y1, x2, y2] box: {problem}")
    pred_box = parse_box(prediction)
    if box_problem(pred_box) is not None:
        return None
    return box_iou(pred_box, ref_box)


def grounding_match(prediction: str, reference: str) -> bool:
    """IoU > 0.5 between the first boxes of prediction and reference; a missing or bad predicted box is a miss."""
    iou = grounding_iou(prediction, reference)
    return iou is not None and iou > 0.5


# ---------------------------------------------------------------------------- CIDEr


def cider(references: Sequence[Sequence[str]], predictions: Sequence[str]) -> float:
    """Corpus CIDEr (pycocoevalcap) of `predictions[i]` against the list `references[i]`, on raw text."""
    return float(np.mean(cider_per_sample(references, predictions)))


def cider_per_sample(references: Sequence[Sequence[str]], predictions: Sequence[str]) -> list[float]:
    """Each prediction's CIDEr as pycocoevalcap computes it within the corpus (document frequencies come from
    all of `references`, so a record's score depends on the others); `cider` is their mean."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("CIDEr needs at least one prediction")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("CIDEr needs at least one reference per prediction")
    if not any(ref.split() for refs in references for ref in refs):
        raise ValueError("CIDEr needs at least one reference with words in it")
    # Keyed by position, not record id: a repeated id must not merge two records.
    gts = {i: list(refs) for i, refs in enumerate(references)}
    res = {i: [pred] for i, pred in enumerate(predictions)}
    _, scores = Cider().compute_score(gts, res)
    return [float(v) for v in scores]


# ---------------------------------------------------------------------------- answer files


def _record_name(source: str, index: int, record: Any) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{source}: record {index}" + (f" (id {rid!r})" if rid is not None else "")


def _check_reference(reference: Any, metric_type: str | None, where: str) -> None:
    if metric_type == CAPTION_LIST or (metric_type is None and isinstance(reference, list)):
        if not isinstance(reference, list) or not reference:
            raise ValueError(
                f"{where}: conversations[1].value must be a non-empty list of reference strings for "
                f"caption_list, got {type(reference).__name__}"
            )
        bad = [i for i, r in enumerate(reference) if not isinstance(r, str) or not r.strip()]
        if bad:
            raise ValueError(f"{where}: conversations[1].value[{bad[0]}] must be a non-blank string")
        return
    if not isinstance(reference, str) or not reference.strip():
        kind = "list" if isinstance(reference, list) else type(reference).__name__
        hint = " (a list of references is scored with caption_list)" if isinstance(reference, list) else ""
        raise ValueError(f"{where}: conversations[1].value must be a non-blank string, got {kind}{hint}")
    if metric_type == GROUNDING:
        problem = box_problem(parse_box(reference))
        if problem:
            raise ValueError(f"{where}: reference {reference!r} has no valid [x1, y1, x2, y2] box: {problem}")


def validate_answers(records: Any, metric_type: str | None = None, source: str = "answers") -> list[dict]:
    """Check an answer list's shape (and, given a metric type, its references); errors name the record."""
    if metric_type is not None and metric_type not in METRIC_TYPES:
        raise ValueError(f"unknown metric type {metric_type!r}; known: {', '.join(METRIC_TYPES)}")
    if not isinstance(records, list):
        raise ValueError(f"{source}: expected a JSON list of answer records, got {type(records).__name__}")
    if not records:
        raise ValueError(f"{source}: the answer list is empty")
    for index, record in enumerate(records):
        where = _record_name(source, index, record)
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
        turns = record.get("conversations")
        if not isinstance(turns, list) or len(turns) < 2 or not isinstance(turns[1], dict):
            raise ValueError(f"{where}: needs a 'conversations' list whose second turn is the answer")
        answer = turns[1]
        if "generative_value" not in answer:
            raise ValueError(
                f"{where}: conversations[1] has no 'generative_value' (is this an inference output?)"
            )
        if not isinstance(answer["generative_value"], str):
            raise ValueError(
                f"{where}: conversations[1].generative_value must be a string, "
                f"got {type(answer['generative_value']).__name__}"
            )
        if "value" not in answer:
            raise ValueError(f"{where}: conversations[1] has no reference 'value'")
        _check_reference(answer["value"], metric_type, where)
    return records


def _check_unique_ids(records: list[dict], source: str) -> None:
    """Each question once: a repeated id (compared as text, as answers are matched) would count it twice."""
    seen: dict[tuple[str, Any], int] = {}
    for index, record in enumerate(records):
        if record.get("id") is None:
            continue
        key = (str(record["id"]), record.get("round_id"))
        if key in seen:
            raise ValueError(
                f"{_record_name(source, index, record)}: id {record['id']!r} is also record {seen[key]}'s; each "
                "question must be answered once (were two answer files joined, or the question file doubled?)"
            )
        seen[key] = index


def empty_answers_warning(records: list[dict], source: str) -> str | None:
    """A WARNING line when every answer is empty: the model or the harness that ran it produced nothing."""
    if records and all(not str(r["conversations"][1]["generative_value"]).strip() for r in records):
        return (
            f"WARNING: {source}: all {len(records)} answers are empty; it scores 0. Did generation fail (an "
            "evaluation harness that swallows errors writes empty answers)? Check the model and rerun inference"
        )
    return None


def check_one_generator(records: list[dict], source: str = "answers") -> str | None:
    """The one `generator` of an answer list (None when no record names one); several are an error."""
    names: dict[str, int] = {}
    for index, record in enumerate(records):
        name = record.get("generator")
        if name is not None:
            names.setdefault(str(name), index)
    if len(names) > 1:
        listed = ", ".join(repr(n) for n in names)
        second = sorted(names.values())[1]
        raise ValueError(
            f"{source}: the answers were written by {len(names)} generators ({listed}), e.g. "
            f"{_record_name(source, second, records[second])[len(source) + 2:]}: a file must hold one model's "
            "answers; regenerate it"
        )
    return next(iter(names), None)


def check_task(records: list[dict], task: str, source: str = "answers") -> None:
    """Every record that names its `task` must name `task` (the one the score is recorded under)."""
    for index, record in enumerate(records):
        own = record.get("task")
        if own is not None and own != task:
            raise ValueError(
                f"{_record_name(source, index, record)} belongs to task {own!r}, not --task {task!r}: "
                "is this the right answer file?"
            )


def load_answers(path: str | os.PathLike, metric_type: str | None = None) -> list[dict]:
    """Load and validate an answer file (each question id once); errors name the file and the offending record."""
    records = validate_answers(load_json(path), metric_type, source=str(path))
    _check_unique_ids(records, str(path))
    return records


# ---------------------------------------------------------------------------- metrics


def _pairs(records: list[dict], progress: bool) -> list[tuple[Any, str]]:
    """(reference, prediction) per record."""
    return [
        (r["conversations"][1]["value"], r["conversations"][1]["generative_value"])
        for r in tqdm(records, desc="answers", disable=None if progress else True)
    ]


def evaluate_caption(records: list[dict], progress: bool = False) -> MetricResult:
    """CIDEr against the one reference of each record."""
    return MetricResult(CAPTION, _mean(sample_scores(records, CAPTION, progress)), len(records))


def evaluate_caption_list(records: list[dict], progress: bool = False) -> MetricResult:
    """CIDEr against each record's list of references."""
    return MetricResult(CAPTION_LIST, _mean(sample_scores(records, CAPTION_LIST, progress)), len(records))


def _accuracy(metric_type: str, records: list[dict], progress: bool) -> MetricResult:
    correct = int(sum(sample_scores(records, metric_type, progress)))
    return MetricResult(metric_type, correct / len(records), len(records), correct)


def evaluate_grounding(records: list[dict], progress: bool = False) -> MetricResult:
    """Fraction of records whose predicted box has IoU > 0.5 with the reference box."""
    return _accuracy(GROUNDING, records, progress)


def evaluate_qa(records: list[dict], progress: bool = False) -> MetricResult:
    """Fraction of exact matches after normalisation."""
    return _accuracy(QA, records, progress)


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


def sample_scores(records: list[dict], metric_type: str, progress: bool = False) -> list[float]:
    """Each record's own score, in order; the task's score is their mean.

    caption, caption_list: the record's CIDEr within the corpus of `records`; grounding: 1.0 when the IoU of
    the predicted and the reference box is above 0.5, else 0.0 (IoU itself: `grounding_iou`); qa: 1.0 for an
    exact match after `normalize_answer`, else 0.0."""
    pairs = _pairs(records, progress)
    if metric_type == CAPTION:
        return cider_per_sample([[ref] for ref, _ in pairs], [pred for _, pred in pairs])
    if metric_type == CAPTION_LIST:
        return cider_per_sample([ref for ref, _ in pairs], [pred for _, pred in pairs])
    match = {GROUNDING: grounding_match, QA: qa_match}.get(metric_type)
    if match is None:
        raise ValueError(f"no per-record score for metric type {metric_type!r}; known: {', '.join(METRIC_TYPES)}")
    return [1.0 if match(pred, ref) else 0.0 for ref, pred in pairs]


METRICS: dict[str, Callable[..., MetricResult]] = {
    CAPTION: evaluate_caption,
    CAPTION_LIST: evaluate_caption_list,
    GROUNDING: evaluate_grounding,
    QA: evaluate_qa,
}


def evaluate(
    records: list[dict], metric_type: str, progress: bool = False, source: str = "answers"
) -> MetricResult:
    """Validate `records` for `metric_type` and compute its metric."""
    validate_answers(records, metric_type, source)
    result = METRICS[metric_type](records, progress=progress)
    if not math.isfinite(result.score):
        raise ValueError(f"{source}: {metric_type} score is not finite ({result.score})")
    return result


def score_answers(records: list[dict], metric_type: str) -> float:
    """The score of `records` under `metric_type` (CIDEr or a fraction in [0, 1])."""
    return evaluate(records, metric_type).score

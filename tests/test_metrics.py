"""The four task metrics, answer-file validation and the scores table."""

from __future__ import annotations

import json
import math
import multiprocessing

import pytest
from pycocoevalcap.cider.cider import Cider

from llava.visatb.metrics.task_metrics import (
    METRICS,
    box_iou,
    cider,
    evaluate,
    grounding_match,
    load_answers,
    normalize_answer,
    parse_box,
    qa_match,
    score_answers,
)
from llava.visatb.scores import load_scores, record_score
from llava.visatb.tasks import CAPTION, CAPTION_LIST, GROUNDING, METRIC_TYPES, QA


def answer(reference, prediction, rid="r"):
    return {
        "id": rid,
        "conversations": [
            {"from": "human", "value": "<image>\nquestion"},
            {"from": "gpt", "value": reference, "generative_value": prediction},
        ],
        "generator": "model",
    }


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


# ---------------------------------------------------------------------------- qa


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("Yes", "yes", True),  # case folding
        ("yes.", "yes", True),  # period on the prediction side
        ("no", "No.", True),  # period on the reference side
        ("  Two.  ", "two", True),  # stripped before the period is dropped
        ("yes..", "yes", False),  # only one period is dropped
        ("yes..", "yes.", False),  # one from each side: "yes." vs "yes"
        ("3.5.", "3.5", True),  # inner periods stay
        ("yes .", "yes", False),  # no second strip after dropping the period
        ("cat", "dog", False),
    ],
)
def test_qa_match(prediction, reference, expected):
    assert qa_match(prediction, reference) is expected


def test_normalize_answer_drops_one_period():
    assert normalize_answer(" A.B.. ") == "a.b."


def test_qa_score_is_fraction_of_matches():
    records = [answer("Yes", "yes."), answer("2", "two"), answer("red", "Red"), answer("a", "b")]
    result = evaluate(records, QA)
    assert (result.correct, result.n, result.score) == (2, 4, 0.5)
    assert result.summary_line() == "2 / 4 = 0.5"
    assert score_answers(records, QA) == 0.5


# ---------------------------------------------------------------------------- grounding


@pytest.mark.parametrize(
    "text, box",
    [
        ("The box is [0.12, 0.3, 0.5, 0.77].", (0.12, 0.3, 0.5, 0.77)),
        ("[10, 20, 300, 400]", (10.0, 20.0, 300.0, 400.0)),
        ("at [0, .5, 1., 2e-1] here", (0.0, 0.5, 1.0, 0.2)),
        ("first [1,2,3,4] then [5,6,7,8]", (1.0, 2.0, 3.0, 4.0)),
        ("no box here", None),
        ("[0.1, 0.2, 0.3]", None),  # three numbers
        ("[0.1, 0.2, 0.3, 0.4, 0.5]", None),  # five numbers
        ("[a, b, c, d]", None),
        ("[nan, 0, 1, 1]", None),
        ("[0.1 0.2 0.3 0.4]", None),  # no commas
        ("[x] [0, 0, 1, 1]", None),  # the first bracketed group is the box
        ("[0.1, 0.2, 0.3, 0.4", None),  # unclosed
    ],
)
def test_parse_box(text, box):
    assert parse_box(text) == box


def test_box_iou_by_hand():
    # Overlap 1x1 of two 2x2 boxes: 1 / (4 + 4 - 1).
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    with pytest.raises(ValueError):
        box_iou((0, 0, 0, 1), (0, 0, 1, 1))


def test_grounding_iou_exactly_half_is_a_miss_and_just_above_a_hit():
    reference = "[0, 0, 2, 1]"
    assert not grounding_match("[0, 0, 1, 1]", reference)  # IoU = 1 / 2
    assert grounding_match("[0, 0, 1.01, 1]", reference)  # IoU = 1.01 / 2


@pytest.mark.parametrize(
    "prediction",
    ["I cannot tell.", "[0.5, 0.5, 0.5, 0.9]", "[0.6, 0.1, 0.2, 0.9]", "[0.1, 0.2, 0.9]", "[a, b, c, d]", ""],
)
def test_grounding_bad_prediction_is_a_miss(prediction):
    assert grounding_match(prediction, "[0.1, 0.1, 0.9, 0.9]") is False


def test_grounding_score_is_fraction_of_hits():
    records = [
        answer("[0.1, 0.1, 0.5, 0.5]", "It is at [0.1, 0.1, 0.5, 0.5]."),  # IoU 1
        answer("[0, 0, 10, 10]", "[0, 0, 10, 6]"),  # IoU 0.6
        answer("[0, 0, 10, 10]", "[0, 0, 10, 5]"),  # IoU 0.5: miss
        answer("[0, 0, 10, 10]", "somewhere"),
        answer("[0, 0, 10, 10]", "[5, 5, 5, 9]"),  # degenerate
    ]
    result = evaluate(records, GROUNDING)
    assert (result.correct, result.n, result.score) == (2, 5, 0.4)
    assert result.summary_line() == "2 / 5 = 0.4"


def test_grounding_reference_without_box_names_the_record(tmp_path):
    path = write(tmp_path / "a.json", [answer("[0, 0, 1, 1]", "x", "ok"), answer("a dog", "x", "bad")])
    with pytest.raises(ValueError, match=r"a\.json: record 1 \(id 'bad'\).*no valid"):
        load_answers(path, GROUNDING)


# ---------------------------------------------------------------------------- CIDEr


def test_cider_by_hand():
    # Two images, so idf = log 2 for every n-gram that occurs in one reference. Image 0 matches its
    # reference on 1- and 2-grams (cosine 1 each, none for 3/4-grams): 10 * mean(1, 1, 0, 0) = 5.
    # Image 1 shares nothing: 0. Corpus CIDEr = 2.5.
    assert cider([["a b"], ["c d"]], ["a b", "x"]) == pytest.approx(2.5)


def test_cider_is_case_and_punctuation_sensitive_like_the_release():
    # The release feeds raw text to Cider: "Dog." and "dog" are different tokens.
    refs = [["a dog"], ["two cats"]]
    assert cider(refs, ["a dog", "two cats"]) > cider(refs, ["A Dog.", "two cats"])


CAPTIONS = [
    ("A man rides a brown horse on the beach.", "a man riding a horse on a beach"),
    ("Two cats sleep on a red sofa.", "two cats sleeping on a couch"),
    ("A plate of pasta with tomato sauce.", "a plate of pasta"),
    ("A red bus drives down a city street.", "a bus on the street in a city"),
]


def test_caption_cider_equals_pycocoevalcap():
    records = [answer(ref, pred, f"id{i}") for i, (ref, pred) in enumerate(CAPTIONS)]
    expected, _ = Cider().compute_score(
        {i: [ref] for i, (ref, _) in enumerate(CAPTIONS)}, {i: [pred] for i, (_, pred) in enumerate(CAPTIONS)}
    )
    result = evaluate(records, CAPTION)
    assert result.score == pytest.approx(float(expected), rel=1e-12)
    assert result.score > 0
    assert result.summary_line() == f"CIDEr:  {result.score}"


def test_caption_list_cider_equals_pycocoevalcap_and_uses_every_reference():
    references = [
        ["a man on a horse", "a man riding a horse on a beach", "horse rider"],
        ["two cats sleeping on a couch", "cats on a sofa"],
        ["a plate of pasta", "pasta with sauce", "food on a plate"],
    ]
    predictions = ["a man riding a horse", "two cats on a sofa", "a plate of food"]
    records = [answer(refs, pred, i) for i, (refs, pred) in enumerate(zip(references, predictions))]
    expected, _ = Cider().compute_score(
        {i: refs for i, refs in enumerate(references)}, {i: [p] for i, p in enumerate(predictions)}
    )
    score = score_answers(records, CAPTION_LIST)
    assert score == pytest.approx(float(expected), rel=1e-12)
    assert score != pytest.approx(cider([refs[:1] for refs in references], predictions))


def test_repeated_ids_do_not_merge_records():
    # Keyed by id (as the release is), the two "x" records would collapse into one.
    records = [answer("a b", "a b", "x"), answer("c d", "x", "x")]
    assert score_answers(records, CAPTION) == pytest.approx(2.5)


# ---------------------------------------------------------------------------- registry and loading


def test_registry_covers_every_metric_type():
    assert set(METRICS) == set(METRIC_TYPES)


def test_load_answers_accepts_inference_output(tmp_path):
    records = [answer("yes", "Yes", "r0"), answer(["a", "b"], "a", "r1")]
    assert load_answers(write(tmp_path / "a.json", records)) == records


@pytest.mark.parametrize(
    "content, metric_type, message",
    [
        ({"id": 1}, QA, r"expected a JSON list .* got dict"),
        ([], QA, "the answer list is empty"),
        ([answer("yes", "yes"), "oops"], QA, r"record 1: expected an object"),
        (
            [{"id": "q1", "conversations": [{"from": "human", "value": "q"}]}],
            QA,
            r"record 0 \(id 'q1'\).*conversations",
        ),
        (
            [answer("yes", "yes", "q0"), {"id": "q1", "conversations": [{}, {"value": "no"}]}],
            QA,
            r"record 1 \(id 'q1'\): conversations\[1\] has no 'generative_value'",
        ),
        (
            [answer("yes", None, "q0")],
            QA,
            r"record 0 \(id 'q0'\).*generative_value must be a string, got NoneType",
        ),
        ([answer(["a", "b"], "a", "q0")], CAPTION, r"record 0 \(id 'q0'\).*non-blank string, got list"),
        ([answer("a cat", "a cat", "q0")], CAPTION_LIST, r"record 0 \(id 'q0'\).*list of reference strings"),
        ([answer([], "a cat", "q0")], CAPTION_LIST, r"record 0 \(id 'q0'\).*non-empty list"),
        ([answer(["a", 3], "a cat", "q0")], CAPTION_LIST, r"record 0 \(id 'q0'\).*value\[1\] must be"),
        ([answer(" ", "a", "q0")], CAPTION, r"record 0 \(id 'q0'\).*non-blank string"),
    ],
)
def test_load_answers_rejects_bad_input(tmp_path, content, metric_type, message):
    path = write(tmp_path / "answers.json", content)
    with pytest.raises(ValueError, match=message) as excinfo:
        load_answers(path, metric_type)
    assert str(path) in str(excinfo.value)


def test_load_answers_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_answers(tmp_path / "nope.json", QA)


def test_score_answers_validates_records_given_directly():
    with pytest.raises(ValueError, match="generative_value"):
        score_answers([{"conversations": [{}, {"value": "a"}]}], QA)


# ---------------------------------------------------------------------------- scores table


def test_record_score_creates_the_table(tmp_path):
    path = tmp_path / "sub" / "scores.json"
    record_score(path, "mini", "GQA", 0.41)
    assert load_scores(path) == {"mini": {"GQA": 0.41}}


def test_record_score_keeps_other_entries(tmp_path):
    path = write(tmp_path / "scores.json", {"mini": {"GQA": 0.41, "VQAv2": 0.7}, "GQA": {"GQA": 0.58}})
    record_score(path, "mini", "GQA", 0.45)
    record_score(path, "mini", "RefCOCO-bbox", 0.12)
    record_score(path, "RefCOCO-bbox", "GQA", 0.43)
    assert load_scores(path) == {
        "mini": {"GQA": 0.45, "VQAv2": 0.7, "RefCOCO-bbox": 0.12},
        "GQA": {"GQA": 0.58},
        "RefCOCO-bbox": {"GQA": 0.43},
    }


def _record_many(path, model_key, count):
    for i in range(count):
        record_score(path, model_key, f"task{i}", i / 10)


def test_parallel_recorders_lose_nothing(tmp_path):
    path = tmp_path / "scores.json"
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_record_many, args=(path, f"model{k}", 8)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert all(w.exitcode == 0 for w in workers)
    assert load_scores(path) == {f"model{k}": {f"task{i}": i / 10 for i in range(8)} for k in range(4)}


@pytest.mark.parametrize(
    "content, message",
    [
        ([1, 2], "expected a JSON object"),
        ({"mini": 0.5}, r"model 'mini' must map task names to scores"),
        ({"mini": {"GQA": "high"}}, r"model 'mini', task 'GQA': score 'high' is not a finite number"),
        ({"mini": {"GQA": True}}, r"model 'mini', task 'GQA'"),
    ],
)
def test_load_scores_rejects_bad_tables(tmp_path, content, message):
    path = write(tmp_path / "scores.json", content)
    with pytest.raises(ValueError, match=message) as excinfo:
        load_scores(path)
    assert str(path) in str(excinfo.value)


def test_load_scores_rejects_non_finite(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text('{"mini": {"GQA": NaN}}')
    with pytest.raises(ValueError, match="not a finite number"):
        load_scores(path)


def test_record_score_leaves_a_malformed_table_alone(tmp_path):
    path = write(tmp_path / "scores.json", {"mini": "oops"})
    before = path.read_text()
    with pytest.raises(ValueError, match="model 'mini'"):
        record_score(path, "GQA", "GQA", 0.5)
    assert path.read_text() == before


@pytest.mark.parametrize("score", [math.nan, math.inf, "0.5"])
def test_record_score_rejects_non_finite_scores(tmp_path, score):
    with pytest.raises(ValueError, match="not a finite number"):
        record_score(tmp_path / "scores.json", "mini", "GQA", score)
    assert not (tmp_path / "scores.json").exists()

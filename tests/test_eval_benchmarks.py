"""LLaVA-1.5 benchmark scorers, converters, the chunk merge and the eval shell scripts, on hand-made fixtures
in each benchmark's real file format; expected numbers are worked out by hand in the comments."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

from llava.answers import jsonio
from llava.answers.engine import split_chunks as get_chunk
from llava.answers.jsonio import read_jsonl
from llava.eval import (
    convert_mmbench_for_submission,
    convert_mmvet_for_submission,
    convert_vizwiz_for_submission,
    convert_vqav2_for_submission,
    eval_gqa,
    eval_mme,
    eval_pope,
    eval_science_qa,
    eval_seed,
    eval_textvqa,
    merge_chunks,
)
from llava.eval.vqa_normalize import normalize_answer, normalize_gqa_answer, vqa_accuracy
from llava.utils import chunk_bounds

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts_visatb" / "eval"
SHORT = "\nAnswer the question using a single word or phrase."


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def answer(qid, text, prompt="", **extra):
    return {"question_id": qid, "prompt": prompt, "text": text, "answer_id": f"a{qid}", "model_id": "m", "metadata": {}, **extra}


# ---------------------------------------------------------------- VQA normalisation


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Dont", "don't"),  # contraction table
        ("whats that", "what's that"),
        ("Two", "2"),  # number words
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("the red car", "red car"),  # articles
        ("An apple", "apple"),
        ("a man's hat", "man 's hat"),  # "'s" is split off, as the official evaluator does
        ("left-hand", "left hand"),  # a mark inside a word becomes a space
        ("hello - world", "hello world"),  # a mark next to a space disappears
        ("yes!", "yes"),
        ("dog.", "dog"),  # a period is dropped ...
        ("3.5", "3.5"),  # ... unless a digit follows it
        ("1,000", "1000"),
        ("  Yes,\tit is. ", "yes it is"),
    ],
)
def test_vqa_normalisation(raw, expected):
    assert normalize_answer(raw) == expected


def test_gqa_normalisation_only_lowercases_and_drops_trailing_periods():
    assert normalize_gqa_answer("The Left..") == "the left"
    assert normalize_gqa_answer("Two") == "two"


@pytest.mark.parametrize("matches, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_soft_accuracy_leave_one_out(matches, expected):
    # m matching answers among 10: m subsets leave a match out (m-1 left), 10-m keep all m:
    # score = (m*min(1,(m-1)/3) + (10-m)*min(1,m/3)) / 10, e.g. m=1: 9*(1/3)/10 = 0.3,
    # m=2: (2/3 + 8*2/3)/10 = 0.6, m=3: (3*2/3 + 7*1)/10 = 0.9, m=4: 1.
    gts = ["cat"] * matches + [f"other{i}" for i in range(10 - matches)]
    assert vqa_accuracy("Cat.", gts) == pytest.approx(expected)


# ---------------------------------------------------------------- TextVQA


def textvqa_fixture(tmp_path):
    annotations = {
        "dataset_name": "textvqa",
        "data": [
            {"image_id": "abc", "question_id": 1, "question": "what brand is this?",
             "answers": ["sony"] * 3 + [f"x{i}" for i in range(7)]},
            {"image_id": "abc", "question_id": 2, "question": "what year is shown?",
             "answers": ["1990"] + [f"y{i}" for i in range(9)]},
            {"image_id": "def", "question_id": 3, "question": "What color is the sign?", "answers": ["red"] * 10},
        ],
    }  # fmt: skip
    # LLaVA's question file uses the image id as question_id; two questions share image "abc".
    answers = [
        answer("abc", "Sony.", "what brand is this?\nReference OCR token: SONY, 24" + SHORT),  # 3 matches: 0.9
        answer("abc", "1990", "what year is shown?" + SHORT),  # 1 match: 0.3
        answer("def", "the red", "What color is the sign?\nReference OCR token: STOP" + SHORT),  # "red": 1.0
    ]
    return write_json(tmp_path / "TextVQA_0.5.1_val.json", annotations), write_jsonl(tmp_path / "answers.jsonl", answers)


def test_textvqa_accuracy(tmp_path, capsys):
    annotation_file, result_file = textvqa_fixture(tmp_path)
    # (0.9 + 0.3 + 1.0) / 3 = 73.33%
    assert eval_textvqa.evaluate_file(annotation_file, result_file)["accuracy"] == pytest.approx(220 / 3)
    assert eval_textvqa.main(["--annotation-file", str(annotation_file), "--result-file", str(result_file)]) == 0
    assert "Samples: 3\nAccuracy: 73.33%" in capsys.readouterr().out


def test_textvqa_unknown_question_is_named(tmp_path, capsys):
    annotation_file, _ = textvqa_fixture(tmp_path)
    bad = write_jsonl(tmp_path / "bad.jsonl", [answer("zzz", "x", "who?" + SHORT)])
    assert eval_textvqa.main(["--annotation-file", str(annotation_file), "--result-file", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.jsonl" in err and "'zzz'" in err


# ---------------------------------------------------------------- POPE


def pope_fixture(tmp_path):
    labels = {
        "adversarial": [("a.jpg", "Is there a dog in the image?", "yes"), ("a.jpg", "Is there a cat in the image?", "yes"),
                        ("b.jpg", "Is there a car in the image?", "yes"), ("b.jpg", "Is there a bus in the image?", "no"),
                        ("c.jpg", "Is there a cow in the image?", "no")],
        "random": [("d.jpg", "Is there a cup in the image?", "yes"), ("d.jpg", "Is there a pen in the image?", "no")],
    }  # fmt: skip
    questions, qid = [], 1000
    for split, rows in labels.items():
        write_jsonl(
            tmp_path / "coco" / f"coco_pope_{split}.json",
            [{"question_id": i + 1, "image": img, "text": text, "label": lab} for i, (img, text, lab) in enumerate(rows)],
        )
        for img, text, _ in rows:
            questions.append({"question_id": qid, "image": img, "text": text + SHORT, "category": split})
            qid += 1
    texts = [
        "Yes, there is a dog.",  # yes, label yes: TP
        "I think so. No wait",  # only the first sentence counts: yes, label yes: TP
        "No, there is not.",  # no, label yes: FN
        "Yes",  # yes, label no: FP
        "There is no cat.",  # no, label no: TN
        "yes",  # random: TP
        "no",  # random: TN
    ]
    answers = [answer(q["question_id"], t) for q, t in zip(questions, texts)]
    answers.reverse()  # answers are found by question_id, not by position
    return tmp_path / "coco", write_jsonl(tmp_path / "llava_pope_test.jsonl", questions), write_jsonl(tmp_path / "a.jsonl", answers)


def test_pope_metrics_per_split(tmp_path):
    annotation_dir, question_file, result_file = pope_fixture(tmp_path)
    results = eval_pope.evaluate_pope(read_jsonl(question_file), read_jsonl(result_file), eval_pope.load_labels(annotation_dir))
    adv = results["adversarial"]
    # TP=2 FP=1 TN=1 FN=1: acc 3/5, precision 2/3, recall 2/3, F1 2/3, yes-ratio 3/5
    assert (adv["TP"], adv["FP"], adv["TN"], adv["FN"]) == (2, 1, 1, 1)
    assert adv["accuracy"] == pytest.approx(60.0)
    assert adv["precision"] == pytest.approx(200 / 3)
    assert adv["recall"] == pytest.approx(200 / 3)
    assert adv["f1"] == pytest.approx(200 / 3)
    assert adv["yes_ratio"] == pytest.approx(60.0)
    rnd = results["random"]
    assert (rnd["accuracy"], rnd["f1"], rnd["yes_ratio"]) == (100.0, 100.0, 50.0)
    # averages over the two splits: acc (60+100)/2, F1 (66.67+100)/2, yes (60+50)/2
    assert results["average"]["accuracy"] == pytest.approx(80.0)
    assert results["average"]["f1"] == pytest.approx(250 / 3)
    assert results["average"]["yes_ratio"] == pytest.approx(55.0)


def test_pope_refuses_questions_out_of_label_order(tmp_path):
    annotation_dir, question_file, result_file = pope_fixture(tmp_path)
    questions = read_jsonl(question_file)
    questions[0], questions[1] = questions[1], questions[0]
    with pytest.raises(ValueError, match="split adversarial, question 1 .* out of order"):
        eval_pope.evaluate_pope(questions, read_jsonl(result_file), eval_pope.load_labels(annotation_dir))


def test_pope_cli(tmp_path, capsys):
    annotation_dir, question_file, result_file = pope_fixture(tmp_path)
    out = tmp_path / "result.json"
    args = ["--annotation-dir", str(annotation_dir), "--question-file", str(question_file), "--result-file", str(result_file)]
    assert eval_pope.main([*args, "--output-result", str(out)]) == 0
    assert "adversarial" in capsys.readouterr().out
    assert json.loads(out.read_text())["adversarial"]["accuracy"] == pytest.approx(60.0)


# ---------------------------------------------------------------- MME


def mme_fixture(tmp_path):
    root = tmp_path / "MME_Benchmark_release_version"
    # existence: question files beside the images; artwork: under images/ and questions_answers_YN/.
    (root / "existence").mkdir(parents=True)
    (root / "existence" / "1.txt").write_text(
        "Is there a dog in this image? Please answer yes or no.\tYes\n"
        "Is there a cat in this image? Please answer yes or no.\tNo\n"
    )
    (root / "existence" / "2.txt").write_text(
        "Is there a car in this image?  Please answer yes or no.\tYes\n"  # MME's stray double space
        "Is there a bus in this image? Please answer yes or no.\tNo\n"
    )
    (root / "artwork" / "images").mkdir(parents=True)
    (root / "artwork" / "questions_answers_YN").mkdir()
    (root / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork by Monet? Please answer yes or no.\tYes\nIs this artwork by Dali? Please answer yes or no.\tNo\n"
    )
    (root / "code_reasoning").mkdir()
    (root / "code_reasoning" / "0001.txt").write_text(
        "Will the code print 3? Please answer yes or no.\tYes\nWill the code print 4? Please answer yes or no.\tNo\n"
    )
    answers = [
        # existence, image 1: both right -> acc+ counts it
        answer("existence/1.png", "Yes", "Is there a dog in this image?" + SHORT),
        answer("existence/1.png", "No", "Is there a cat in this image?" + SHORT),
        # existence, image 2: first wrong, second "no, ..." read as no (right)
        answer("existence/2.png", "No", "Is there a car in this image?" + SHORT),
        answer("existence/2.png", "no, there is none", "Is there a bus in this image?" + SHORT),
        # artwork: "Yes, it is." has yes in its first 4 characters (right); "maybe" is other (wrong)
        answer("artwork/10002.jpg", "Yes, it is.", "Is this artwork by Monet?" + SHORT),
        answer("artwork/10002.jpg", "maybe", "Is this artwork by Dali?" + SHORT),
        # code_reasoning: both right
        answer("code_reasoning/0001.png", "yes", "Will the code print 3?" + SHORT),
        answer("code_reasoning/0001.png", "No", "Will the code print 4?" + SHORT),
    ]
    return root, write_jsonl(tmp_path / "answers.jsonl", answers)


def test_mme_scores(tmp_path):
    root, answers_file = mme_fixture(tmp_path)
    result = eval_mme.evaluate_mme(read_jsonl(answers_file), eval_mme.load_ground_truth(root))
    existence = result["subtasks"]["existence"]
    # existence: 3 of 4 questions right (75), 1 of 2 images fully right (50): score 125
    assert (existence["acc"], existence["acc_plus"], existence["score"]) == (75.0, 50.0, 125.0)
    # artwork: 1 of 2 right (50), no image fully right (0): 50; one "other" answer
    artwork = result["subtasks"]["artwork"]
    assert (artwork["acc"], artwork["acc_plus"], artwork["other"]) == (50.0, 0.0, 1)
    # perception = 125 + 50; cognition = code_reasoning 100 + 100
    assert result["Perception"] == pytest.approx(175.0)
    assert result["Cognition"] == pytest.approx(200.0)
    assert "count" in result["missing_subtasks"] and "existence" not in result["missing_subtasks"]


def test_mme_writes_eval_tool_files_and_checks_pairs(tmp_path, capsys):
    root, answers_file = mme_fixture(tmp_path)
    out = tmp_path / "eval_tool" / "answers" / "m"
    assert eval_mme.main(["--answers-file", str(answers_file), "--data-dir", str(root), "--results-dir", str(out)]) == 0
    assert "total score: 175.00" in capsys.readouterr().out
    lines = (out / "existence.txt").read_text().splitlines()
    assert lines[2] == "2.txt\tIs there a car in this image?  Please answer yes or no.\tYes\tNo"
    half = write_jsonl(tmp_path / "half.jsonl", read_jsonl(answers_file)[:3])
    with pytest.raises(ValueError, match="existence/2: 1 answer"):
        eval_mme.evaluate_mme(read_jsonl(half), eval_mme.load_ground_truth(root))


# ---------------------------------------------------------------- ScienceQA


def sqa_fixture(tmp_path):
    def problem(answer_idx, n_choices, image):
        return {"question": "q", "choices": [f"c{i}" for i in range(n_choices)], "answer": answer_idx,
                "image": "image.png" if image else None, "split": "test"}  # fmt: skip

    problems = {"p1": problem(0, 2, True), "p2": problem(1, 2, True), "p3": problem(2, 3, True),
                "p4": problem(0, 2, False), "p5": problem(1, 2, False), "t1": problem(0, 2, True)}  # fmt: skip
    write_json(tmp_path / "problems.json", problems)
    write_json(tmp_path / "pid_splits.json", {"train": ["t1"], "test": ["p1", "p2", "p3", "p4", "p5"]})
    answers = [
        answer("p1", "A", "<image>\nq"),  # bare letter, right
        answer("p2", "The answer is B.", "<image>\nq"),  # answer sentence, right
        answer("p3", "D", "<image>\nq"),  # D is beyond p3's three choices: wrong
        answer("p4", "A. c0", "q"),  # "X. ..." form, right
        # p5 has no answer: wrong
    ]
    return write_jsonl(tmp_path / "answers.jsonl", answers)


def test_science_qa_accuracy_and_img_accuracy(tmp_path, capsys):
    result_file = sqa_fixture(tmp_path)
    result = eval_science_qa.evaluate_science_qa(eval_science_qa.load_split(tmp_path), read_jsonl(result_file))
    # 3 of 5 right: 60%; image problems p1, p2, p3 with 2 right: 66.67%
    assert (result["count"], result["correct"], result["missing"]) == (5, 3, 1)
    assert result["acc"] == pytest.approx(60.0)
    assert result["img_acc"] == pytest.approx(200 / 3)
    out = tmp_path / "result.json"
    args = ["--base-dir", str(tmp_path), "--result-file", str(result_file), "--output-result", str(out)]
    assert eval_science_qa.main(args) == 0
    assert "Accuracy: 60.00%, IMG-Accuracy: 66.67%" in capsys.readouterr().out
    assert json.loads(out.read_text())["results"] == {"p1": 0, "p2": 1, "p3": -1, "p4": 0, "p5": -1}


@pytest.mark.parametrize("text, parsed", [("C", "C"), ("B. cat", "B"), ("The answer is A.", "A"), ("A or B", "FAILED")])
def test_science_qa_answer_parsing(text, parsed):
    assert eval_science_qa.parse_choice(text) == parsed


# ---------------------------------------------------------------- SEED-Bench


def seed_fixture(tmp_path):
    annotations = {
        "question_type": {"Scene Understanding": 1, "Instance Identity": 2, "Action Recognition": 10},
        "questions": [
            {"question_id": "101", "question_type_id": 1, "data_type": "image", "answer": "A", "data_id": "1.jpg"},
            {"question_id": "102", "question_type_id": 1, "data_type": "image", "answer": "B", "data_id": "2.jpg"},
            {"question_id": "103", "question_type_id": 2, "data_type": "image", "answer": "D", "data_id": "3.jpg"},
            {"question_id": "v1", "question_type_id": 10, "data_type": "video", "answer": "B", "data_id": "v1.mp4"},
            {"question_id": "v2", "question_type_id": 10, "data_type": "video", "answer": "A", "data_id": "v2.mp4"},
        ],
    }
    # LLaVA's question file has integer ids where SEED's are numeric strings.
    answers = [answer(101, "A"), answer(102, "C"), answer(103, "D"), answer("v1", "B")]  # v2 unanswered
    return write_json(tmp_path / "SEED-Bench.json", annotations), write_jsonl(tmp_path / "merge.jsonl", answers)


def test_seed_accuracy_per_type_and_data_type(tmp_path):
    annotation_file, result_file = seed_fixture(tmp_path)
    result = eval_seed.evaluate_seed(eval_seed.load_annotations(annotation_file), read_jsonl(result_file))
    # Scene 1/2, Instance 1/1, Action 1/2 (v2 has no answer); image 2/3, video 1/2, overall 3/5
    assert {k: v["accuracy"] for k, v in result["by_type"].items()} == pytest.approx(
        {"Scene Understanding": 50.0, "Instance Identity": 100.0, "Action Recognition": 50.0}
    )
    assert result["by_data_type"]["image"]["accuracy"] == pytest.approx(200 / 3)
    assert result["by_data_type"]["video"]["accuracy"] == pytest.approx(50.0)
    assert result["overall"]["accuracy"] == pytest.approx(60.0)
    assert result["missing"] == 1


def test_seed_upload_file(tmp_path):
    annotation_file, result_file = seed_fixture(tmp_path)
    upload = tmp_path / "upload" / "m.jsonl"
    args = ["--annotation-file", str(annotation_file), "--result-file", str(result_file), "--result-upload-file", str(upload)]
    assert eval_seed.main(args) == 0
    assert read_jsonl(upload) == [
        {"question_id": "101", "prediction": "A"},
        {"question_id": "102", "prediction": "C"},
        {"question_id": "103", "prediction": "D"},
        {"question_id": "v1", "prediction": "B"},
    ]


# ---------------------------------------------------------------- GQA


def gqa_fixture(tmp_path):
    def q(answer_text, structural, semantic, balanced=True):
        return {"question": "q", "answer": answer_text, "isBalanced": balanced,
                "types": {"structural": structural, "semantic": semantic, "detailed": "x"}}  # fmt: skip

    questions = {"g1": q("yes", "verify", "attr"), "g2": q("man", "query", "obj"), "g3": q("left", "query", "rel"),
                 "g4": q("no", "logical", "obj"), "g5": q("x", "query", "obj", balanced=False)}  # fmt: skip
    answers = [
        answer("g1", "Yes."),  # -> "yes": right
        answer("g2", "The man"),  # -> "the man" (articles stay): wrong
        answer("g3", "left."),  # -> "left": right
        answer("g4", "No"),  # -> "no": right
    ]  # g5 is unbalanced: not scored, no prediction needed
    return write_json(tmp_path / "testdev_balanced_questions.json", questions), write_jsonl(tmp_path / "merge.jsonl", answers)


def test_gqa_conversion_and_local_accuracy(tmp_path, capsys):
    questions_file, src = gqa_fixture(tmp_path)
    dst = tmp_path / "testdev_balanced_predictions.json"
    assert eval_gqa.main(["--src", str(src), "--dst", str(dst), "--questions", str(questions_file)]) == 0
    assert json.loads(dst.read_text()) == [
        {"questionId": "g1", "prediction": "yes"},
        {"questionId": "g2", "prediction": "the man"},
        {"questionId": "g3", "prediction": "left"},
        {"questionId": "g4", "prediction": "no"},
    ]
    result = eval_gqa.evaluate_gqa(eval_gqa.load_questions(questions_file), json.loads(dst.read_text()))
    # 3 of 4 balanced right; binary (verify g1, logical g4) 2/2; open (query g2, g3) 1/2
    assert (result["accuracy"], result["binary"], result["open"], result["count"]) == (75.0, 100.0, 50.0, 4)
    assert result["per_structural_type"] == {"logical": (100.0, 1), "query": (50.0, 2), "verify": (100.0, 1)}
    assert result["per_semantic_type"] == {"attr": (100.0, 1), "obj": (50.0, 2), "rel": (100.0, 1)}
    assert "Accuracy: 75.00%" in capsys.readouterr().out


def test_gqa_missing_prediction_is_an_error(tmp_path):
    questions_file, _ = gqa_fixture(tmp_path)
    with pytest.raises(ValueError, match="1 balanced question"):
        eval_gqa.evaluate_gqa(eval_gqa.load_questions(questions_file), [{"questionId": f"g{i}", "prediction": "x"} for i in (1, 2, 3)])


# ---------------------------------------------------------------- VQAv2, VizWiz, MM-Vet conversions


def test_vqav2_submission_covers_every_test_question(tmp_path, capsys):
    root = tmp_path / "vqav2"
    split = "llava_vqav2_mscoco_test-dev2015"
    write_jsonl(root / "llava_vqav2_mscoco_test2015.jsonl", [{"question_id": i, "image": f"{i}.jpg", "text": "q"} for i in (1, 2, 3, 4)])
    write_jsonl(root / "answers" / split / "m" / "merge.jsonl", [answer(1, "Two"), answer(2, "Yes."), answer(3, "the red one")])
    assert convert_vqav2_for_submission.main(["--dir", str(root), "--split", split, "--ckpt", "m"]) == 0
    assert "(1 left empty)" in capsys.readouterr().out
    assert json.loads((root / "answers_upload" / split / "m.json").read_text()) == [
        {"question_id": 1, "answer": "2"},
        {"question_id": 2, "answer": "yes"},
        {"question_id": 3, "answer": "red 1"},
        {"question_id": 4, "answer": ""},  # test2015 question outside test-dev
    ]
    with pytest.raises(ValueError, match="outside the test set"):
        convert_vqav2_for_submission.convert_vqav2([answer(9, "x")], [{"question_id": 1}])


def test_vizwiz_submission(tmp_path):
    questions = [{"question_id": 0, "image": "VizWiz_test_00000000.jpg", "text": "q"},
                 {"question_id": 1, "image": "VizWiz_test_00000001.jpg", "text": "q"}]  # fmt: skip
    annotation = write_jsonl(tmp_path / "llava_test.jsonl", questions)
    result = write_jsonl(tmp_path / "a.jsonl", [answer(1, "A Dog."), answer(0, "Unanswerable")])
    upload = tmp_path / "upload" / "m.json"
    args = ["--annotation-file", str(annotation), "--result-file", str(result), "--result-upload-file", str(upload)]
    assert convert_vizwiz_for_submission.main(args) == 0
    assert json.loads(upload.read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"},
        {"image": "VizWiz_test_00000001.jpg", "answer": "dog"},
    ]
    with pytest.raises(ValueError, match="test question 1 .*VizWiz_test_00000001.jpg.* has no answer"):
        convert_vizwiz_for_submission.convert_vizwiz([answer(0, "x")], questions)


def test_mmvet_results_file(tmp_path):
    src = write_jsonl(tmp_path / "a.jsonl", [answer(0, "A cat.\nIt sits."), answer(1, "42")])
    dst = tmp_path / "results" / "m.json"
    assert convert_mmvet_for_submission.main(["--src", str(src), "--dst", str(dst)]) == 0
    assert json.loads(dst.read_text()) == {"v1_0": "A cat.\nIt sits.", "v1_1": "42"}
    with pytest.raises(ValueError, match="question 0 is answered twice"):
        convert_mmvet_for_submission.convert_mmvet([answer(0, "a"), answer(0, "b")])


# ---------------------------------------------------------------- MMBench


MMBENCH_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                   "l2-category", "comment", "split"]  # fmt: skip


def write_mmbench_tsv(path: Path) -> Path:
    rows = [
        ["0", "What is shown?", "nan", "cat", "dog", "bird", "fish", "A", "cls", "aGVsbG8=" * 50, "src", "l2", "nan", "dev"],
        ["1", 'Say "hi"\tnow?', "A hint", "yes", "no", "", "", "B", "cls", "d29ybGQ=", "src", "l2", "nan", "dev"],
    ]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(MMBENCH_COLUMNS)
        writer.writerows(rows)
    return path


def read_xlsx(path: Path) -> list[list[str]]:
    """The cells of a one-sheet workbook as text, read straight from its XML."""
    ns = {"s": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(path) as zf:
        assert {"[Content_Types].xml", "xl/workbook.xml", "xl/worksheets/sheet1.xml"} <= set(zf.namelist())
        root = ElementTree.fromstring(zf.read("xl/worksheets/sheet1.xml"))
    table = []
    for row in root.iter(f"{{{ns['s']}}}row"):
        cells = {}
        for cell in row.findall("s:c", ns):
            column = "".join(ch for ch in cell.get("r") if ch.isalpha())
            text = cell.find("s:is/s:t", ns)
            cells[column] = text.text if text is not None else cell.find("s:v", ns).text
        width = max(ord(c) - ord("A") for c in cells) + 1
        table.append([cells.get(chr(ord("A") + i), "") for i in range(width)])
    return table


def test_mmbench_submission_sheet(tmp_path, capsys):
    tsv = write_mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv")
    answers = [
        answer(1, "B", round_id=0),
        answer(0, "A & <b>", round_id=0),  # XML special characters survive
        answer(0, "C", round_id=1),  # a rotated round: not submitted
    ]
    write_jsonl(tmp_path / "answers" / "m.jsonl", answers)
    args = ["--annotation-file", str(tsv), "--result-dir", str(tmp_path / "answers"),
            "--upload-dir", str(tmp_path / "upload"), "--experiment", "m"]  # fmt: skip
    assert convert_mmbench_for_submission.main(args) == 0
    table = read_xlsx(tmp_path / "upload" / "m.xlsx")
    assert table[0] == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert table[1] == ["0", "What is shown?", "cat", "dog", "bird", "fish", "A & <b>", "A", "dev"]
    assert table[2][:7] == ["1", 'Say "hi"\tnow?', "yes", "no", "", "", "B"]
    assert table[2][7:] == ["B", "dev"]


def test_mmbench_missing_answer_is_named(tmp_path):
    tsv = write_mmbench_tsv(tmp_path / "q.tsv")
    rows = jsonio.read_tsv(tsv)
    with pytest.raises(ValueError, match="1 question.* index 1"):
        convert_mmbench_for_submission.submission_table(rows, [answer(0, "A")])


def test_xlsx_column_letters():
    assert [convert_mmbench_for_submission.column_letter(i) for i in (0, 25, 26, 27, 701, 702)] == [
        "A", "Z", "AA", "AB", "ZZ", "AAA"
    ]  # fmt: skip


# ---------------------------------------------------------------- chunk merge


def test_chunk_bounds_split_evenly_and_never_leave_a_chunk_empty():
    # 5 questions over 4 chunks: sizes 2, 1, 1, 1 (not ceil-sized 2, 2, 1, 0)
    bounds = [chunk_bounds(5, 4, i) for i in range(4)]
    assert bounds == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert [get_chunk(list("abcde"), 2, i) for i in range(2)] == [["a", "b", "c"], ["d", "e"]]
    # fewer questions than chunks: the last chunks are the empty ones
    assert [chunk_bounds(2, 4, i) for i in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]
    with pytest.raises(ValueError, match="chunk_idx"):
        chunk_bounds(5, 2, 2)


def merge_fixture(tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question_id": f"q{i}", "text": "t"} for i in range(5)])
    chunk_dir = tmp_path / "answers"
    # 5 questions over 2 chunks: q0,q1,q2 | q3,q4; each chunk written out of order
    write_jsonl(chunk_dir / "2_0.jsonl", [answer("q1", "b"), answer("q2", "c"), answer("q0", "a")])
    write_jsonl(chunk_dir / "2_1.jsonl", [answer("q4", "e"), answer("q3", "d")])
    return questions, chunk_dir


def test_merge_keeps_question_order(tmp_path):
    questions, chunk_dir = merge_fixture(tmp_path)
    out = tmp_path / "merge.jsonl"
    merged = merge_chunks.merge_chunks(questions, chunk_dir, 2, out)
    assert [a["question_id"] for a in merged] == ["q0", "q1", "q2", "q3", "q4"]
    assert [a["text"] for a in read_jsonl(out)] == ["a", "b", "c", "d", "e"]


def test_merge_refuses_a_missing_chunk(tmp_path, capsys):
    questions, chunk_dir = merge_fixture(tmp_path)
    (chunk_dir / "2_1.jsonl").unlink()
    args = ["--question-file", str(questions), "--answers-dir", str(chunk_dir), "--num-chunks", "2", "--output-file", str(tmp_path / "m.jsonl")]
    assert merge_chunks.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: chunk 1 of 2 is missing") and "2_1.jsonl" in err
    assert not (tmp_path / "m.jsonl").exists()


def test_merge_refuses_a_truncated_chunk(tmp_path):
    questions, chunk_dir = merge_fixture(tmp_path)
    text = (chunk_dir / "2_1.jsonl").read_text()
    (chunk_dir / "2_1.jsonl").write_text(text[: len(text) - 15])  # the writer died mid-line
    with pytest.raises(ValueError, match=r"2_1\.jsonl: line 2 .*truncated"):
        merge_chunks.merge_chunks(questions, chunk_dir, 2)


def test_merge_refuses_an_empty_chunk(tmp_path):
    questions, chunk_dir = merge_fixture(tmp_path)
    (chunk_dir / "2_0.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"chunk 0 of 2 .*2_0\.jsonl.* is empty but should answer 3 questions"):
        merge_chunks.merge_chunks(questions, chunk_dir, 2)


def test_merge_refuses_missing_and_duplicated_answers(tmp_path):
    questions, chunk_dir = merge_fixture(tmp_path)
    write_jsonl(chunk_dir / "2_1.jsonl", [answer("q3", "d")])
    with pytest.raises(ValueError, match="1 question.* no answer .*: q4"):
        merge_chunks.merge_chunks(questions, chunk_dir, 2)
    write_jsonl(chunk_dir / "2_1.jsonl", [answer("q3", "d"), answer("q4", "e"), answer("q0", "again")])
    with pytest.raises(ValueError, match=r"'q0' \(round 0\) is answered 2 times \(in 2_0\.jsonl, 2_1\.jsonl\)"):
        merge_chunks.merge_chunks(questions, chunk_dir, 2)
    write_jsonl(chunk_dir / "2_1.jsonl", [answer("q3", "d"), answer("q4", "e"), answer("q9", "?")])
    with pytest.raises(ValueError, match="question_id 'q9', which is not in"):
        merge_chunks.merge_chunks(questions, chunk_dir, 2)


def test_merge_repeated_question_ids_and_other_question_formats(tmp_path):
    # TextVQA repeats question ids (image ids): each occurrence needs its own answer.
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question_id": "img1"}, {"question_id": "img1"}, {"question_id": "img2"}])
    write_jsonl(tmp_path / "a" / "1_0.jsonl", [answer("img2", "z"), answer("img1", "x"), answer("img1", "y")])
    assert [a["text"] for a in merge_chunks.merge_chunks(questions, tmp_path / "a", 1)] == ["x", "y", "z"]
    write_jsonl(tmp_path / "a" / "1_0.jsonl", [answer("img2", "z"), answer("img1", "x")])
    with pytest.raises(ValueError, match="img1"):
        merge_chunks.merge_chunks(questions, tmp_path / "a", 1)
    # ScienceQA: a JSON list with "id"; MMBench: a tsv with "index" and answers per option rotation.
    sqa = write_json(tmp_path / "sqa.json", [{"id": "p2"}, {"id": "p1"}])
    write_jsonl(tmp_path / "s" / "1_0.jsonl", [answer("p1", "A"), answer("p2", "B")])
    assert [a["question_id"] for a in merge_chunks.merge_chunks(sqa, tmp_path / "s", 1)] == ["p2", "p1"]
    tsv = write_mmbench_tsv(tmp_path / "mmb.tsv")
    rounds = [answer(1, "B", round_id=0), answer(1, "A", round_id=1), answer(0, "A", round_id=0)]
    write_jsonl(tmp_path / "m" / "1_0.jsonl", rounds)
    merged = merge_chunks.merge_chunks(tsv, tmp_path / "m", 1)
    assert [(a["question_id"], a["round_id"]) for a in merged] == [(0, 0), (1, 0), (1, 1)]


# ---------------------------------------------------------------- shell scripts


EVAL_SCRIPTS = sorted(SCRIPTS.glob("*.sh"))


def test_every_benchmark_has_a_script():
    names = {p.stem for p in EVAL_SCRIPTS}
    expected = {"vqav2", "gqa", "vizwiz", "textvqa", "pope", "mme", "sqa", "mmbench", "mmbench_cn", "seed",
                "mmvet", "llavabench", "llava_coco", "_common",
                "llavacoco", "llavacoco_review", "llavabench_review"}  # the release's two-step names  # fmt: skip
    assert expected <= names


@pytest.mark.parametrize("script", EVAL_SCRIPTS, ids=lambda p: p.name)
def test_script_parses(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


FAKE_GENERATOR = '''
import argparse, json, os, sys
from llava.answers.engine import split_chunks as get_chunk
from llava.answers.jsonio import read_jsonl
p = argparse.ArgumentParser()
for flag in ("--model-path", "--question-file", "--answers-file", "--conv-mode", "--image-folder"):
    p.add_argument(flag)
p.add_argument("--num-chunks", type=int); p.add_argument("--chunk-idx", type=int); p.add_argument("--temperature")
a = p.parse_args()
if os.environ.get("FAKE_FAIL_CHUNK") == str(a.chunk_idx):
    sys.exit(3)
with open(a.answers_file, "w") as f:
    for q in get_chunk(read_jsonl(a.question_file), a.num_chunks, a.chunk_idx):
        rec = {"question_id": q["question_id"], "text": os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu", "prompt": a.model_path}
        f.write(json.dumps(rec) + "\\n")
'''


def run_common(tmp_path, devices, extra_env=None):
    (tmp_path / "fake_gen.py").write_text(FAKE_GENERATOR)
    questions = write_jsonl(tmp_path / "q.jsonl", [{"question_id": i} for i in range(5)])
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PYTHONPATH=str(tmp_path), PYTHON=sys.executable, CKPT="ckpt/my-model", **(extra_env or {}))
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    command = f'source "{SCRIPTS / "_common.sh"}"; run_generation fake_gen "{questions}" "{tmp_path / "chunks"}" "{tmp_path / "merged.jsonl"}" --image-folder imgs'
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.slow
@pytest.mark.e2e
def test_common_runs_one_process_per_gpu_and_merges(tmp_path):
    proc = run_common(tmp_path, "3,5")
    assert proc.returncode == 0, proc.stderr
    merged = read_jsonl(tmp_path / "merged.jsonl")
    # 5 questions over the 2 GPUs: 0,1,2 on GPU 3 and 3,4 on GPU 5, merged in question order
    assert [(a["question_id"], a["text"]) for a in merged] == [(0, "3"), (1, "3"), (2, "3"), (3, "5"), (4, "5")]
    assert merged[0]["prompt"] == "ckpt/my-model"
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == ["2_0.jsonl", "2_1.jsonl"]


@pytest.mark.slow
@pytest.mark.e2e
def test_common_without_gpus_runs_one_process(tmp_path):
    proc = run_common(tmp_path, "")
    assert proc.returncode == 0, proc.stderr
    assert [a["text"] for a in read_jsonl(tmp_path / "merged.jsonl")] == ["cpu"] * 5


def test_common_fails_when_a_chunk_fails(tmp_path):
    proc = run_common(tmp_path, "0,1", {"FAKE_FAIL_CHUNK": "1"})
    assert proc.returncode != 0
    assert "generation of chunk 1 of 2 failed" in proc.stderr
    assert not (tmp_path / "merged.jsonl").exists()


@pytest.mark.parametrize("script", ["llavabench.sh", "llava_coco.sh"])
def test_gpt_judged_script_checks_the_key_before_generating(tmp_path, script):
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(EVAL_DIR=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(SCRIPTS / script)], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert "OPENAI_API_KEY is not set" in proc.stderr
    assert not any(tmp_path.iterdir())  # nothing generated or created

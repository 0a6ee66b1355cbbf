"""Inputs that must be refused at the boundary, naming file, record and field; failed writes keep the old file."""

from __future__ import annotations

import errno
import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from llava import utils
from llava.mm_utils import ImageTooLargeError, load_image, load_image_from_base64, open_image_header
from llava.train.data import scan_data
from llava.utils import WriteError, atomic_write_json, load_json, load_json_or_lines
from llava.visatb import check_data
from llava.visatb.scores import load_scores, record_score

REPO = Path(__file__).resolve().parents[1]


def record(rid, task="A", image=None, answer="red"):
    question = "<image>\nWhat colour?" if image else "What colour?"
    r = {"id": rid, "task": task,
         "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}  # fmt: skip
    if image is not None:
        r["image"] = image
    return r


# ------------------------------------------------------------------------------------------ scores


def test_a_negative_score_is_refused_naming_file_model_and_task(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text(json.dumps({"mini": {"A": -0.2, "B": 0.3}, "A": {"A": 0.5, "B": 0.3}}))
    with pytest.raises(ValueError, match=r"scores\.json: model 'mini', task 'A': score -0\.2 is negative"):
        load_scores(path)
    with pytest.raises(ValueError, match=r"model 'mini', task 'B'.*-1"):
        record_score(tmp_path / "other.json", "mini", "B", -1)
    assert not (tmp_path / "other.json").exists()


# ------------------------------------------------------------------------------------------ check_data


def test_check_data_refuses_duplicate_ids_naming_both_records(tmp_path, capsys):
    data = tmp_path / "val.json"
    data.write_text(json.dumps([record("q1"), record("q2"), record("q1"), record(2), record("2")]))
    assert check_data.main(["--data", str(data), "--tasks", "A"]) == 1
    out = capsys.readouterr().out
    assert "record ids used more than once" in out and ": 2" in out.split("more than once")[1].splitlines()[0]
    assert "record 2 (id 'q1'): id 'q1' is also record 0's" in out
    assert "record 4 (id '2'): id '2' is also record 3's" in out  # the scorer keys answers by str(id)
    assert check_data.main(["--data", str(data), "--tasks", "A", "--allow-duplicate-ids"]) == 0


def test_an_empty_gpt_answer_is_refused_by_check_data_and_by_training(tmp_path, capsys):
    records = [record("ok"), record("blank", answer="  "),
               {"id": "late", "task": "A", "conversations": [
                   {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                   {"from": "human", "value": "q2"}, {"from": "gpt", "value": ""}]}]  # fmt: skip
    data = tmp_path / "train.json"
    data.write_text(json.dumps(records))
    assert check_data.main(["--data", str(data), "--tasks", "A"]) == 1
    out = capsys.readouterr().out
    assert "record 1 (id 'blank'): turn 1 (gpt) is an empty answer" in out
    assert "record 2 (id 'late'): turn 3 (gpt) is an empty answer" in out
    with pytest.raises(ValueError, match=r"train\.json: 2 record\(s\) have a malformed conversation: "
                                         r"record 1 \(id 'blank'\): turn 1 \(gpt\) is an empty answer"):  # fmt: skip
        scan_data(data, None, ["A"])


def test_an_empty_reference_list_is_refused():
    records = [record("v0", answer=[]), record("v1", answer=["a red square", ""])]
    report = check_data.check_records(records, None, None, allow_reference_lists=True)
    assert report.problems[check_data.BAD_CONVERSATION].count == 2


def test_training_reads_duplicate_ids_as_they_are(tmp_path):
    data = tmp_path / "train.json"
    data.write_text(json.dumps([record("img1"), record("img1", answer="blue")]))
    assert len(scan_data(data, None, ["A"]).records) == 2


# ------------------------------------------------------------------------------------------ pixel limit


@pytest.fixture
def small_limit(monkeypatch):
    """A pixel limit of 1000: a 40x40 image (1600 pixels) is between 1x and 2x, where Pillow only warns."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)


def test_an_image_between_one_and_two_times_the_pixel_limit_is_an_error(tmp_path, small_limit):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 40), (9, 9, 9)).save(path)
    with pytest.raises(ImageTooLargeError, match=r"big\.png is too large"):
        load_image(path)
    with pytest.raises(ImageTooLargeError, match=r"big\.png is too large"):
        open_image_header(path)
    import base64

    with pytest.raises(ImageTooLargeError, match="base64"):
        load_image_from_base64(base64.b64encode(path.read_bytes()).decode())
    Image.new("RGB", (30, 30)).save(tmp_path / "fine.png")
    assert load_image(tmp_path / "fine.png").size == (30, 30)


def test_check_data_and_training_refuse_an_image_over_the_limit(tmp_path, small_limit, capsys):
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    data = tmp_path / "train.json"
    data.write_text(json.dumps([record("r0", image="big.png")]))
    assert check_data.main(["--data", str(data), "--image-folder", str(tmp_path), "--tasks", "A"]) == 1
    out = capsys.readouterr().out
    assert "images over Pillow's pixel limit" in out and "record 0 (id 'r0')" in out and "big.png" in out
    with pytest.raises(ImageTooLargeError, match=r"train\.json: record 0 \(id 'r0'\).*big\.png"):
        scan_data(data, tmp_path, ["A"])


@pytest.mark.slow
def test_a_real_10000_square_image_is_refused_without_decoding_it(tmp_path):
    # 10^8 pixels: over Pillow's default limit (89,478,485) but under twice it, where Pillow only warns.
    Image.new("1", (10000, 10000)).save(tmp_path / "huge.png")  # 12 kB on disk, 300 MB once decoded as RGB
    code = ("import resource, sys; from llava.mm_utils import load_image\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    load_image(sys.argv[1])\nexcept ValueError as e:\n    print('refused:', e)\n"
            "print('grew_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "huge.png")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "refused: image file" in proc.stdout and "huge.png is too large" in proc.stdout
    assert int(proc.stdout.split("grew_kb")[1]) < 50_000  # nothing near the 300 MB of the decoded image


# ------------------------------------------------------------------------------------------ JSON Lines


def test_json_lines_is_refused_for_training_data_with_a_conversion_command(tmp_path, capsys):
    lines = tmp_path / "train.jsonl"
    lines.write_text("\n".join(json.dumps(record(f"r{k}")) for k in range(3)) + "\n")
    assert check_data.main(["--data", str(lines), "--tasks", "A"]) == 2
    err = capsys.readouterr().err
    assert "train.jsonl: this is JSON Lines" in err and "JSON Lines is not accepted here" in err
    assert "python -m llava.utils jsonl-to-json" in err
    with pytest.raises(ValueError, match="JSON Lines is not accepted here"):
        scan_data(lines, None, ["A"])
    converted = tmp_path / "train.json"
    proc = subprocess.run([sys.executable, "-m", "llava.utils", "jsonl-to-json", str(lines), str(converted)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(converted.read_text()) == [record(f"r{k}") for k in range(3)]
    assert check_data.main(["--data", str(converted), "--tasks", "A"]) == 0


def test_json_lines_reader_names_a_bad_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2}\n{"id": 3\n')
    with pytest.raises(ValueError, match=r"q\.jsonl: JSON Lines: line 4"):
        load_json_or_lines(path)
    path.write_text('{"id": 1}\n\n{"id": 2}\n')
    assert load_json_or_lines(path) == [{"id": 1}, {"id": 2}]
    path.write_text('{"id": 1}\n')  # one record
    assert load_json_or_lines(path) == [{"id": 1}]
    path.write_text('[{"id": 1}]')
    assert load_json_or_lines(path) == [{"id": 1}]
    path.write_text('[{"id": 1}] x')  # not JSON Lines either: the plain JSON error
    with pytest.raises(ValueError, match="malformed JSON at line 1"):
        load_json(path)


# ------------------------------------------------------------------------------------------ failed writes


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_a_failed_write_names_the_file_and_keeps_the_previous_one(tmp_path, monkeypatch, code):
    path = tmp_path / "weights.json"
    atomic_write_json(path, {"old": 1})

    def full(fd):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(utils.os, "fsync", full)
    with pytest.raises(WriteError) as caught:
        atomic_write_json(path, {"new": 2})
    assert caught.value.errno == code and isinstance(caught.value, OSError)
    assert str(caught.value) == (f"cannot write {path}: {os.strerror(code)} (its previous version is left as it "
                                 "was)")  # fmt: skip
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["weights.json"]  # no temporary file left behind


def test_a_file_size_limit_names_the_file(tmp_path):
    path = tmp_path / "big.json"
    path.write_text('"old"')
    code = ("import sys; from llava.utils import atomic_write_text\n"
            "try:\n    atomic_write_text(sys.argv[1], 'x' * 300_000)\nexcept OSError as e:\n    print(e.errno, e)\n")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120, preexec_fn=limit)  # fmt: skip
    assert proc.stdout.startswith(f"{errno.EFBIG} cannot write {path}: File too large"), proc.stdout + proc.stderr
    assert path.read_text() == '"old"'


# ------------------------------------------------------------------------------------------ weighting


def load_weighting_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("weighting_visatb", REPO / "weighting_visatb.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def three_task_table(**changes) -> dict:
    table = {"mini": {"A": 0.2, "B": 0.3, "C": 0.4}, "A": {"A": 0.6, "B": 0.35, "C": 0.42},
             "B": {"A": 0.25, "B": 0.6, "C": 0.41}, "C": {"A": 0.22, "B": 0.33, "C": 0.7}}  # fmt: skip
    for key, value in changes.items():
        model, task = key.split("_")
        table[model][task] = value
    return table


@pytest.mark.parametrize(("changes", "message"), [
    ({"mini_A": -0.2}, re.escape("model key 'mini' on task 'A' (the mini model): score -0.2 is negative")),
    ({"mini_A": 1e308, "A_A": 1e-308},
     re.escape("model key 'mini' on task 'A' (the mini model): score 1e+308 is over 1e+06")),
    ({"mini_B": 1e-308, "B_B": 1e308}, re.escape("model key 'B' on task 'B' (the B-plus-mini model): score 1e+308")),
    ({"A_A": 1e-308}, r"the difficulty of task 'A' is -2e\+307, beyond .*model keys 'mini' and 'A'"),
])  # fmt: skip
def test_weighting_refuses_impossible_scores_naming_model_and_task(tmp_path, capsys, changes, message):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(three_task_table(**changes)))
    assert load_weighting_cli().main(["--scores", str(scores), "--tasks", "A,B,C"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {scores}: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


RELEASE_7B_RATIOS = ["0.7597", "0.5313", "0.8852", "0.7979", "0.5511", "0.8680", "0.1904"]
HAND_7B = ["--task-preset", "academic",
           "--out-contribution", "0.1637", "0.1903", "0.1952", "0.1433", "0.0768", "0.1316", "0.1582",
           "--in-contribution", "0.1634", "0.2179", "0.1326", "0.1775", "0.1674", "0.0783", "0.1219"]  # fmt: skip


def weights_line(out: str) -> list[float]:
    line = [x for x in out.splitlines() if x.startswith("VISATB_WEIGHTS=")][0]
    return [float(w) for w in line.split("=", 1)[1].strip('"').split()]


def test_the_release_difficulty_vectors_go_in_as_mini_ratio(capsys):
    cli = load_weighting_cli()
    assert cli.main(["--paper", "academic-7b"]) == 0
    paper = weights_line(capsys.readouterr().out)
    assert cli.main([*HAND_7B, "--mini-ratio", *RELEASE_7B_RATIOS]) == 0
    captured = capsys.readouterr()
    assert weights_line(captured.out) == paper and paper[6] == pytest.approx(1.6403)  # RefCOCO-bbox
    assert "WARNING" not in captured.err
    # Pasted as --difficulty, they invert the difficulty weights: a WARNING says so and names --mini-ratio.
    assert cli.main([*HAND_7B, "--difficulty", *RELEASE_7B_RATIOS]) == 0
    captured = capsys.readouterr()
    assert weights_line(captured.out)[6] == pytest.approx(0.6972)
    assert "WARNING: the --difficulty values average 0.65" in captured.err and "--mini-ratio" in captured.err
    # The paper's own D values (1 - ratio) pass without a warning.
    assert cli.main([*HAND_7B, "--difficulty", *[f"{1 - float(r):.4f}" for r in RELEASE_7B_RATIOS]]) == 0
    captured = capsys.readouterr()
    assert "WARNING" not in captured.err and weights_line(captured.out) == paper


def test_impossible_hand_difficulties_and_ratios_are_refused(capsys):
    cli = load_weighting_cli()
    assert cli.main([*HAND_7B, "--difficulty", "1.5", *["0.1"] * 6]) == 2
    assert "--difficulty: value 1 is 1.5; D = 1 - V(mini)/V(own) is at most 1" in capsys.readouterr().err
    assert cli.main([*HAND_7B, "--mini-ratio", "-0.1", *["0.9"] * 6]) == 2
    assert "--mini-ratio: value 1 is -0.1" in capsys.readouterr().err


def test_weighting_output_on_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, capsys, monkeypatch):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(three_task_table()))
    out = tmp_path / "weights.json"
    out.write_text('{"old": true}')

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils.os, "fsync", full)
    assert load_weighting_cli().main(["--scores", str(scores), "--tasks", "A,B,C", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot write {out}: No space left on device (its previous version is left as it was)\n"
    assert out.read_text() == '{"old": true}'


# ------------------------------------------------------------------------------------------ scorer


def answer(rid, reference="yes", prediction="yes"):
    return {"id": rid, "task": "GQA", "generator": "m",
            "conversations": [{"from": "human", "value": "q"},
                              {"from": "gpt", "value": reference, "generative_value": prediction}]}  # fmt: skip


def run_metric(metric_type: str, argv: list[str]) -> int:
    from llava.visatb.metrics.cli import main

    return main(metric_type, argv)


def test_the_scorer_refuses_duplicate_ids_naming_file_and_id(tmp_path, capsys):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps([answer("q1"), answer("q2"), answer("q1", reference="no")]))
    assert run_metric("qa", ["-a", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"error: {path}: record 2 (id 'q1'): id 'q1' is also record 0's" in err
    path.write_text(json.dumps([answer(1), answer("1")]))  # the same question, as answers are matched by text
    assert run_metric("qa", ["-a", str(path)]) == 1
    assert "record 1 (id '1'): id '1' is also record 0's" in capsys.readouterr().err


@pytest.mark.parametrize(("box", "reason"), [
    ("[0, 0, 1e999, 1]", "a coordinate is not finite [0.0, 0.0, inf, 1.0]"),
    ("[0, 0, 5e8, 1]", "a coordinate is beyond 1e+08"),
    ("[0.5, 0, 0.2, 1]", "no area"),
])  # fmt: skip
def test_the_scorer_refuses_absurd_reference_boxes_naming_the_record(tmp_path, capsys, box, reason):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps([answer("b0", "[0.1, 0.1, 0.5, 0.5]", "[0.1, 0.1, 0.5, 0.5]"),
                                answer("b1", box, box)]))  # fmt: skip
    assert run_metric("grounding", ["-a", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: record 1 (id 'b1'): reference '{box}' has no valid [x1, y1, x2, y2] box: {reason}" in err


def test_a_non_finite_predicted_box_is_a_miss():
    from llava.visatb.metrics.task_metrics import grounding_match

    assert grounding_match("[0.1, 0.1, 0.5, 0.5]", "[0.1, 0.1, 0.5, 0.5]")
    assert not grounding_match("[0, 0, 1e999, 0.5]", "[0.1, 0.1, 0.5, 0.5]")
    assert not grounding_match("[nan, 0.1, 0.5, 0.5]", "[0.1, 0.1, 0.5, 0.5]")


def test_an_answer_file_with_only_empty_answers_is_scored_with_a_warning(tmp_path, capsys):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps([answer(f"q{k}", prediction=" " if k else "") for k in range(3)]))
    assert run_metric("qa", ["-a", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "0 / 3 = 0.0"
    assert f"WARNING: {path}: all 3 answers are empty; it scores 0" in captured.err
    path.write_text(json.dumps([answer("q0", prediction=""), answer("q1")]))
    assert run_metric("qa", ["-a", str(path)]) == 0
    assert "WARNING" not in capsys.readouterr().err


def test_recording_a_score_on_a_full_disk_names_the_table_and_keeps_it(tmp_path, capsys, monkeypatch):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps([answer("q0")]))
    table = tmp_path / "scores.json"
    table.write_text('{"mini": {"GQA": 0.5}}')

    def full(fd):
        raise OSError(errno.EFBIG, "File too large")

    monkeypatch.setattr(utils.os, "fsync", full)
    assert run_metric("qa", ["-a", str(path), "--scores", str(table), "--model-key", "A", "--task", "GQA"]) == 1
    assert f"error: cannot write {table}: File too large (its previous version is left as it was)" in (
        capsys.readouterr().err
    )
    assert table.read_text() == '{"mini": {"GQA": 0.5}}'


# ------------------------------------------------------------------------------------------ JSON files


def test_a_model_key_given_twice_in_a_scores_table_is_refused(tmp_path, capsys):
    path = tmp_path / "scores.json"
    table = json.dumps(three_task_table())
    path.write_text(table[:-1] + ', "mini": {"A": 0.1, "B": 0.1, "C": 0.1}}')  # json.load would keep the last
    assert load_weighting_cli().main(["--scores", str(path), "--tasks", "A,B,C"]) == 2
    assert capsys.readouterr().err == f"error: {path}: key 'mini' appears twice in one object (JSON keeps only the last)\n"
    with pytest.raises(ValueError, match="key 'mini' appears twice"):
        load_scores(path)


def test_an_empty_file_and_a_byte_order_mark(tmp_path):
    path = tmp_path / "scores.json"
    path.write_text("")
    with pytest.raises(ValueError, match=r"scores\.json: the file is empty \(0 bytes\)"):
        load_json(path)
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(three_task_table()).encode())  # saved by a Windows editor
    assert load_scores(path) == three_task_table()


# ------------------------------------------------------------------------------------------ inference


@pytest.fixture(scope="module")
def tiny_generator(lively_checkpoint):
    from llava.generation import LlavaGenerator

    return LlavaGenerator.from_pretrained(lively_checkpoint, max_new_tokens=4, verbose=False)


def question_set(folder: Path, n: int = 9) -> tuple[list[dict], Path]:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        Image.new("RGB", (20 + i, 24), (20 * i, 90, 40)).save(images / f"{i}.png")
        records.append({"id": f"q{i}", "task": "GQA", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": f"<image>\nWhat is in picture {i}?"}, {"from": "gpt", "value": "a"}]})  # fmt: skip
    return records, images


def run_cli(monkeypatch, generator, argv: list[str]) -> int:
    cli = load_script_module("inference_visatb.py")
    monkeypatch.setattr(cli.LlavaGenerator, "from_pretrained", lambda *args, **kwargs: generator)
    return cli.main(argv)


def load_script_module(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name[:-3], REPO / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cli_args(question_file: Path, images: Path, answers: Path, *extra: str) -> list[str]:
    return ["--model-path", "llava-tiny-x/llava-tiny", "--image-folder", str(images), "--question-file",
            str(question_file), "--answers-folder", str(answers), "--max_new_tokens", "4", "--batch-size", "3",
            "--quiet", *extra]  # fmt: skip


def test_inference_takes_json_lines_question_files_and_refuses_duplicate_ids(tmp_path, monkeypatch, capsys,
                                                                              tiny_generator):  # fmt: skip
    from llava.answers.validation_answers import load_questions

    records, images = question_set(tmp_path)
    listed, lines = tmp_path / "list" / "GQA_val.json", tmp_path / "lines" / "GQA_val.jsonl"
    listed.parent.mkdir()
    lines.parent.mkdir()
    listed.write_text(json.dumps(records))
    lines.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert load_questions(lines) == records
    assert run_cli(monkeypatch, tiny_generator, cli_args(listed, images, tmp_path / "a1")) == 0
    assert run_cli(monkeypatch, tiny_generator, cli_args(lines, images, tmp_path / "a2")) == 0
    first = json.loads((tmp_path / "a1" / "GQA-val_llava-tiny.json").read_text())
    assert json.loads((tmp_path / "a2" / "GQA-val_llava-tiny.json").read_text()) == first and len(first) == 9
    capsys.readouterr()
    doubled = tmp_path / "Dup_val.json"
    doubled.write_text(json.dumps(records + [records[4]]))
    assert run_cli(monkeypatch, tiny_generator, cli_args(doubled, images, tmp_path / "a3")) == 1
    assert capsys.readouterr().err == (f"error: {doubled}: record 9 (id 'q4'): id 'q4' is also record 4's; each "
                                       "question must appear once, or its answer is scored twice\n")  # fmt: skip


def test_ctrl_c_during_inference_says_what_is_kept_and_a_rerun_resumes(tmp_path, monkeypatch, capsys,
                                                                        tiny_generator):  # fmt: skip
    records, images = question_set(tmp_path)
    questions = tmp_path / "GQA_val.json"
    questions.write_text(json.dumps(records))
    real_generate = tiny_generator.generate_prepared
    calls = []

    def interrupt_on_third_batch(batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_generate(batch)

    monkeypatch.setattr(tiny_generator, "generate_prepared", interrupt_on_third_batch)
    answers = tmp_path / "answers"
    assert run_cli(monkeypatch, tiny_generator, cli_args(questions, images, answers)) == 130
    partial = answers / "tmp" / "GQA-val_llava-tiny.partial.json"
    assert capsys.readouterr().err == f"interrupted: 6 answers kept in {partial}; rerun to resume\n"
    assert len(json.loads(partial.read_text())["answers"]) == 6
    monkeypatch.setattr(tiny_generator, "generate_prepared", real_generate)
    assert run_cli(monkeypatch, tiny_generator, cli_args(questions, images, answers)) == 0
    assert "continued after 6 done before" in capsys.readouterr().out
    assert [a["id"] for a in json.loads((answers / "GQA-val_llava-tiny.json").read_text())] == [
        f"q{i}" for i in range(9)
    ]


def test_a_full_disk_during_inference_names_the_file_in_one_line(tmp_path, monkeypatch, capsys, tiny_generator):
    records, images = question_set(tmp_path)
    questions = tmp_path / "GQA_val.json"
    questions.write_text(json.dumps(records))
    answers = tmp_path / "answers"
    writes = []
    real_fsync = os.fsync

    def full_after_first_save(fd):
        writes.append(1)
        if len(writes) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(utils.os, "fsync", full_after_first_save)
    assert run_cli(monkeypatch, tiny_generator, cli_args(questions, images, answers, "--save-every", "1")) == 1
    partial = answers / "tmp" / "GQA-val_llava-tiny.partial.json"
    err = capsys.readouterr().err
    assert err == f"error: cannot write {partial}: No space left on device (its previous version is left as it was)\n"
    assert json.loads(partial.read_text())["next"] == 3  # the first save, intact


def test_sigterm_during_inference_keeps_the_answers_like_ctrl_c(tmp_path, monkeypatch, capsys, tiny_generator):
    import signal

    records, images = question_set(tmp_path)
    questions = tmp_path / "GQA_val.json"
    questions.write_text(json.dumps(records))
    real_generate = tiny_generator.generate_prepared
    calls = []

    def terminated_on_second_batch(batch):  # a scheduler's time limit sends SIGTERM
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_generate(batch)

    monkeypatch.setattr(tiny_generator, "generate_prepared", terminated_on_second_batch)
    before = signal.getsignal(signal.SIGTERM)
    answers = tmp_path / "answers"
    assert run_cli(monkeypatch, tiny_generator, cli_args(questions, images, answers)) == 143
    partial = answers / "tmp" / "GQA-val_llava-tiny.partial.json"
    assert capsys.readouterr().err == f"interrupted: 3 answers kept in {partial}; rerun to resume\n"
    assert signal.getsignal(signal.SIGTERM) is before


# ------------------------------------------------------------------------------------------ paths


def test_an_output_path_that_cannot_be_a_file_says_why(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "outdir").mkdir()
    with pytest.raises(WriteError, match=r"cannot write .*a\.png/sub/w\.json: .*a\.png is a file, not a folder "
                                         r"\(nothing was written\)"):  # fmt: skip
        atomic_write_json(tmp_path / "a.png" / "sub" / "w.json", {})
    with pytest.raises(WriteError, match=r"outdir: it is a folder; give a file path"):
        atomic_write_json(tmp_path / "outdir", {})
    assert (tmp_path / "a.png").read_bytes() == b"x" and not list((tmp_path / "outdir").iterdir())


def test_check_data_names_an_image_folder_that_is_a_file(tmp_path, capsys):
    data = tmp_path / "train.json"
    data.write_text(json.dumps([record("r0")]))
    assert check_data.main(["--data", str(data), "--image-folder", str(data)]) == 2
    assert capsys.readouterr().err == f"error: {data}: the image folder is a file, not a folder\n"


def test_ctrl_c_while_scoring_leaves_the_table_as_it_was(tmp_path, capsys, monkeypatch):
    from llava.visatb.metrics import cli

    path = tmp_path / "answers.json"
    path.write_text(json.dumps([answer("q0")]))
    table = tmp_path / "scores.json"
    table.write_text('{"mini": {"GQA": 0.5}}')

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "evaluate", interrupted)
    assert run_metric("qa", ["-a", str(path), "--scores", str(table), "--model-key", "A", "--task", "GQA"]) == 130
    assert capsys.readouterr().err.endswith(f"interrupted: {path} was not scored; {table} is unchanged\n")
    assert table.read_text() == '{"mini": {"GQA": 0.5}}'


@pytest.mark.e2e
def test_ctrl_c_while_inference_imports_torch_prints_one_line_and_exits_130(tmp_path):
    import signal
    import time

    command = [sys.executable, str(REPO / "inference_visatb.py"), "--model-path", str(tmp_path / "model"),
               "--image-folder", str(tmp_path), "--question-file", str(tmp_path / "q.json"), "--answers-folder",
               str(tmp_path / "answers")]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None and "libtorch" not in maps.read_text():
        time.sleep(0.01)  # until torch's libraries are loaded: the script is inside its imports
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    assert err == "interrupted while starting (importing torch): nothing was read or answered\n"
    assert not (tmp_path / "answers").exists()

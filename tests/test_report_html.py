"""report.html and the per-record scores behind it (llava/visatb/results/report_html.py, task_metrics.sample_scores).

The page is read back with html.parser: its score table must hold report.md's numbers, each task its records,
each answer its text (escaped) and its own score, and the pair counts the number of records two models answer
differently. The per-record scores must average to the task score (qa, grounding) and be pycocoevalcap's own
per-record CIDEr (caption, caption_list).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocoevalcap.cider.cider import Cider

from llava.answers.validation_answers import answers_path
from llava.visatb.metrics.task_metrics import evaluate, grounding_iou, sample_scores
from llava.visatb.results import report, report_html
from llava.visatb.tasks import CAPTION, CAPTION_LIST, GROUNDING, QA

SCRIPT = "<script>alert('x')</script> & \"quoted\""


def answer(reference, prediction, rid):
    return {"id": rid, "image": f"images/{rid}.png",
            "conversations": [{"from": "human", "value": f"<image>\nquestion {rid}"},
                              {"from": "gpt", "value": reference, "generative_value": prediction}]}  # fmt: skip


# ---------------------------------------------------------------------------- per-record scores


def test_qa_per_record_scores_are_matches_and_average_to_the_score():
    records = [answer("Yes", "yes.", "a"), answer("Two", " two ", "b"), answer("red", "blue", "c"),
               answer("Cat.", "cat", "d"), answer("3", "three", "e")]  # fmt: skip
    per = sample_scores(records, QA)
    assert per == [1.0, 1.0, 0.0, 1.0, 0.0]
    result = evaluate(records, QA)
    assert result.correct == 3 and result.score == pytest.approx(0.6) and result.score == np.mean(per)


def test_grounding_per_record_iou_and_hit_average_to_the_score():
    ref = "[0.0, 0.0, 0.4, 0.4]"
    # IoU by hand: same box 1; [0.1,0.1,0.5,0.5]: 0.09 / (0.16 + 0.16 - 0.09) = 0.3913; [0,0,0.4,0.3]: 0.12/0.16 = 0.75
    preds = ["[0.0, 0.0, 0.4, 0.4]", "[0.1, 0.1, 0.5, 0.5]", "[0.0, 0.0, 0.4, 0.3]", "no box here"]
    records = [answer(ref, p, str(i)) for i, p in enumerate(preds)]
    ious = [grounding_iou(p, ref) for p in preds]
    assert ious[0] == pytest.approx(1.0) and ious[1] == pytest.approx(0.09 / 0.23) and ious[2] == pytest.approx(0.75)
    assert ious[3] is None
    per = sample_scores(records, GROUNDING)
    assert per == [1.0, 0.0, 1.0, 0.0]
    assert evaluate(records, GROUNDING).score == np.mean(per) == 0.5


@pytest.mark.parametrize("metric", [CAPTION, CAPTION_LIST])
def test_cider_per_record_scores_are_pycocoevalcaps(metric):
    refs = ["a red square on the left", "a blue circle in the middle", "two green triangles", "a small yellow star"]
    preds = ["a red square", "a blue circle in the middle", "one green triangle", "a big star on the right"]
    if metric == CAPTION_LIST:
        refs = [[r, r.replace("a ", "the ")] for r in refs]
    records = [answer(r, p, str(i)) for i, (r, p) in enumerate(zip(refs, preds))]
    gts = {i: (r if isinstance(r, list) else [r]) for i, r in enumerate(refs)}
    mean, own = Cider().compute_score(gts, {i: [p] for i, p in enumerate(preds)})
    per = sample_scores(records, metric)
    assert per == [float(v) for v in own]
    assert len(set(per)) == 4  # the records do score differently
    assert evaluate(records, metric).score == float(mean)


# ---------------------------------------------------------------------------- the page


class PageReader(HTMLParser):
    """The parts of report.html the tests read: the score table, the weights table, sections, records, answers."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.sections: dict[str, dict] = {}
        self.scripts: list[str] = []
        self.images = 0
        self._stack: list[tuple[str, dict]] = []
        self._table = self._row = self._cell = None
        self._section = self._record = self._model = None
        self._field: str | None = None
        self._script: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images += 1
            return
        if tag in ("meta", "input", "br"):
            return
        self._stack.append((tag, a))
        cls = a.get("class", "")
        if tag == "table" and a.get("id"):
            self._table = self.tables.setdefault(a["id"], [])
        elif tag == "tr" and self._table is not None and self._section is None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "section":
            self._section = {"models": json.loads(a["data-models"]), "total": int(a["data-total"]), "records": {}}
            self.sections[a["data-task"]] = self._section
        elif tag == "div" and cls == "rec":
            self._record = {"groups": [int(g) for g in a["data-groups"].split()], "answers": {}, "scores": {},
                            "question": ""}  # fmt: skip
            self._section["records"][a["data-key"]] = self._record
        elif tag == "tr" and "data-model" in a:
            self._model = a["data-model"]
        elif tag == "div" and cls == "answer" and self._model:
            self._field = "answer"
            self._record["answers"][self._model] = ""
        elif tag == "td" and cls == "score" and self._model:
            self._field = "score"
            self._record["scores"][self._model] = ""
        elif tag == "div" and cls == "question":
            self._field = "question"
        elif tag == "script":
            self._script = []
        elif tag == "span" and cls == "embedded":
            self._field = "embedded"

    def handle_endtag(self, tag):
        while self._stack:
            open_tag, _ = self._stack.pop()
            if open_tag == tag:
                break
        if tag == "table":
            self._table = self._row = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "section":
            self._section = None
        elif tag == "script":
            self.scripts.append("".join(self._script))
            self._script = None
        elif tag == "tr":
            self._model = None
        if tag in ("div", "td", "span"):
            self._field = None

    def handle_data(self, data):
        if self._script is not None:
            self._script.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._field == "answer":
            self._record["answers"][self._model] += data
        elif self._field == "score":
            self._record["scores"][self._model] += data
        elif self._field == "question":
            self._record["question"] += data
        elif self._field == "embedded":
            self._section["embedded"] = int(data)


def read_page(path: Path) -> PageReader:
    reader = PageReader()
    reader.feed(path.read_text(encoding="utf-8"))
    reader.close()
    return reader


def markdown_table(markdown: str) -> list[list[str]]:
    """The first table of report.md, cells without the bold marks."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("| model |")]
    start = markdown.splitlines().index(lines[0])
    rows = []
    for line in markdown.splitlines()[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*") for c in line.strip().strip("|").split("|")])
    return [rows[0], *rows[2:]]


TASKS = {"Cap": CAPTION, "CapList": CAPTION_LIST, "QA": QA, "Box": GROUNDING}
MODELS = ("mini", "EW", "VisATB")


def _val_records(task: str, n: int) -> list[dict]:
    records = []
    for i in range(n):
        rid = f"{task}-{i}"
        if TASKS[task] == CAPTION:
            ref = f"a shape number {i} in red"
        elif TASKS[task] == CAPTION_LIST:
            ref = [f"shape {i} red", f"the red shape {i}"]
        elif TASKS[task] == QA:
            ref = "yes" if i % 2 else "no"
        else:
            ref = f"[0.0, 0.0, 0.{i % 5 + 4}, 0.5]"
        records.append({"id": rid, "image": f"images/{i % 3}.png", "task": task,
                        "conversations": [{"from": "human", "value": f"<image>\nquestion {i} of {task}?"},
                                          {"from": "gpt", "value": ref}]})  # fmt: skip
    return records


def _prediction(task: str, model: str, i: int, ref) -> str:
    if task == "QA" and model == "VisATB" and i == 0:
        return SCRIPT
    if model == "mini":
        return "no" if TASKS[task] == QA else ("[0.5, 0.5, 0.9, 0.9]" if TASKS[task] == GROUNDING else "a shape")
    if model == "VisATB" and i % 3 == 0:  # VisATB answers every third record differently from EW
        return "yes" if TASKS[task] == QA else ("[0.0, 0.0, 0.3, 0.3]" if TASKS[task] == GROUNDING else f"shape {i}")
    return ref[0] if isinstance(ref, list) else ref


@pytest.fixture
def work(tmp_path):
    """A finished chain's files for four tasks and three models: validation sets, answers, scores, weights, heatmap."""
    (tmp_path / "data" / "images").mkdir(parents=True)
    for k, color in enumerate(("red", "green", "blue")):
        Image.new("RGB", (32, 32), color).save(tmp_path / "data" / "images" / f"{k}.png")
    Image.new("RGB", (50, 40), "white").save(tmp_path / "heatmap.png")
    sizes = {"Cap": 7, "CapList": 6, "QA": 9, "Box": 8}
    val_files, scores, expected = {}, {m: {} for m in MODELS}, {}
    for task, n in sizes.items():
        val = _val_records(task, n)
        val_file = tmp_path / "data" / f"{task}_val-{n}.json"
        val_file.write_text(json.dumps(val))
        val_files[task] = str(val_file)
        for model in MODELS:
            answers = []
            for i, record in enumerate(val):
                ref = record["conversations"][1]["value"]
                answers.append({**record, "conversations": [record["conversations"][0],
                                {"from": "gpt", "value": ref, "generative_value": _prediction(task, model, i, ref)}],
                                "generator": f"llava-{model}"})  # fmt: skip
            if task == "QA" and model == "mini":
                answers = answers[:-1]  # one record left unanswered
            path = answers_path(tmp_path / "answers" / model, val_file, f"llava-toy-{model}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(answers))
            scores[model][task] = evaluate(answers, TASKS[task]).score
            expected[model, task] = (answers, sample_scores(answers, TASKS[task]))
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    weights = {"tasks": list(TASKS), "scored_tasks": list(TASKS), "temperature": 1.0,
               "out_contribution": [0.1, 0.2, None, 0.4], "in_contribution": [0.5, 0.6, 0.7, 0.8],
               "difficulty": [0.9, 1.0, 1.1, 1.2], "weights": {"final": [0.8, 0.9, 1.1, 1.2]},
               "visatb_weights": [0.8, 0.9, 1.1, 1.2]}  # fmt: skip
    (tmp_path / "weights.json").write_text(json.dumps(weights))
    return {"dir": tmp_path, "val_files": val_files, "expected": expected, "scores": scores}


def _run_report(work, *extra) -> int:
    d = work["dir"]
    return report.main(["--scores", str(d / "scores.json"), "--tasks", ",".join(TASKS),
                        "--metrics", ",".join(f"{t}={m}" for t, m in TASKS.items()), "--weights", str(d / "weights.json"),
                        "--plot", "heatmap.png", "--output", str(d / "report.md"), "--html", str(d / "report.html"),
                        "--answers-dir", str(d / "answers"), "--image-folder", str(d / "data"),
                        "--val-files", ",".join(f"{t}={p}" for t, p in work["val_files"].items()), *extra])  # fmt: skip


def _expected_score_text(metric, answers, per, index):
    if metric in (CAPTION, CAPTION_LIST):
        return f"CIDEr {per[index]:.4f}"
    if metric == QA:
        return "match" if per[index] else "no match"
    turn = answers[index]["conversations"][1]
    iou = grounding_iou(turn["generative_value"], turn["value"])
    return f"{'no box' if iou is None else f'IoU {iou:.3f}'}, {'hit' if per[index] else 'miss'}"


def test_page_holds_report_md_numbers_every_record_answer_and_score(work, capsys):
    assert _run_report(work) == 0
    assert "wrote " + str(work["dir"] / "report.html") in capsys.readouterr().out
    page = read_page(work["dir"] / "report.html")
    md = (work["dir"] / "report.md").read_text()
    assert page.tables["scores"] == markdown_table(md)
    # the numbers themselves, from the scores: CIDEr to 4 places, accuracies in %
    row = {r[0]: r[1:] for r in page.tables["scores"][1:]}
    assert row["EW"][2] == f"{100 * work['scores']['EW']['QA']:.2f}"
    assert row["VisATB"][0] == f"{work['scores']['VisATB']['Cap']:.4f}"
    assert page.tables["weights"][1] == ["Cap", "0.1000", "0.5000", "0.9000", "0.8000"]
    assert page.tables["weights"][3][1] == "n/a"

    assert set(page.sections) == set(TASKS)
    for task, metric in TASKS.items():
        section = page.sections[task]
        assert section["models"] == list(MODELS)
        val = json.loads(Path(work["val_files"][task]).read_text())
        assert list(section["records"]) == [r["id"] for r in val]  # every record, in order (under the cap)
        assert section["embedded"] == section["total"] == len(val)
        for model in MODELS:
            answers, per = work["expected"][model, task]
            for i, a in enumerate(answers):
                record = section["records"][a["id"]]
                assert record["answers"][model] == a["conversations"][1]["generative_value"]
                assert record["scores"][model] == _expected_score_text(metric, answers, per, i)
        assert section["records"][val[1]["id"]]["question"] == f"Q: question 1 of {task}?"
    # the unanswered record: no answer, no group
    last = page.sections["QA"]["records"]["QA-8"]
    assert last["groups"][0] == -1 and last["scores"]["mini"] == "-"


def test_a_script_in_an_answer_is_text(work):
    assert _run_report(work) == 0
    text = (work["dir"] / "report.html").read_text()
    page = read_page(work["dir"] / "report.html")
    assert page.sections["QA"]["records"]["QA-0"]["answers"]["VisATB"] == SCRIPT
    assert "<script>alert" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert len(page.scripts) == 2  # the page's own: the pair counts (JSON) and the filter


def test_pair_counts_and_groups_match_an_independent_count(work):
    assert _run_report(work) == 0
    page = read_page(work["dir"] / "report.html")
    counts = json.loads(page.scripts[0])
    for task in TASKS:
        by_id = {m: {a["id"]: a["conversations"][1]["generative_value"] for a in work["expected"][m, task][0]}
                 for m in MODELS}  # fmt: skip
        section = page.sections[task]
        for i, a in enumerate(MODELS):
            for j, b in enumerate(MODELS):
                differ = [k for k in by_id[a] if k in by_id[b] and by_id[a][k] != by_id[b][k]]
                assert counts[task][i][j] == len(differ), (task, a, b)
                shown = [k for k, r in section["records"].items()
                         if min(r["groups"][i], r["groups"][j]) >= 0 and r["groups"][i] != r["groups"][j]]  # fmt: skip
                assert shown == differ
    # EW and VisATB differ on every third record (0, 3, 6), but on QA's record 3 VisATB's "yes" is EW's too
    assert [counts[t][1][2] for t in TASKS] == [3, 2, 2, 3]


def test_the_cap_embeds_differing_records_first_then_a_fixed_sample(work):
    assert _run_report(work, "--html-max-records", "4") == 0
    page = read_page(work["dir"] / "report.html")
    qa = page.sections["QA"]
    assert qa["embedded"] == 4 and qa["total"] == 9
    keys = list(qa["records"])
    assert {"QA-0", "QA-6"} <= set(keys) and len(keys) == 4  # EW/VisATB's differing records first
    assert keys == sorted(keys, key=lambda k: int(k.split("-")[1]))
    text = (work["dir"] / "report.html").read_text()
    assert "4 of 9 records: first those the default pair answers differently" in text
    first = keys
    assert _run_report(work, "--html-max-records", "4") == 0
    assert list(read_page(work["dir"] / "report.html").sections["QA"]["records"]) == first  # deterministic
    assert _run_report(work, "--html-max-records", "2") == 0
    assert list(read_page(work["dir"] / "report.html").sections["QA"]["records"]) == ["QA-0", "QA-6"]


def test_images_are_embedded_and_the_page_loads_nothing(work):
    assert _run_report(work) == 0
    text = (work["dir"] / "report.html").read_text()
    page = read_page(work["dir"] / "report.html")
    assert page.images == 1 + sum(len(s["records"]) for s in page.sections.values())  # heatmap + one per record
    sources = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "http://" not in text and "https://" not in text


def test_missing_image_and_bad_arguments_are_reported(work, capsys):
    (work["dir"] / "data" / "images" / "2.png").unlink()
    assert _run_report(work) == 0
    assert "image not found: images/2.png" in (work["dir"] / "report.html").read_text()
    d = work["dir"]
    code = report.main(["--scores", str(d / "scores.json"), "--tasks", "QA", "--metrics", "QA=qa",
                        "--html", str(d / "x.html")])  # fmt: skip
    assert code == 2 and "--html needs --answers-dir and --val-files" in capsys.readouterr().err
    assert _run_report(work, "--html-max-records", "0") == 2
    assert "--html-max-records must be at least 1" in capsys.readouterr().err


def test_find_answer_file_follows_the_answer_naming(tmp_path):
    val = tmp_path / "My_Task_val-10.json"
    own = answers_path(tmp_path / "answers" / "alone_X", val, "llava-toy_x")
    own.parent.mkdir(parents=True)
    own.write_text("[]")
    own.with_name(own.stem + ".provenance.json").write_text("{}")
    (own.parent / "My-Task-val-10-extra_llava.json").write_text("[]")  # another question file's answers
    assert report_html.find_answer_file(tmp_path / "answers", "alone:X", str(val)) == own
    assert report_html.find_answer_file(tmp_path / "answers", "EW", str(val)) is None


def test_task_groups_give_the_group_table_and_per_task_answers(work):
    assert _run_report(work, "--task-groups", "Captions=Cap;Lists=CapList;Answers=QA;Boxes=Box") == 0
    page = read_page(work["dir"] / "report.html")
    assert page.tables["scores"] == markdown_table((work["dir"] / "report.md").read_text())
    assert page.tables["scores"][0][1:] == ["Captions (CIDEr)", "Lists (CIDEr)", "Answers (acc %)", "Boxes (acc %)"]
    assert set(page.sections) == set(TASKS)  # answers stay per task, scored with the task's own metric
    assert page.sections["Box"]["records"]["Box-0"]["scores"]["VisATB"].endswith("miss")


def test_gpt_review_answers_are_shown_without_a_per_record_score(work):
    from llava.visatb.tasks import GPT_REVIEW

    val_file = work["val_files"]["Cap"]
    files = {m: report_html.find_answer_file(work["dir"] / "answers", m, val_file) for m in ("EW", "VisATB")}
    view = report_html.load_task("Cap", GPT_REVIEW, val_file, files)
    assert all(a.score is None for a in view.answers["EW"].values())
    text = report_html.render_page(work["scores"], ["Cap"], {"Cap": CAPTION}, [view])
    page = PageReader()
    page.feed(text)
    record = page.sections["Cap"]["records"]["Cap-0"]
    assert record["scores"] == {"EW": "-", "VisATB": "-"} and record["answers"]["VisATB"] == "shape 0"

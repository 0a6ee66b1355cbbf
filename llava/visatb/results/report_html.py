"""report.html: the report's tables and, per task, every model's answers side by side, in one file.

Written by `python -m llava.visatb.results.report ... --html report.html --answers-dir WORK_DIR/answers
--val-files TASK=FILE,...` (the chain's report stage). The page needs no server and no network: the CSS and
JavaScript are inline and the images are embedded as data URIs (the heatmap as it is, each record's image as a
thumbnail at most `THUMB_SIDE` pixels on its longer side), so the file can be copied off the cluster alone.

Per task it shows at most `max_records` records (the validation set's order): first every record on which the
default pair of models (EW and VisATB when both answered) gives different answer text, then a fixed random
sample (seeded) of the others. The page says how many of how many records it shows, and for any two models
chosen in its dropdowns how many records of the whole set they answer differently.

Each answer carries its own score, from the same computation as the task's score
(llava.visatb.metrics.task_metrics.sample_scores, whose mean is the task score): CIDEr within the model's
answer file for caption and caption_list, IoU and hit (IoU > 0.5) for grounding, exact match for qa.
"""

from __future__ import annotations

import base64
import html
import io
import json
import mimetypes
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llava.answers.validation_answers import question_name
from llava.utils import atomic_write_text, load_json_or_lines
from llava.visatb.results import report
from llava.visatb.scores import EW, VISATB
from llava.visatb.tasks import CAPTION, CAPTION_LIST, GPT_REVIEW, GROUNDING, QA

DEFAULT_MAX_RECORDS = 200
THUMB_SIDE = 160  # the width the page shows images at
SAMPLE_SEED = 0
# An image file this small is embedded as it is; a larger one becomes a JPEG thumbnail.
SMALL_IMAGE_BYTES = 24_000
NO_ANSWER = -1


@dataclass
class Answer:
    """One model's answer to one record, with its own score (None where the metric has no per-record score)."""

    text: str
    score: float | None
    iou: float | None = None


@dataclass
class TaskView:
    """One task's records and every model's answers to them."""

    task: str
    metric: str
    val_file: str
    records: list[dict]  # {"key", "image", "question", "references"}
    models: list[str]  # model keys with an answer file, in the report's row order
    files: dict[str, str]  # model key -> answer file
    answers: dict[str, dict[str, Answer]] = field(default_factory=dict)  # model -> record key -> answer

    def groups(self, key: str) -> list[int]:
        """Per model, the index of its answer text among the record's distinct answers (NO_ANSWER if none)."""
        seen: dict[str, int] = {}
        out = []
        for model in self.models:
            answer = self.answers[model].get(key)
            out.append(NO_ANSWER if answer is None else seen.setdefault(answer.text, len(seen)))
        return out

    def differing(self, a: str, b: str) -> list[int]:
        """Indices of the records both models answered with different text."""
        out = []
        for index, record in enumerate(self.records):
            x, y = self.answers[a].get(record["key"]), self.answers[b].get(record["key"])
            if x is not None and y is not None and x.text != y.text:
                out.append(index)
        return out


def record_key(record: Mapping[str, Any], index: int) -> str:
    """How answers are matched to questions: the record id (as text, with its round), or its position."""
    rid = record.get("id")
    if rid is None:
        return f"#{index}"
    return str(rid) if record.get("round_id") is None else f"{rid}/{record['round_id']}"


def find_answer_file(answers_dir: str | os.PathLike, model: str, val_file: str) -> Path | None:
    """The answer file of `model` (folder `safe_name(model)`) for `val_file`: `{question-name}_{model-name}.json`.

    The model name is not known here, so the one file with the question name's prefix is taken; of several
    (the model folder was answered under two names) the newest."""
    from llava.visatb.chain.workdir import safe_name

    folder = Path(answers_dir) / safe_name(model)
    prefix = question_name(val_file).replace("_", "-") + "_"
    found = [p for p in folder.glob(f"{prefix}*.json")
             if "_" not in p.name[len(prefix):] and not p.name.endswith(".provenance.json")]  # fmt: skip
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _question(record: Mapping[str, Any]) -> str:
    turns = record.get("conversations") or []
    text = turns[0].get("value", "") if turns and isinstance(turns[0], dict) else ""
    return str(text).replace("<image>\n", "").replace("\n<image>", "").replace("<image>", "").strip()


def _references(record: Mapping[str, Any]) -> list[str]:
    turns = record.get("conversations") or []
    value = turns[1].get("value") if len(turns) > 1 and isinstance(turns[1], dict) else None
    if isinstance(value, list):
        return [str(v) for v in value]
    return [] if value is None else [str(value)]


def load_task(task: str, metric: str, val_file: str, answer_files: Mapping[str, str | os.PathLike]) -> TaskView:
    """Read a task's validation file and each model's answer file, and score every answer on its own."""
    from llava.visatb.metrics.task_metrics import grounding_iou, load_answers, sample_scores

    questions = load_json_or_lines(val_file)
    if not isinstance(questions, list):
        raise ValueError(f"{val_file}: expected a list of validation records, got {type(questions).__name__}")
    records = []
    for index, q in enumerate(questions):
        if not isinstance(q, dict):
            raise ValueError(f"{val_file}: record {index}: expected an object, got {type(q).__name__}")
        records.append({"key": record_key(q, index), "image": q.get("image"), "question": _question(q),
                        "references": _references(q)})  # fmt: skip
    view = TaskView(task, metric, str(val_file), records, list(answer_files), {m: str(p) for m, p in answer_files.items()})
    for model, path in answer_files.items():
        if metric == GPT_REVIEW:  # the judge's scores are per question set, not per answer
            answers = load_json_or_lines(path)
            scores: list[float | None] = [None] * len(answers)
        else:
            answers = load_answers(path, metric)
            scores = list(sample_scores(answers, metric))
        own: dict[str, Answer] = {}
        for index, (record, score) in enumerate(zip(answers, scores)):
            turn = record["conversations"][1]
            iou = grounding_iou(turn["generative_value"], turn["value"]) if metric == GROUNDING else None
            own[record_key(record, index)] = Answer(str(turn.get("generative_value", "")), score, iou)
        view.answers[model] = own
    return view


def default_pair(models: Sequence[str]) -> tuple[str, str] | None:
    """EW and VisATB when both are there, else the last two models (the final ones come last)."""
    if EW in models and VISATB in models:
        return EW, VISATB
    return (models[-2], models[-1]) if len(models) >= 2 else None


def select_records(view: TaskView, pair: tuple[str, str] | None, max_records: int, seed: int = SAMPLE_SEED) -> list[int]:
    """The record indices to embed, in the validation set's order: the pair's differing records first, then a
    seeded sample of the rest, `max_records` in all."""
    total = len(view.records)
    if max_records >= total:
        return list(range(total))
    first = view.differing(*pair) if pair and all(m in view.answers for m in pair) else []
    chosen = first[:max_records]
    rest = sorted(set(range(total)) - set(chosen))
    chosen += random.Random(f"{seed}:{view.task}").sample(rest, max_records - len(chosen))
    return sorted(chosen)


# ---------------------------------------------------------------------------- images


def image_data_uri(path: str | os.PathLike, side: int = THUMB_SIDE) -> str | None:
    """A data URI of the image: the file itself when small, else a JPEG thumbnail; None when unreadable."""
    from PIL import Image

    path = Path(path)
    try:
        data = path.read_bytes()
        mime = mimetypes.guess_type(path.name)[0]
        if len(data) <= SMALL_IMAGE_BYTES and mime in ("image/png", "image/jpeg", "image/gif", "image/webp"):
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            image.thumbnail((side, side))
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return f"data:image/jpeg;base64,{base64.b64encode(out.getvalue()).decode('ascii')}"


# ---------------------------------------------------------------------------- page

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#222}
h1,h2,h3{line-height:1.2}table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccc;padding:3px 7px;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.controls{position:sticky;top:0;background:#fff;padding:.5em 0;border-bottom:1px solid #ccc;z-index:1}
.rec{display:flex;align-items:flex-start;gap:1em;border-top:1px solid #ddd;padding:.7em 0}
.rec img{width:160px;height:auto;flex:none;image-rendering:pixelated}
.rec .noimg{width:120px;color:#888;font-style:italic}.rec .body{flex:1;min-width:0}
.answer{white-space:pre-wrap;overflow-wrap:anywhere}.answers td:first-child{white-space:nowrap}
td.score{white-space:nowrap}tr.chosen td{background:#fff8dc}.differs{color:#b00;font-weight:bold}.rid{color:#888;font-size:90%}
.refs{margin:.2em 0;padding-left:1.2em}.hidden{display:none}.count{font-weight:bold}
"""

_JS = """
(function(){
  var a=document.getElementById('model-a'),b=document.getElementById('model-b'),
      only=document.getElementById('only-differ'),pairs=JSON.parse(document.getElementById('pair-counts').textContent);
  function update(){
    var ma=a.value,mb=b.value,total=0;
    document.querySelectorAll('section.task').forEach(function(sec){
      var models=JSON.parse(sec.dataset.models),ia=models.indexOf(ma),ib=models.indexOf(mb),shown=0,differ=0;
      sec.querySelectorAll('.rec').forEach(function(rec){
        var g=rec.dataset.groups.split(' ').map(Number);
        var d=ia>=0&&ib>=0&&ia!==ib&&g[ia]>=0&&g[ib]>=0&&g[ia]!==g[ib];
        if(d)differ++;
        rec.classList.toggle('hidden',only.checked&&!d);
        rec.querySelector('.differs').textContent=d?'differs':'';
        rec.querySelectorAll('tr[data-model]').forEach(function(tr){
          tr.classList.toggle('chosen',tr.dataset.model===ma||tr.dataset.model===mb);});
        if(!rec.classList.contains('hidden'))shown++;
      });
      total+=shown;
      var all=(ia>=0&&ib>=0)?pairs[sec.dataset.task][ia][ib]:null;
      sec.querySelector('.count').textContent=(all===null)?
        ('not both answered this task; '+shown+' record(s) shown'):
        (ma+' and '+mb+' differ on '+all+' of '+sec.dataset.total+' record(s), '+differ+' of them embedded; '+
         shown+' record(s) shown');
    });
    document.getElementById('shown-total').textContent=total;
  }
  [a,b,only].forEach(function(el){el.addEventListener('change',update);});
  update();
})();
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _score_table_html(scores: Mapping[str, Any], tasks: Sequence[str], metrics: Mapping[str, str]) -> str:
    """The report.md score table as HTML: the same cells, the best trained model per task in bold."""
    lines = report.score_table(scores, tasks, metrics).splitlines()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    out = ['<table id="scores"><thead><tr>' + "".join(f"<th>{_e(c)}</th>" for c in rows[0]) + "</tr></thead><tbody>"]
    for row in rows[2:]:
        cells = [f"<td>{_e(row[0])}</td>"]
        for cell in row[1:]:
            text = _e(cell.strip("*"))
            cells.append(f'<td class="num">{"<strong>" + text + "</strong>" if cell.startswith("**") else text}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def _weights_html(weights: Mapping[str, Any], plot: str | None) -> str:
    scored, final = weights["scored_tasks"], weights["weights"]["final"]
    out = ["<h2>Task weights</h2>", f"<p>{_e(report._weights_intro(weights))}</p>"]
    if plot:
        uri = image_data_uri(plot, side=1600)
        out.append(f'<p><img id="heatmap" alt="inter-task contribution and weights" src="{uri}" style="max-width:100%">'
                   if uri else f"<p>(heatmap {_e(plot)} not found)</p>")  # fmt: skip
    out.append('<table id="weights"><thead><tr><th>task</th><th>C_out</th><th>C_in</th><th>D</th><th>weight</th>'
               "</tr></thead><tbody>")  # fmt: skip
    for k, task in enumerate(scored):
        measures = [weights[key][k] for key in ("out_contribution", "in_contribution", "difficulty")]
        cells = "".join(f'<td class="num">{"n/a" if v is None else f"{v:.4f}"}</td>' for v in measures)
        out.append(f'<tr><td>{_e(task)}</td>{cells}<td class="num">{final[k]:.4f}</td></tr>')
    for task, weight in zip(weights["tasks"], weights["visatb_weights"]):
        if task not in scored:
            out.append(f'<tr><td>{_e(task)} (not scored)</td><td>-</td><td>-</td><td>-</td><td class="num">{weight:.4f}</td></tr>')
    return "\n".join(out) + "</tbody></table>"


def _answer_score(metric: str, answer: Answer) -> str:
    if metric in (CAPTION, CAPTION_LIST):
        return f"CIDEr {answer.score:.4f}"
    if metric == GROUNDING:
        iou = "no box" if answer.iou is None else f"IoU {answer.iou:.3f}"
        return f"{iou}, {'hit' if answer.score else 'miss'}"
    if metric == QA:
        return "match" if answer.score else "no match"
    return "-"


def _task_html(view: TaskView, chosen: list[int], image_folder: str | None, labels: Mapping[str, str],
               images: dict[str, str | None]) -> str:  # fmt: skip
    """One task's answer browser: its embedded records, each with every model's answer and score."""
    from llava.answers.validation_answers import image_path

    total = len(view.records)
    sampled = "every record" if len(chosen) == total else (
        f"{len(chosen)} of {total} records: first those the default pair answers differently, then a fixed "
        f"random sample (seed {SAMPLE_SEED}) of the others")  # fmt: skip
    out = [f'<section class="task" id="task-{_e(view.task)}" data-task="{_e(view.task)}" data-total="{total}" '
           f"data-models='{_e(json.dumps(view.models))}'>",
           f"<h3>{_e(view.task)} <small>({_e(view.metric)})</small></h3>",
           f'<p>Embedded: <span class="embedded">{len(chosen)}</span> of {total} records ({_e(sampled)}). '
           f'<span class="count"></span></p>']  # fmt: skip
    for index in chosen:
        record = view.records[index]
        path = image_path(record, image_folder) if record.get("image") else None
        if path is not None and path not in images:
            images[path] = image_data_uri(path)
        uri = images.get(path) if path else None
        if uri:
            picture = f'<img alt="{_e(record["image"])}" src="{uri}">'
        else:
            picture = f'<div class="noimg">{"no image" if path is None else "image not found: " + _e(record["image"])}</div>'
        groups = " ".join(str(g) for g in view.groups(record["key"]))
        out.append(f'<div class="rec" data-key="{_e(record["key"])}" data-groups="{groups}">{picture}<div class="body">')
        out.append(f'<div class="rid">{_e(record["key"])} <span class="differs"></span></div>')
        out.append(f'<div class="question"><b>Q:</b> {_e(record["question"])}</div>')
        refs = "".join(f"<li>{_e(r)}</li>" for r in record["references"])
        out.append(f'<div><b>Reference{"s" if len(record["references"]) > 1 else ""}:</b><ul class="refs">{refs}</ul></div>')
        out.append('<table class="answers"><tbody>')
        for model in view.models:
            answer = view.answers[model].get(record["key"])
            if answer is None:
                text, score = '<span class="rid">(no answer)</span>', "-"
            else:
                text, score = _e(answer.text), _e(_answer_score(view.metric, answer))
            out.append(f'<tr data-model="{_e(model)}"><td>{_e(labels.get(model, model))}</td>'
                       f'<td><div class="answer">{text}</div></td><td class="score">{score}</td></tr>')  # fmt: skip
        out.append("</tbody></table></div></div>")
    out.append("</section>")
    return "\n".join(out)


def pair_counts(view: TaskView) -> list[list[int]]:
    """For every two models of the task, on how many records of the whole set their answers differ."""
    n = len(view.models)
    groups = [view.groups(r["key"]) for r in view.records]
    return [[sum(1 for g in groups if g[i] >= 0 and g[j] >= 0 and g[i] != g[j]) for j in range(n)] for i in range(n)]


def render_page(
    scores: Mapping[str, Any], tasks: Sequence[str], metrics: Mapping[str, str], views: Sequence[TaskView],
    weights: Mapping[str, Any] | None = None, plot: str | None = None, image_folder: str | None = None,
    max_records: int = DEFAULT_MAX_RECORDS, title: str = "VisATB report",
) -> str:  # fmt: skip
    """The whole page (a string); `tasks`/`metrics` are the score table's columns (groups when grouped)."""
    order = report.model_order(scores, tasks)
    answered = {m for v in views for m in v.models}
    models = [m for m in order if m in answered] + sorted(answered - set(order))
    labels = {m: report.model_label(m, [*tasks, *(v.task for v in views)]) for m in models}
    pair = default_pair(models)
    options = {side: "".join(f'<option value="{_e(m)}"{" selected" if pair and m == pair[k] else ""}>{_e(labels[m])}'
                             "</option>" for m in models) for k, side in enumerate(("a", "b"))}  # fmt: skip
    body = [f"<h1>{_e(title)}</h1>",
            "<p>Validation scores of every model (CIDEr for captions, accuracy in % for QA and grounding, the GPT "
            "judge's relative score in % for gpt_review); the best trained model per task in bold. The same numbers "
            "as report.md.</p>", _score_table_html(scores, tasks, metrics)]  # fmt: skip
    if weights is not None:
        body.append(_weights_html(weights, plot))
    body += ["<h2>Answers</h2>",
             "<p>Each model's answer with its own score: CIDEr within the model's answer file (caption, "
             "caption_list), IoU and hit at IoU &gt; 0.5 (grounding), exact match after lowercasing and dropping a "
             "final period (qa); the task's score is the mean of these. <i>Differ</i>: both models answered and "
             "the answer texts are not identical.</p>",
             '<div class="controls">Compare <select id="model-a">' + options["a"] + '</select> and <select id="model-b">'
             + options["b"] + '</select> <label><input type="checkbox" id="only-differ"> only records where they '
             'differ</label> &middot; <span id="shown-total"></span> record(s) shown</div>']  # fmt: skip
    counts, images = {}, {}
    for view in views:
        chosen = select_records(view, pair if pair and all(m in view.answers for m in pair) else None, max_records)
        body.append(_task_html(view, chosen, image_folder, labels, images))
        counts[view.task] = pair_counts(view)
    if not views:
        body.append("<p>No answer files were found.</p>")
    data = json.dumps(counts).replace("</", "<\\/")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\"><title>{_e(title)}</title><style>{_CSS}</style>"
            "</head><body>\n" + "\n".join(body)
            + f'\n<script type="application/json" id="pair-counts">{data}</script>\n<script>{_JS}</script>\n'
            "</body></html>\n")  # fmt: skip


def parse_val_files(text: str) -> dict[str, str]:
    """`TASK=FILE,TASK=FILE` (a file name may not hold a comma)."""
    out = {}
    for pair in text.split(","):
        if not pair.strip():
            continue
        task, sep, path = pair.partition("=")
        if not sep or not task.strip() or not path.strip():
            raise ValueError(f"--val-files: {pair!r} is not TASK=FILE")
        out[task.strip()] = path.strip()
    return out


def write_html(
    output: str | os.PathLike, scores: Mapping[str, Any], tasks: Sequence[str], metrics: Mapping[str, str],
    task_metrics: Mapping[str, str], val_files: Mapping[str, str], answers_dir: str | os.PathLike,
    weights: Mapping[str, Any] | None = None, plot: str | None = None, image_folder: str | None = None,
    max_records: int = DEFAULT_MAX_RECORDS,
) -> list[TaskView]:  # fmt: skip
    """Find every scored model's answer files under `answers_dir`, build the page and write it to `output`.

    `task_metrics` and `val_files` are per task (the answer browser's); `tasks` and `metrics` the score table's."""
    if max_records < 1:
        raise ValueError(f"--html-max-records must be at least 1, got {max_records}")
    views = []
    for task, val_file in val_files.items():
        if task not in task_metrics:
            raise ValueError(f"--val-files: no metric type for task {task!r}")
        files = {}
        for model in report.model_order(scores, list(val_files)):
            found = find_answer_file(answers_dir, model, val_file)
            if found is not None:
                files[model] = found
        if files:
            views.append(load_task(task, task_metrics[task], val_file, files))
    if plot and not os.path.isabs(plot):
        plot = str(Path(output).parent / plot)
    page = render_page(scores, tasks, metrics, views, weights, plot, image_folder, max_records)
    atomic_write_text(Path(output), page)
    return views




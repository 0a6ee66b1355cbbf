"""The report of a VisATB run: per-task scores of every model, relative improvements, weights, learning checks.

    python -m llava.visatb.results.report --scores work/scores.json --task-preset toy --weights work/weights.json \
        --plot heatmap.png --output work/report.md

Rows follow the method: the untrained starting point (`start`, when scored), the `mini` model, each task's
task-plus-mini model, then the final EW and VisATB models. The learning checks say whether the numbers
can carry the method at all: every trained model must beat the starting point on every task, models
trained on full task data must beat the mini model on most comparisons, and no task may sit at zero (or at
its maximum, or at one value) for every model, or its contributions are meaningless. A failed check
prints a WARNING; `--strict` also makes the exit code 1. When the table holds an STL baseline for every
scored task (an `STL` row, or `alone:<task>` rows), "Against STL" gives each final model's dI % and dE %
(llava/visatb/results/compare.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava.utils import atomic_write_text, load_json
from llava.visatb.defaults import DEFAULT_ALPHA
from llava.visatb.results import compare
from llava.visatb.scores import (
    ALONE_PREFIX,
    EW,
    MINI,
    MINI_ALONE_PREFIX,
    START,
    STL,
    VISATB,
    group_scores,
    load_scores,
)
from llava.visatb.tasks import (
    CAPTION,
    CAPTION_LIST,
    CHAIN_METRIC_TYPES,
    GPT_REVIEW,
    GROUNDING,
    QA,
    check_task_groups,
    get_preset,
    parse_task_groups,
    parse_task_names,
)

# gpt_review scores are already percentages (the judge's relative score, llava.visatb.metrics.review_score).
METRIC_LABELS = {CAPTION: "CIDEr", CAPTION_LIST: "CIDEr", QA: "acc %", GROUNDING: "acc %", GPT_REVIEW: "rel %"}
ACCURACY_METRICS = (QA, GROUNDING)
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


@dataclass(frozen=True)
class CheckResult:
    """One learning check: its name, PASS / FAIL / SKIP, and what was found."""

    name: str
    status: str
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def model_order(scores: Mapping[str, Any], tasks: Sequence[str]) -> list[str]:
    """Model keys present in the table: start, mini, task-plus-mini models in task order, EW, VisATB, the rest."""
    preferred = [START, MINI, *tasks, EW, VISATB]
    ordered = [k for k in preferred if k in scores]
    return ordered + sorted(k for k in scores if k not in ordered)


def model_label(key: str, tasks: Sequence[str]) -> str:
    if key == START:
        return "start (untrained)"
    if key in tasks:
        return f"{key}-plus-mini"
    return key


def format_score(value: float | None, metric: str) -> str:
    if value is None:
        return "-"
    if metric in ACCURACY_METRICS:
        return f"{100 * value:.2f}"
    if metric == GPT_REVIEW:
        return f"{value:.2f}"
    return f"{value:.4f}"


def _score(scores: Mapping[str, Any], model: str, task: str) -> float | None:
    row = scores.get(model)
    value = row.get(task) if isinstance(row, Mapping) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def score_table(scores: Mapping[str, Any], tasks: Sequence[str], metrics: Mapping[str, str]) -> str:
    """Markdown table: one row per model, one column per task; the best trained model per task in bold."""
    models = model_order(scores, tasks)
    header = "| model | " + " | ".join(f"{t} ({METRIC_LABELS[metrics[t]]})" for t in tasks) + " |"
    lines = [header, "|---|" + "---:|" * len(tasks)]
    best = {}
    for task in tasks:
        values = [_score(scores, m, task) for m in models if m != START]
        values = [v for v in values if v is not None]
        best[task] = max(values) if values else None
    for model in models:
        cells = []
        for task in tasks:
            value = _score(scores, model, task)
            text = format_score(value, metrics[task])
            if model != START and value is not None and value == best[task]:
                text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {model_label(model, tasks)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def relative_change(value: float | None, reference: float | None) -> float | None:
    """(value - reference) / |reference|, or None when either is missing or the reference is 0."""
    if value is None or reference is None or reference == 0:
        return None
    return (value - reference) / abs(reference)


def relative_improvements(scores: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Per-task relative changes: EW and VisATB against each task's own task-plus-mini model, VisATB against EW."""
    rows: dict[str, dict[str, float | None]] = {}
    for model in (EW, VISATB):
        if model in scores:
            rows[f"{model} vs task-plus-mini"] = {
                t: relative_change(_score(scores, model, t), _score(scores, t, t)) for t in tasks
            }
    if EW in scores and VISATB in scores:
        rows["VisATB vs EW"] = {t: relative_change(_score(scores, VISATB, t), _score(scores, EW, t)) for t in tasks}
    return rows


def _mean(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}%"


def relative_table(rows: Mapping[str, Mapping[str, float | None]], tasks: Sequence[str]) -> str:
    lines = ["| comparison | " + " | ".join(tasks) + " | mean |", "|---|" + "---:|" * (len(tasks) + 1)]
    for name, changes in rows.items():
        values = [changes[t] for t in tasks]
        lines.append(f"| {name} | " + " | ".join(_pct(v) for v in values) + f" | {_pct(_mean(values))} |")
    return "\n".join(lines)


def relative_summary(rows: Mapping[str, Mapping[str, float | None]], tasks: Sequence[str]) -> list[str]:
    """One sentence per comparison: mean relative change and on how many tasks the first model is ahead."""
    sentences = []
    for name, changes in rows.items():
        values = [changes[t] for t in tasks if changes[t] is not None]
        if not values:
            continue
        ahead = sum(v > 0 for v in values)
        sentences.append(
            f"{name}: mean relative change {_pct(_mean(values))}, ahead on {ahead} of {len(values)} task(s)."
        )
    return sentences


def learning_checks(
    scores: Mapping[str, Any], tasks: Sequence[str], metrics: Mapping[str, str]
) -> list[CheckResult]:
    """The three checks of real learning (see the module docstring), over the scored tasks."""
    # The method's models: single-task (alone:), mini-alone: and STL rows are baselines, scored on what they
    # were not trained for, so they are left out of the checks.
    trained = [m for m in model_order(scores, tasks) if m != START and m != STL
               and not m.startswith((ALONE_PREFIX, MINI_ALONE_PREFIX))]  # fmt: skip
    results = []

    if START not in scores:
        results.append(CheckResult("trained models beat the starting point", SKIP, "no 'start' row in the scores"))
    else:
        misses = []
        for model in trained:
            for task in tasks:
                value, base = _score(scores, model, task), _score(scores, START, task)
                if value is None or base is None or not value > base:
                    misses.append(f"{model_label(model, tasks)} on {task} ({_fmt(value)} vs start {_fmt(base)})")
        detail = "every trained model scores above the starting point on every task" if not misses else (
            f"{len(misses)} case(s) at or below the starting point: " + "; ".join(misses))  # fmt: skip
        results.append(CheckResult("trained models beat the starting point", FAIL if misses else PASS, detail))

    comparisons = []
    for model in (EW, VISATB):
        if model in scores:
            comparisons += [(model, task) for task in tasks]
    comparisons += [(task, task) for task in tasks if task in scores]
    if MINI not in scores or not comparisons:
        results.append(CheckResult("full-data models beat the mini model", SKIP, "no mini or full-data models"))
    else:
        losses = []
        for model, task in comparisons:
            value, mini = _score(scores, model, task), _score(scores, MINI, task)
            if value is None or mini is None or not value > mini:
                losses.append(f"{model_label(model, tasks)} on {task} ({_fmt(value)} vs mini {_fmt(mini)})")
        wins = len(comparisons) - len(losses)
        passed = wins * 2 > len(comparisons)
        detail = f"ahead of mini in {wins} of {len(comparisons)} comparisons"
        if losses:
            detail += "; not ahead: " + "; ".join(losses)
        results.append(CheckResult("full-data models beat the mini model", PASS if passed else FAIL, detail))

    flat = []
    for task in tasks:
        values = [_score(scores, m, task) for m in trained]
        values = [v for v in values if v is not None]
        if not values:
            flat.append(f"{task} (no scores)")
        elif all(v == 0 for v in values):
            flat.append(f"{task} (0 for every model)")
        elif metrics[task] in ACCURACY_METRICS and all(v >= 1 for v in values):
            flat.append(f"{task} (at the maximum for every model)")
        elif len(values) > 1 and len(set(values)) == 1:
            flat.append(f"{task} ({_fmt(values[0])} for every model)")
    detail = "every task separates the models" if not flat else "degenerate task(s): " + "; ".join(flat)
    results.append(CheckResult("no task is flat across models", FAIL if flat else PASS, detail))
    return results


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def against_stl_section(
    scores: Mapping[str, Any], tasks: Sequence[str], metrics: Mapping[str, str]
) -> list[str]:
    """dI % and dE % of every final model against STL; empty without an STL score for every task."""
    try:
        baseline = compare.resolve_baseline(scores, STL, tasks)
    except ValueError:
        return []
    models, incomplete = compare.split_complete(scores, compare.default_models(scores, STL), tasks)
    if not models:
        return []
    where = "each task's score from its own alone:<task> model" if baseline.composed else "the STL row"
    lines = ["## Against STL", "",
             f"STL: one model per task, trained on that task alone ({where}). I = (M - M_STL) / M_STL per task; "
             "dI %: its mean, dE %: the mean of the drops max(0, -I) (Eq. 9).", ""]  # fmt: skip
    try:
        comparison = compare.compare(scores, baseline, models)
    except ValueError as e:
        return [*lines, f"Not computed: {e}.", ""]
    lines += compare.comparison_markdown(comparison, lambda task, value: format_score(value, metrics[task]))
    if incomplete:
        lines += ["", "Not compared (a task without a score): " + ", ".join(incomplete) + "."]
    return [*lines, ""]


def _weights_intro(weights: Mapping[str, Any]) -> str:
    """What the weights were computed with; the words of the paper's default set-up stay as they were."""
    temperature = f"Temperature {weights['temperature']:g}"
    if weights.get("temperature_rule") == "auto":
        temperature += " (auto: the smallest of 2, 1, 0.5, 0.25, 0.125 keeping every weight in [0.5, 2.0])"
    if weights.get("difficulty_from") == "precise":
        d = "1 - V(mini-alone:task) / V(alone:task)"
    else:
        d = "1 - V(mini) / V(task-plus-mini)"
    text = f"{temperature}; C_out: what a task's data gives the others, C_in: what it receives, D: its difficulty ({d})."
    if weights.get("form") == "chat":
        text += " Chat form: C[i->j] = (V_j(alone:i) - V_j(start)) / (V_j(alone:j) - V_j(start))."
    alpha = weights.get("alpha")
    if alpha and [alpha["out"], alpha["in"], alpha["difficulty"]] != list(DEFAULT_ALPHA):
        text += (f" Weight = {alpha['out']:g} w_out + {alpha['in']:g} w_in + {alpha['difficulty']:g} w_D "
                 "(alpha of Eq. 8).")  # fmt: skip
    return text


def weights_section(weights: Mapping[str, Any], plot: str | None) -> list[str]:
    """Measures and weights of weights.json, the VISATB_WEIGHTS line and the heatmap."""
    scored = weights["scored_tasks"]
    final = weights["weights"]["final"]
    lines = ["## Task weights", "", _weights_intro(weights), "",
             "| task | C_out | C_in | D | weight |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for k, task in enumerate(scored):
        measures = [weights[key][k] for key in ("out_contribution", "in_contribution", "difficulty")]
        cells = " | ".join("n/a" if v is None else f"{v:.4f}" for v in measures)
        lines.append(f"| {task} | {cells} | {final[k]:.4f} |")
    for task, weight in zip(weights["tasks"], weights["visatb_weights"]):
        if task not in scored:
            lines.append(f"| {task} (not scored) | - | - | - | {weight:.4f} |")
    for entry in weights.get("no_gain_tasks") or []:
        lines += ["", f"**WARNING** task {entry['task']}: {entry['reason']}. Contributions to it are undefined and "
                  "left out of the means; its in-contribution weight is neutral (1.0), n/a above."]  # fmt: skip
    lines += ["", "```", 'TASK_NAMES="' + ",".join(weights["tasks"]) + '"',
              'VISATB_WEIGHTS="' + " ".join(f"{w:.4f}" for w in weights["visatb_weights"]) + '"', "```"]  # fmt: skip
    if plot:
        lines += ["", f"![inter-task contribution and weights]({plot})"]
    return lines


@dataclass
class Report:
    markdown: str
    table: str
    summary: list[str]
    checks: list[CheckResult]


COST_PARTS = (
    ("preparation", "preparation (the models VisATB's weights need)"),
    ("final", "VisATB's final model"),
    ("other", "other models (baselines, STL, ablations, the start model's checks)"),
)
TRAIN_STAGES = ("train", "final-train")
EVAL_STAGES = ("infer", "score", "final-infer", "final-score")


def device_seconds(entry: Mapping[str, Any]) -> tuple[float, bool]:
    """(seconds x GPUs, or x processes on the CPU; whether the device count was known)."""
    seconds = float(entry.get("seconds") or 0.0)
    gpus, processes = entry.get("gpus"), entry.get("processes")
    if isinstance(gpus, int) and gpus > 0:
        return seconds * gpus, True
    if isinstance(processes, int) and processes > 0:
        return seconds * processes, True
    return seconds, False


def cost_section(pipeline_record: Mapping[str, Any]) -> list[str]:
    """The preparation cost against VisATB's final training, training and evaluation apart, beside the paper's
    estimate R_large + N * R_mini (Sec. 3.2); empty without a final VisATB training on record."""
    costs = pipeline_record.get("costs") or {}
    items = list((costs.get("items") or {}).values())
    totals: dict[tuple[str, str], float] = {}
    counts: dict[str, int] = {}
    unknown = 0
    for entry in items:
        kind = "train" if entry["stage"] in TRAIN_STAGES else "eval" if entry["stage"] in EVAL_STAGES else None
        if kind is None:
            continue
        value, known = device_seconds(entry)
        unknown += not known
        totals[entry["part"], kind] = totals.get((entry["part"], kind), 0.0) + value
        counts[entry["part"]] = counts.get(entry["part"], 0) + 1
    final = totals.get(("final", "train"))
    if not final:
        return []
    lines = ["## Cost", "",
             "Device time of every command the chain ran (pipeline.json, `costs`): wall seconds x GPUs (x processes "
             "on the CPU), and in brackets as a multiple of VisATB's final training. Evaluation is inference and "
             "scoring.", "", "| part | commands | training | evaluation |", "|---|---:|---:|---:|"]  # fmt: skip
    for part, label in COST_PARTS:
        if part not in counts:
            continue
        cells = []
        for kind in ("train", "eval"):
            value = totals.get((part, kind))
            cells.append("-" if value is None else f"{value:.0f} s ({value / final:.2f}x)")
        lines.append(f"| {label} | {counts[part]} | " + " | ".join(cells) + " |")
    lines.append("")
    units, mini, large = costs.get("units"), costs.get("mini_fraction"), costs.get("large_fraction", 1.0)
    if isinstance(units, int) and isinstance(mini, int | float):
        estimate = large + units * mini
        measured = totals.get(("preparation", "train"), 0.0) / final
        lines.append(f"- Preparation training: {measured:.2f}x the final training here; the paper's estimate "
                     f"R_large + N * R_mini = {large:g} + {units} x {mini:g} = {estimate:.2f}x (Sec. 3.2, which leaves "
                     "the evaluation of the N + 1 models out).")  # fmt: skip
    gpus = [e.get("gpus") for e in items if e["stage"] in TRAIN_STAGES]
    parallel = max(int(pipeline_record.get("jobs") or 1), int(pipeline_record.get("train_jobs") or 1)) > 1
    if parallel and gpus and all(g == 0 for g in gpus):
        lines.append("- On the CPU with several commands at a time (JOBS, TRAIN_JOBS) the commands share the cores: "
                     "their wall times overlap, so these are upper bounds of the time each would take alone.")  # fmt: skip
    if unknown:
        lines.append(f"- {unknown} command(s) did not log their device count; they count as one device.")
    lines.append("")
    return lines


def build_report(
    scores: Mapping[str, Any],
    tasks: Sequence[str],
    metrics: Mapping[str, str],
    weights: Mapping[str, Any] | None = None,
    plot: str | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    pipeline_record: Mapping[str, Any] | None = None,
) -> Report:
    """Assemble the report of a scores table (and optionally the weights file).

    With `groups`, `scores` is the group-level table (`scores.group_scores`) and `tasks` are the groups."""
    missing = [t for t in tasks if t not in metrics]
    if missing:
        raise ValueError(f"no metric type for task(s) {', '.join(missing)}")
    table = score_table(scores, tasks, metrics)
    rows = relative_improvements(scores, tasks)
    summary = relative_summary(rows, tasks)
    checks = learning_checks(scores, tasks, metrics)
    lines = ["# VisATB report", "",
             "Validation scores of every model (CIDEr for captions, accuracy in % for QA and grounding, the "
             "GPT judge's relative score in % for gpt_review). "
             "`mini`: trained on the mini set; `<task>-plus-mini`: that task's full data plus the mini set; "
             "EW and VisATB: trained on the entire data with equal and with VisATB task weights. "
             "Best trained model per task in bold.", ""]  # fmt: skip
    if groups:
        lines += ["Task groups (M3IT's setting): each column is a group, its score the plain mean of its tasks' "
                  "scores; `<group>-plus-mini` is trained on the group's tasks plus the mini set: "
                  + "; ".join(f"{g} = {', '.join(m)}" for g, m in groups.items()) + ".", ""]  # fmt: skip
    lines += [table, ""]
    if rows:
        lines += ["## Relative improvement", "",
                  "Against each task's own task-plus-mini model (the single-task reference here) and VisATB "
                  "against EW, per task.", "", relative_table(rows, tasks), ""]  # fmt: skip
        lines += [f"- {s}" for s in summary] + [""]
    lines += against_stl_section(scores, tasks, metrics)
    if weights is not None:
        lines += weights_section(weights, plot) + [""]
    if pipeline_record is not None:
        lines += cost_section(pipeline_record)
    lines += ["## Learning checks", ""]
    lines += [f"- **{c.status}** {c.name}: {c.detail}" for c in checks]
    return Report(markdown="\n".join(lines) + "\n", table=table, summary=summary, checks=checks)


def _metrics_from_args(text: str | None, preset: str | None, tasks: Sequence[str]) -> dict[str, str]:
    metrics: dict[str, str] = {}
    if preset:
        metrics.update(get_preset(preset).metrics)
    for pair in (text or "").replace(" ", ",").split(","):
        if not pair:
            continue
        task, sep, metric = pair.partition("=")
        if not sep or metric not in CHAIN_METRIC_TYPES:
            raise ValueError(f"--metrics: {pair!r} is not TASK=METRIC with METRIC one of {', '.join(CHAIN_METRIC_TYPES)}")
        metrics[task] = metric
    return {t: metrics[t] for t in tasks if t in metrics}


def main(argv: Sequence[str] | None = None) -> int:
    from llava.visatb.results import report_html  # it builds on this module

    parser = argparse.ArgumentParser(description="Write report.md of a VisATB run from its scores (and weights).")
    parser.add_argument("--scores", required=True, help="scores table {model key: {task: score}}")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--tasks", help="scored tasks A,B,... (column order)")
    group.add_argument("--task-preset", help="a preset: its scored tasks and their metrics")
    parser.add_argument("--metrics", help="TASK=METRIC,... (caption, caption_list, qa, grounding, gpt_review)")
    parser.add_argument("--weights", help="weights.json of weighting_visatb.py")
    parser.add_argument("--plot", help="heatmap image to show, as a path relative to the report")
    parser.add_argument("--output", help="write the report here (markdown)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a learning check fails")
    parser.add_argument("--task-groups", help="G1=A,B;G2=C,D: report group scores (the means of their tasks')")
    parser.add_argument("--costs", help="the chain's pipeline.json: a cost section from its commands' device time")
    page = parser.add_argument_group("report.html (llava/visatb/results/report_html.py)")
    page.add_argument("--html", help="also write the results page here: the tables and every model's answers")
    page.add_argument("--answers-dir", help="the answers folder (WORK_DIR/answers: one sub-folder per model)")
    page.add_argument("--val-files", help="TASK=FILE,...: the validation files the answers answer")
    page.add_argument("--image-folder", help="the folder the validation records' image paths are relative to")
    page.add_argument("--html-max-records", type=int, default=None,
                      help=f"records embedded per task (default {report_html.DEFAULT_MAX_RECORDS}): differing ones first, then a sample")
    args = parser.parse_args(argv)
    try:
        scores = load_scores(args.scores)
        if args.tasks:
            tasks = parse_task_names(args.tasks)
        elif args.task_preset:
            tasks = list(get_preset(args.task_preset).scored_tasks)
        else:
            raise ValueError("name the scored tasks: --tasks A,B,... or --task-preset NAME")
        metrics = _metrics_from_args(args.metrics, args.task_preset, tasks)
        task_metrics = dict(metrics)  # per task, before any grouping: the answer browser's
        groups = parse_task_groups(args.task_groups) if args.task_groups else None
        if groups:
            check_task_groups(groups, tasks, metrics)
            scores = group_scores(scores, groups)
            metrics = {g: metrics[members[0]] for g, members in groups.items()}
            tasks = list(groups)
        weights = load_json(args.weights) if args.weights and os.path.isfile(args.weights) else None
        if args.weights and weights is None:
            raise FileNotFoundError(f"--weights {args.weights}: no such file")
        record = load_json(args.costs) if args.costs else None
        report = build_report(scores, tasks, metrics, weights, args.plot, groups, record)
        if args.output:
            atomic_write_text(Path(args.output), report.markdown)
        if args.html:
            if not args.answers_dir or not args.val_files:
                raise ValueError("--html needs --answers-dir and --val-files")
            views = report_html.write_html(
                args.html, scores, tasks, metrics, task_metrics, report_html.parse_val_files(args.val_files),
                args.answers_dir, weights, args.plot, args.image_folder,
                report_html.DEFAULT_MAX_RECORDS if args.html_max_records is None else args.html_max_records)  # fmt: skip
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.table)
    for sentence in report.summary:
        print(sentence)
    for entry in (weights or {}).get("no_gain_tasks") or []:
        print(f"WARNING: task {entry['task']} had no own-data gain: {entry['reason']} (neutral weight)", file=sys.stderr)
    for check in report.checks:
        print(f"learning check {check.status}: {check.name}")
        if check.failed:
            print(f"WARNING: learning check failed: {check.name}: {check.detail}", file=sys.stderr)
    if args.output:
        print(f"wrote {args.output}")
    if args.html:
        answered = sorted({m for v in views for m in v.models})
        print(f"wrote {args.html} ({len(views)} task(s), answers of {len(answered)} model(s))")
    return 1 if args.strict and any(c.failed for c in report.checks) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Final models against a baseline (STL by default): the relative improvement dI % and drop dE % (Eq. 9).

    python -m llava.visatb.results.compare --scores scores.json --baseline STL --output comparison.json \
        [--lower-is-better TASK,...] [--tasks A,B,... | --task-preset NAME] [--models EW,VisATB] \
        [--markdown comparison.md] [--plot comparison.png]
    python -m llava.visatb.results.compare --summarize seed0/comparison.json seed1/comparison.json ... \
        --output comparison_seeds.json [--markdown comparison_seeds.md]

Model keys of the scores table ({model key: {task: score}}, see llava/visatb/scores.py):

    start              the untrained starting model
    mini               the mini model
    <task>             that task's task-plus-mini model
    alone:<task>       trained on that task's data alone (STL)
    mini-alone:<task>  trained on that task's mini subset alone
    EW, TLA, RLW, DWA, IGB, VisATB, ...   final models, by method name

The baseline is the row named by --baseline; for STL without such a row it is composed from the
alone:<task> rows, each task's score taken from its own alone model. By default every final-method row is
compared: all rows except the baseline, start, mini, task-plus-mini, alone: and mini-alone: rows.

For model e, baseline b and task i (one metric per task, K_i = 1; delta_i = 1 for a lower-is-better task):

    I_i  = (-1)^delta_i * (M_e,i - M_b,i) / M_b,i
    dI % = 100 * mean_i I_i              (mean relative improvement)
    dE % = 100 * mean_i max(0, -I_i)     (mean relative drop)

--summarize reads several comparisons (one per seed) of the same models and tasks and gives each model's
dI and dE as mean +- sample std over them, and on how many of them VisATB's dI is above EW's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llava.utils import atomic_write_bytes, atomic_write_json, atomic_write_text, load_json, refuse_same_file
from llava.visatb.scores import (
    ALONE_PREFIX,
    EW,
    MINI,
    MINI_ALONE_PREFIX,
    START,
    STL,
    VISATB,
    alone_key,
    load_scores,
)
from llava.visatb.tasks import get_preset, parse_task_groups, parse_task_names


def _names(tasks: Sequence[str]) -> str:
    return ", ".join(repr(t) for t in tasks)


@dataclass(frozen=True)
class Baseline:
    """The reference scores {task: score}; `composed` when they come from the alone:<task> rows."""

    name: str
    scores: dict[str, float]
    composed: bool = False


def resolve_baseline(
    scores: Mapping[str, Mapping[str, float]],
    name: str = STL,
    tasks: Sequence[str] | None = None,
    source: str = "scores",
    groups: Mapping[str, Sequence[str]] | None = None,
) -> Baseline:
    """The baseline's scores on `tasks` (default: all of its tasks, in the table's order).

    With task groups, the composed STL score of task t is that of the model trained on t's group alone
    (`alone:<group>`), on t."""
    if name in scores:
        row = scores[name]
        wanted = list(row) if tasks is None else list(tasks)
        missing = [t for t in wanted if t not in row]
        if missing:
            raise ValueError(f"{source}: the baseline row {name!r} has no score on task(s) {_names(missing)}")
        return Baseline(name, {t: float(row[t]) for t in wanted})
    if name != STL:
        raise ValueError(f"{source}: no row {name!r} for the baseline; rows: {', '.join(scores) or 'none'}")
    # STL composed: task t's score is that of the model trained on t alone, on t.
    available = {}
    for key, row in scores.items():
        unit = key[len(ALONE_PREFIX) :] if key.startswith(ALONE_PREFIX) else None
        if unit is None:
            continue
        for task in (groups or {}).get(unit, [unit]):
            if task in row:
                available[task] = row[task]
    if tasks is None:
        if not available:
            raise ValueError(
                f"{source}: no STL baseline: neither an {STL!r} row nor any {ALONE_PREFIX}<task> row with a score "
                "on its own task"
            )
        wanted = list(available)
    else:
        wanted = list(tasks)
    missing = [t for t in wanted if t not in available]
    if missing:
        rows = ", ".join(repr(alone_key(t)) for t in missing)
        if groups:
            group_of = {t: g for g, members in groups.items() for t in members}
            rows = ", ".join(sorted({repr(alone_key(group_of.get(t, t))) for t in missing}))
        raise ValueError(
            f"{source}: no STL baseline score on task(s) {_names(missing)}: there is no {STL!r} row, and no "
            f"row {rows} with a score on its own task"
        )
    return Baseline(name, {t: float(available[t]) for t in wanted}, composed=True)


def default_models(
    scores: Mapping[str, Mapping[str, float]], baseline: str = STL, groups: Sequence[str] = ()
) -> list[str]:
    """The final-method rows, in the table's order: every row but the baseline and the preparation models."""
    task_names = {task for row in scores.values() for task in row} | set(groups)
    return [
        key
        for key in scores
        if key != baseline
        and key not in (START, MINI)
        and key not in task_names  # a task-plus-mini (group-plus-mini) model is keyed by its task (group)
        and not key.startswith((ALONE_PREFIX, MINI_ALONE_PREFIX))
    ]


def split_complete(
    scores: Mapping[str, Mapping[str, float]], models: Sequence[str], tasks: Sequence[str]
) -> tuple[list[str], dict[str, list[str]]]:
    """(models with a score on every task, {model: its missing tasks} for the others)."""
    complete, incomplete = [], {}
    for model in models:
        missing = [t for t in tasks if t not in scores.get(model, {})]
        if missing:
            incomplete[model] = missing
        else:
            complete.append(model)
    return complete, incomplete


def relative_improvement(score: float, baseline: float, lower_is_better: bool = False) -> float:
    """I = (-1)^delta * (score - baseline) / baseline; delta = 1 when lower is better."""
    change = (score - baseline) / baseline
    return -change if lower_is_better else change


def compare(
    scores: Mapping[str, Mapping[str, float]],
    baseline: Baseline,
    models: Sequence[str],
    lower_is_better: Sequence[str] = (),
    source: str = "scores",
) -> dict[str, Any]:
    """The comparison JSON: per model, per-task score, baseline and I_i, then dI % and dE %."""
    tasks = list(baseline.scores)
    if not tasks:
        raise ValueError("no tasks to compare")
    if not models:
        raise ValueError(f"{source}: no models to compare against {baseline.name}")
    unknown = [t for t in lower_is_better if t not in tasks]
    if unknown:
        raise ValueError(
            f"--lower-is-better names {', '.join(unknown)}, not among the compared tasks ({', '.join(tasks)})"
        )
    for task, value in baseline.scores.items():
        if value == 0:
            raise ValueError(
                f"{source}: the baseline {baseline.name} scores 0 on task {task!r}: the relative change "
                "(M - M_b) / M_b is undefined"
            )
    result: dict[str, Any] = {}
    for model in models:
        if model not in scores:
            raise ValueError(f"{source}: no row {model!r} to compare")
        per_task = {}
        for task in tasks:
            if task not in scores[model]:
                raise ValueError(f"{source}: model {model!r} has no score on task {task!r}")
            score, base = float(scores[model][task]), baseline.scores[task]
            per_task[task] = {
                "score": score,
                "baseline": base,
                "relative": relative_improvement(score, base, task in lower_is_better),
            }
        changes = [entry["relative"] for entry in per_task.values()]
        result[model] = {
            "delta_I": 100 * sum(changes) / len(changes),
            "delta_E": 100 * sum(max(0.0, -c) for c in changes) / len(changes),
            "per_task": per_task,
        }
    return {
        "baseline": baseline.name,
        "tasks": tasks,
        "lower_is_better": [t for t in tasks if t in lower_is_better],
        "models": result,
    }


def _four_decimals(task: str, value: float) -> str:
    return f"{value:.4f}"


def comparison_markdown(
    comparison: Mapping[str, Any], score_format: Callable[[str, float], str] = _four_decimals
) -> list[str]:
    """The comparison as markdown table lines: the baseline's row first, then each model with dI % and dE %.

    `score_format(task, score)` writes a score (default: four decimals).
    """
    tasks = comparison["tasks"]
    lower = set(comparison["lower_is_better"])
    models = comparison["models"]
    header = [f"{t} (lower is better)" if t in lower else t for t in tasks]
    lines = ["| model | " + " | ".join(header) + " | dI % | dE % |", "|---|" + "---:|" * (len(tasks) + 2)]
    first = next(iter(models.values()), None)
    base = [score_format(t, first["per_task"][t]["baseline"]) if first else "-" for t in tasks]
    lines.append(f"| {comparison['baseline']} (baseline) | " + " | ".join(base) + " | - | - |")
    for name, entry in models.items():
        cells = [score_format(t, entry["per_task"][t]["score"]) for t in tasks]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {entry['delta_I']:+.2f} | {entry['delta_E']:.2f} |"
        )
    return lines


def plot_comparison(comparison: Mapping[str, Any], path: str) -> None:
    """dI % against dE % per model: up and to the left is better (more improvement, less drop)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = comparison["models"]
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for name, entry in models.items():
        ax.scatter(entry["delta_E"], entry["delta_I"], s=36)
        ax.annotate(name, (entry["delta_E"], entry["delta_I"]), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)  # fmt: skip
    ax.axhline(0.0, color="gray", linewidth=0.8)
    ax.set_xlabel(f"dE % (mean relative drop vs {comparison['baseline']})")
    ax.set_ylabel(f"dI % (mean relative improvement vs {comparison['baseline']})")
    ax.set_title(f"final models against {comparison['baseline']}")
    fig.tight_layout()
    from io import BytesIO

    buffer = BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def summarize(comparisons: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and sample std of every model's dI and dE over runs {label: comparison}; VisATB vs EW per run."""
    if not comparisons:
        raise ValueError("no comparisons to summarize")
    labels = list(comparisons)
    first = comparisons[labels[0]]
    for label, comparison in comparisons.items():
        for field_name in ("baseline", "tasks"):
            if comparison[field_name] != first[field_name]:
                raise ValueError(f"{label}: {field_name} {comparison[field_name]!r} differs from {labels[0]}'s "
                                 f"{first[field_name]!r}")  # fmt: skip
    models = [m for m in first["models"] if all(m in c["models"] for c in comparisons.values())]
    skipped = sorted({m for c in comparisons.values() for m in c["models"]} - set(models))
    result: dict[str, Any] = {"baseline": first["baseline"], "tasks": first["tasks"], "runs": labels, "models": {},
                              "not_in_every_run": skipped}  # fmt: skip
    for model in models:
        entry: dict[str, Any] = {}
        for measure in ("delta_I", "delta_E"):
            values = [float(comparisons[label]["models"][model][measure]) for label in labels]
            mean, std = _mean_std(values)
            entry[measure] = {"mean": mean, "std": std, "values": values}
        result["models"][model] = entry
    if VISATB in result["models"] and EW in result["models"]:
        wins = [label for label in labels
                if comparisons[label]["models"][VISATB]["delta_I"] > comparisons[label]["models"][EW]["delta_I"]]  # fmt: skip
        result["visatb_beats_ew"] = {"runs": wins, "count": len(wins), "of": len(labels)}
    return result


def summary_markdown(summary: Mapping[str, Any]) -> list[str]:
    """Per model: dI % and dE % as mean +- std over the runs, then the per-run dI values."""
    runs = summary["runs"]
    lines = [f"Against {summary['baseline']}, over {len(runs)} run(s) ({', '.join(runs)}); mean +- sample std:", "",
             "| model | dI % | dE % | dI % per run |", "|---|---:|---:|---|"]  # fmt: skip
    for model, entry in summary["models"].items():
        di, de = entry["delta_I"], entry["delta_E"]
        per_run = ", ".join(f"{v:+.2f}" for v in di["values"])
        lines.append(
            f"| {model} | {di['mean']:+.2f} +- {di['std']:.2f} | {de['mean']:.2f} +- {de['std']:.2f} | {per_run} |"
        )
    beats = summary.get("visatb_beats_ew")
    if beats:
        lines += ["", f"VisATB's dI is above EW's on {beats['count']} of {beats['of']} run(s)"
                  + (f" ({', '.join(beats['runs'])})." if beats["runs"] else ".")]  # fmt: skip
    if summary.get("not_in_every_run"):
        lines += ["", f"Left out (not in every run): {', '.join(summary['not_in_every_run'])}."]
    return lines


def _task_list(args: argparse.Namespace) -> list[str] | None:
    if args.tasks and args.task_preset:
        raise ValueError("give either --tasks or --task-preset, not both")
    if args.tasks:
        return parse_task_names(args.tasks)
    if args.task_preset:
        return list(get_preset(args.task_preset).scored_tasks)
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare final models with a baseline (STL): per-task relative change, dI % and dE % (Eq. 9)."
    )
    parser.add_argument("--scores", help="scores table {model key: {task: score}}")
    parser.add_argument(
        "--summarize",
        nargs="+",
        metavar="COMPARISON",
        help="instead: mean +- std of dI/dE over these comparison.json files (one per seed)",
    )
    parser.add_argument(
        "--baseline", default=STL, help="baseline row; STL without a row: the alone:<task> rows"
    )
    parser.add_argument("--output", required=True, help="write the comparison JSON here")
    parser.add_argument("--lower-is-better", help="tasks whose metric is better when lower, A,B,...")
    parser.add_argument(
        "--tasks", help="tasks to compare, A,B,... (default: the baseline's, in the table's order)"
    )
    parser.add_argument("--task-preset", help="compare the scored tasks of a preset, in its order")
    parser.add_argument("--models", help="rows to compare, A,B,... (default: every final-method row)")
    parser.add_argument("--task-groups", help="G1=A,B;G2=C,D: STL of a task from its group's alone:<group> model")
    parser.add_argument("--markdown", help="also write the markdown table here")
    parser.add_argument("--plot", help="also plot dI against dE per model into this PNG")
    return parser


def _summarize_main(args: argparse.Namespace) -> int:
    try:
        for path in args.summarize:
            refuse_same_file(args.output, {"--summarize": path}, "--output")
        comparisons = {}
        for path in args.summarize:
            data = load_json(path)
            if not isinstance(data, dict) or not all(k in data for k in ("baseline", "tasks", "models")):
                raise ValueError(f"{path}: not a comparison.json (needs baseline, tasks, models)")
            label = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
            if label in comparisons:
                label = path
            comparisons[label] = data
        summary = summarize(comparisons)
        lines = summary_markdown(summary)
        atomic_write_json(args.output, summary)
        if args.markdown:
            atomic_write_text(args.markdown, "\n".join(lines) + "\n")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    print(f"wrote {args.output}" + (f" and {args.markdown}" if args.markdown else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.summarize:
        if args.scores:
            print("error: give --scores or --summarize, not both", file=sys.stderr)
            return 2
        return _summarize_main(args)
    if not args.scores:
        print("error: --scores is required (or --summarize COMPARISON ...)", file=sys.stderr)
        return 2
    try:
        refuse_same_file(args.output, {"--scores": args.scores}, "--output")
        if args.markdown:
            refuse_same_file(args.markdown, {"--scores": args.scores, "--output": args.output}, "--markdown")
        scores = load_scores(args.scores)
        groups = parse_task_groups(args.task_groups) if args.task_groups else None
        baseline = resolve_baseline(scores, args.baseline, _task_list(args), source=args.scores, groups=groups)
        lower = parse_task_names(args.lower_is_better) if args.lower_is_better else []
        tasks = list(baseline.scores)
        if args.models:
            models = parse_task_names(args.models)
        else:
            models, incomplete = split_complete(scores, default_models(scores, args.baseline, groups or ()), tasks)
            for model, missing in incomplete.items():
                print(f"note: skipped {model!r}: no score on {', '.join(missing)}", file=sys.stderr)
        comparison = compare(scores, baseline, models, lower, source=args.scores)
        lines = comparison_markdown(comparison)
        atomic_write_json(args.output, comparison)
        if args.markdown:
            atomic_write_text(args.markdown, "\n".join(lines) + "\n")
        if args.plot:
            plot_comparison(comparison, args.plot)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if baseline.composed:
        unit = "group" if groups else "task"
        print(f"baseline {baseline.name}: each task's score from its own {ALONE_PREFIX}<{unit}> model")
    print("\n".join(lines))
    print(f"wrote {args.output}" + (f" and {args.markdown}" if args.markdown else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

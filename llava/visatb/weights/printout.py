"""Printing and plotting the weights: the text report, the heatmap of C beside the final weights."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import numpy as np

from llava.utils import atomic_write_bytes
from llava.visatb.weights.measures import get_difficulty_source, get_form, notation
from llava.visatb.weights.paper import PAPER_SETTINGS
from llava.visatb.weights.weights import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, VisatbWeights


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _measures_line(result: VisatbWeights) -> str:
    """The formulas of C and D the result was computed with, in terms of the scores table's keys."""
    f, d = get_form(result.form), get_difficulty_source(result.difficulty_from, result.form)
    model_i, model_j, ref = notation(f.model("i")), notation(f.model("j")), notation(f.reference)
    return (
        f"Form {f.name}: C[i->j] = (V_j({model_i}) - V_j({ref})) / (V_j({model_j}) - V_j({ref})); "
        f"difficulty {d.name}: D_i = 1 - V_i({notation(d.small_model('i'))}) / V_i({notation(d.full_model('i'))})"
    )


def format_report(result: VisatbWeights) -> str:
    """A readable report: C matrix (when known), measures, the five weight families, the weights line."""
    lines = []
    names = result.scored_tasks
    width = max(len(t) for t in result.tasks) + 5
    if result.contribution_matrix is not None:
        lines.append("Inter-task contribution C[source -> target] (rows: source, columns: target):")
        header = " " * width + "".join(f"{f'[{j + 1}]':>9}" for j in range(len(names)))
        lines.append(header)
        for i, row in enumerate(result.contribution_matrix):
            label = f"[{i + 1}] {names[i]}"
            lines.append(f"{label:<{width}}" + "".join(f"{_fmt(x):>9}" for x in row))
        lines.append("")
    if result.form is not None:
        lines.append(_measures_line(result))
    note = result.temperature_note()
    if note:
        ranges = "; ".join(
            f"T={t}: {c['min_weight']:.4f} to {c['max_weight']:.4f}{'' if c['in_range'] else ' (outside)'}"
            for t, c in result.temperature_choice.candidates.items()
        )
        lines += [note, f"  final weights per candidate: {ranges}"]
    columns = ("C_out", "C_in", "D", "w_out", "w_in", "w_inter", "w_diff", "w_final")
    alpha = "/".join(f"{a:g}" for a in result.alpha)
    unit = "groups" if result.groups else "scored tasks"
    if result.groups:
        lines.append("Task groups (a group's score is the mean of its tasks' scores; its tasks share its weight): "
                     + "; ".join(f"{g} = {', '.join(m)}" for g, m in result.groups.items()))  # fmt: skip
    lines.append(
        f"Measures and weights (temperature {result.temperature:g}, alpha {alpha}, N = {len(names)} {unit}):"
    )
    lines.append(f"{'group' if result.groups else 'task':<{width}}" + "".join(f"{c:>9}" for c in columns))
    w = result.weights
    for k, task in enumerate(names):
        values = (
            result.out_contribution[k],
            result.in_contribution[k],
            result.difficulty[k],
            w["out"][k],
            w["in"][k],
            w["inter"][k],
            w["difficulty"][k],
            w["final"][k],
        )
        lines.append(f"{task:<{width}}" + "".join(f"{_fmt(v):>9}" for v in values))
    sums = "".join(f"{sum(w[f]):>9.4f}" for f in ("out", "in", "inter", "difficulty", "final"))
    lines.append(f"{'sum':<{width}}" + " " * 27 + sums)
    if result.unscored_tasks:
        lines.append(f"Trained but not scored (weight 1.0): {', '.join(result.unscored_tasks)}")
    lines.append(f"Task order of the weights ({result.task_order}): {', '.join(result.tasks)}")
    lines.append(f'TASK_NAMES="{",".join(result.tasks)}"')
    lines.append(f'VISATB_WEIGHTS="{result.weights_string()}"')
    return "\n".join(lines)


def plot_weights(result: VisatbWeights, path: str | os.PathLike) -> None:
    """PNG: heatmap of C (or, given by hand, bars of C_out, C_in, D) beside a bar chart of the final weights."""
    # The object-oriented API with an Agg canvas needs no display and leaves pyplot's global state alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(result.scored_tasks)
    fig = Figure(figsize=(6 + 0.9 * n + 0.5 * len(result.tasks), 3 + 0.6 * n))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    names = result.scored_tasks
    if result.contribution_matrix is not None:
        c = np.array([[np.nan if x is None else x for x in row] for row in result.contribution_matrix])
        image = left.imshow(np.ma.masked_invalid(c), cmap="RdYlGn")
        fig.colorbar(image, ax=left, fraction=0.046, pad=0.04)
        for i in range(n):
            for j in range(n):
                if i != j:
                    text = "n/a" if np.isnan(c[i, j]) else f"{c[i, j]:.2f}"
                    left.text(j, i, text, ha="center", va="center", fontsize=8)
        left.set_xticks(range(n), names, rotation=45, ha="right")
        left.set_yticks(range(n), names)
        left.set_xlabel("target task j")
        left.set_ylabel("source task i")
        left.set_title("inter-task contribution C[i -> j]")
    else:
        x = np.arange(n)
        for k, (label, values) in enumerate(
            (("C_out", result.out_contribution), ("C_in", result.in_contribution), ("D", result.difficulty))
        ):
            left.bar(x + (k - 1) * 0.27, values, width=0.27, label=label)
        left.set_xticks(x, names, rotation=45, ha="right")
        left.legend()
        left.set_title("measures (given by hand)")
    final = result.visatb_weights
    colors = ["tab:blue" if t in names else "tab:gray" for t in result.tasks]
    bars = right.bar(range(len(final)), final, color=colors)
    right.bar_label(bars, labels=[f"{w:.2f}" for w in final], fontsize=8)
    right.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    right.set_xticks(range(len(final)), result.tasks, rotation=45, ha="right")
    right.set_ylabel("weight")
    right.set_title(f"VisATB final weights (T = {result.temperature:g}; grey: unscored)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def format_paper_settings(
    temperature: float | str = DEFAULT_TEMPERATURE, alpha: Sequence[float] = DEFAULT_ALPHA
) -> str:
    """The weights of every paper setting, as the reference release's script prints them, one block each."""
    blocks = []
    for setting in PAPER_SETTINGS.values():
        title = f"== {setting.title} (paper setting {setting.name!r}) =="
        blocks.append(title + "\n" + format_report(setting.weights(temperature, alpha)))
    return "\n\n".join(blocks)

"""Compute VisATB task weights from a scores table (or from measures given by hand).

    python weighting_visatb.py                                   # the paper's settings
    python weighting_visatb.py --scores scores.json --task-preset academic --output weights.json --plot weights.png
    python weighting_visatb.py --out-contribution 0.16 0.19 0.20 --in-contribution ... --difficulty ...
    python weighting_visatb.py --scores scores.json --task-preset chat --form chat --temperature auto
    python weighting_visatb.py --scores scores.json --tasks A,B,C,D --task-groups "G1=A,B;G2=C,D"

The last line printed is VISATB_WEIGHTS="w1 w2 ...", in task-id order, for the finetune scripts.
"""

from __future__ import annotations

import argparse
import math
import sys

from llava.utils import refuse_same_file
from llava.visatb.tasks import (
    check_task_groups,
    get_preset,
    parse_task_groups,
    parse_task_names,
    resolve_tasks,
)
from llava.visatb.weights.measures import (
    DEFAULT_GAIN_TOLERANCE,
    DEFAULT_MAX_CONTRIBUTION,
    DIFFICULTY_SOURCES,
    FORMS,
    check_gain_options,
    default_unscored,
    load_scores_table,
    plan_tasks,
    split_scored,
)
from llava.visatb.weights.paper import PAPER_SETTINGS, get_paper_setting
from llava.visatb.weights.printout import format_paper_settings, format_report, plot_weights
from llava.visatb.weights.weights import (
    DEFAULT_ALPHA,
    DEFAULT_TEMPERATURE,
    VisatbWeights,
    check_alpha,
    temperature_option,
    weights_from_group_scores,
    weights_from_measures,
    weights_from_scores,
)
from llava.visatb.weights.weights_file import write_weights_file

USAGE_HINT = (
    "To weight your own tasks: python weighting_visatb.py --scores scores.json "
    "(--task-preset academic|chat | --tasks A,B,...) [--output weights.json] [--plot weights.png] "
    "(or give --out-contribution/--in-contribution/--difficulty by hand); see --help."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="VisATB task weights from inter-task contribution and intra-task difficulty. "
        "Without arguments, prints the weights of the paper's settings."
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--scores", help="scores table JSON {model key: {task: score}} (see scores.py)")
    source.add_argument("--paper", help=f"one paper setting: {', '.join(PAPER_SETTINGS)}")
    parser.add_argument("--out-contribution", type=float, nargs="+", help="C_out per scored task, by hand")
    parser.add_argument("--in-contribution", type=float, nargs="+", help="C_in per scored task, by hand")
    difficulty = parser.add_mutually_exclusive_group()
    difficulty.add_argument(
        "--difficulty", type=float, nargs="+", help="D = 1 - V_i(mini)/V_i(i+mini) per scored task, by hand"
    )
    difficulty.add_argument(
        "--mini-ratio", type=float, nargs="+",
        help="instead of --difficulty: V_i(mini)/V_i(i+mini) per scored task (= 1 - D), the form of the VisATB "
        "release's `difficulties` vectors",
    )  # fmt: skip
    tasks = parser.add_mutually_exclusive_group()
    tasks.add_argument("--tasks", help="all trained tasks in task-id order, A,B,... (fixes the weight order)")
    tasks.add_argument("--task-preset", help="academic or chat: its task list in task-id order")
    parser.add_argument(
        "--unscored-tasks",
        help="tasks trained but not scored, weight 1.0 (default: the preset's, e.g. ShareGPT for academic)",
    )
    parser.add_argument(
        "--temperature",
        default=DEFAULT_TEMPERATURE,
        help="softmax temperature T (positive), or 'auto': the smallest of 2, 1, 0.5, 0.25, 0.125 keeping every "
        "final weight in [0.5, 2.0]",
    )
    parser.add_argument(
        "--alpha",
        type=float,
        nargs=3,
        default=list(DEFAULT_ALPHA),
        metavar=("A_OUT", "A_IN", "A_D"),
        help="Eq. 8: final = A_OUT * w_out + A_IN * w_in + A_D * w_diff (each >= 0, summing to 1)",
    )
    parser.add_argument(
        "--form",
        choices=list(FORMS),
        default="academic",
        help="academic: C from the mini and task-plus-mini models; chat (App. C): from start and alone:<task>",
    )
    parser.add_argument(
        "--difficulty-from",
        choices=list(DIFFICULTY_SOURCES),
        help="real: D = 1 - V_i(mini)/V_i(i+mini); precise (App. F): 1 - V_i(mini-alone:i)/V_i(alone:i) "
        "(default: real for --form academic, precise for chat)",
    )
    parser.add_argument(
        "--gain-tolerance", type=float, default=DEFAULT_GAIN_TOLERANCE,
        help="a task's own-data gain V_j(j+mini) - V_j(mini) at or below this fraction of its score counts as no "
        "gain: contributions to it are undefined and it gets a neutral in-weight (with a WARNING)",
    )
    parser.add_argument(
        "--max-contribution", type=float, default=DEFAULT_MAX_CONTRIBUTION,
        help="an own-data gain so small that some |C[i->j]| would exceed this also counts as no gain",
    )
    parser.add_argument("--strict", action="store_true", help="a task without own-data gain is an error")
    parser.add_argument(
        "--task-groups",
        help="G1=A,B;G2=C,D: weigh task groups (M3IT): each group's score is the mean of its tasks', the "
        "preparation models are keyed by group, and every task gets its group's weight",
    )
    parser.add_argument("--output", help="write the weights JSON here (read by --visatb_weights_file)")
    parser.add_argument("--plot", help="write a PNG: heatmap of C beside the final weights")
    return parser


# Hand-given D values whose mean is at least this look like the release's V(mini)/V(own) ratios: the mini
# model usually reaches most of a task's own-data score, so D is mostly small (the paper's mean D is 0.35).
RATIO_LIKE_MEAN = 0.5


def difficulty_from_ratios(ratios: list[float]) -> list[float]:
    """D = 1 - r for each V(mini)/V(own) ratio r of --mini-ratio (each a finite number >= 0)."""
    for k, r in enumerate(ratios):
        if not math.isfinite(r) or r < 0:
            raise ValueError(f"--mini-ratio: value {k + 1} is {r!r}; a ratio of two scores is a finite number >= 0")
    return [1.0 - r for r in ratios]


def check_hand_difficulty(values: list[float]) -> str | None:
    """Refuse impossible D values; a WARNING line when they look like V(mini)/V(own) ratios, else None."""
    for k, d in enumerate(values):
        if not math.isfinite(d) or d > 1:
            raise ValueError(
                f"--difficulty: value {k + 1} is {d!r}; D = 1 - V(mini)/V(own) is at most 1 (scores are >= 0). "
                "The VisATB release's `difficulties` vectors hold V(mini)/V(own): pass those as --mini-ratio"
            )
    mean = sum(values) / len(values)
    if mean >= RATIO_LIKE_MEAN:
        return (
            f"WARNING: the --difficulty values average {mean:.2f}: D = 1 - V(mini)/V(own) is usually small. If "
            "these are the VisATB release's `difficulties` (which hold V(mini)/V(own) = 1 - D), pass them as "
            "--mini-ratio instead: given as D they invert the difficulty weights"
        )
    return None


def compute(args: argparse.Namespace) -> VisatbWeights:
    """Turn the parsed arguments into one weights result."""
    if getattr(args, "mini_ratio", None) is not None:
        args.difficulty = difficulty_from_ratios(args.mini_ratio)
    vectors = (args.out_contribution, args.in_contribution, args.difficulty)
    by_hand = any(v is not None for v in vectors)
    if by_hand and (args.scores or args.paper):
        raise ValueError("give either --scores, --paper or the three measure vectors, not several")
    if by_hand and any(v is None for v in vectors):
        raise ValueError(
            "by hand, give all three of --out-contribution, --in-contribution and --difficulty (or --mini-ratio)"
        )
    if not args.scores and (args.form != "academic" or args.difficulty_from):
        raise ValueError("--form and --difficulty-from choose models of a scores table: give --scores")
    if args.paper:
        if args.tasks or args.task_preset or args.unscored_tasks:
            raise ValueError("--paper fixes its own tasks; drop --tasks/--task-preset/--unscored-tasks")
        return get_paper_setting(args.paper).weights(args.temperature, args.alpha)

    tasks = resolve_tasks(args.tasks, args.task_preset) if (args.tasks or args.task_preset) else None
    if args.unscored_tasks is not None:
        unscored = parse_task_names(args.unscored_tasks)
    elif args.task_preset:
        unscored = list(get_preset(args.task_preset).unscored)
    else:
        unscored = None
    if args.tasks:
        order = "--tasks"
    elif args.task_preset:
        order = f"--task-preset {args.task_preset}"
    elif args.scores:
        order = "alphabetical, from the scores table"
    else:
        order = "as the vectors were given"
    if args.task_groups:
        if not args.scores:
            raise ValueError("--task-groups averages a scores table per group: give --scores")
        groups = parse_task_groups(args.task_groups)
        if tasks is not None:
            scored = split_scored(
                tasks, default_unscored(tasks) if unscored is None else unscored
            )
            check_task_groups(groups, scored)
        result = weights_from_group_scores(
            load_scores_table(args.scores), groups, tasks, source=args.scores,
            temperature=args.temperature, gain_tolerance=args.gain_tolerance, max_contribution=args.max_contribution,
            strict=args.strict, alpha=args.alpha, form=args.form, difficulty_from=args.difficulty_from,
        )  # fmt: skip
    elif args.scores:
        scores = load_scores_table(args.scores)
        all_tasks, scored = plan_tasks(tasks, unscored, scores, source=args.scores, form=args.form)
        result = weights_from_scores(
            scores, scored, all_tasks, args.temperature, source=args.scores, gain_tolerance=args.gain_tolerance,
            max_contribution=args.max_contribution, strict=args.strict, alpha=args.alpha, form=args.form,
            difficulty_from=args.difficulty_from,
        )  # fmt: skip
    else:
        all_tasks, scored = plan_tasks(tasks, unscored, n_values=len(args.difficulty))
        measures = (args.out_contribution, args.in_contribution, args.difficulty, scored, all_tasks)
        result = weights_from_measures(*measures, args.temperature, alpha=args.alpha)
    result.task_order = order
    return result


def _check_outputs(args: argparse.Namespace) -> None:
    """Neither output may be the scores table it is computed from, nor the other output."""
    if args.output:
        refuse_same_file(args.output, {"--scores": args.scores}, "--output")
    if args.plot:
        refuse_same_file(args.plot, {"--scores": args.scores, "--output": args.output}, "--plot")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.temperature = temperature_option(args.temperature)
        try:
            args.alpha = check_alpha(args.alpha)
        except ValueError as e:
            raise ValueError(f"--alpha: {e}") from None
        by_hand = any(v is not None for v in (args.out_contribution, args.in_contribution, args.difficulty,
                                              args.mini_ratio))
        if not (args.scores or args.paper or by_hand):
            chosen = (args.tasks, args.task_preset, args.unscored_tasks, args.output, args.plot)
            if any(chosen) or args.form != "academic" or args.difficulty_from:
                raise ValueError("nothing to weight: give --scores, --paper or the three measure vectors")
            print(format_paper_settings(args.temperature, args.alpha))
            print()
            print(USAGE_HINT)
            return 0
        check_gain_options(args.gain_tolerance, args.max_contribution)
        _check_outputs(args)
        if args.difficulty is not None:
            warning = check_hand_difficulty(args.difficulty)
            if warning:
                print(warning, file=sys.stderr)
        result = compute(args)
        for line in result.warnings():
            print(line, file=sys.stderr)
        if args.scores and not (args.tasks or args.task_preset):
            print(
                "WARNING: no --tasks or --task-preset: the weights follow the alphabetical order of the scores "
                f"table ({', '.join(result.tasks)}); train with TASK_NAMES=\"{','.join(result.tasks)}\" (printed "
                "below) or with --visatb_weights_file, never with a preset of another order",
                file=sys.stderr,
            )
        if args.output:
            write_weights_file(args.output, result)
            print(f"wrote {args.output}")
        if args.plot:
            plot_weights(result, args.plot)
            print(f"wrote {args.plot}")
    except (ValueError, OSError) as e:  # OSError: an output that cannot be written (full disk, size limit)
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

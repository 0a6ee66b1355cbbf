"""Task presets of the paper's benchmarks: names in task-id order, metric types, unscored tasks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# Metric types of the release's evaluation scripts.
CAPTION = "caption"
CAPTION_LIST = "caption_list"
QA = "qa"
GROUNDING = "grounding"
METRIC_TYPES = (CAPTION, CAPTION_LIST, QA, GROUNDING)  # computed from an answer file (llava.visatb.metrics.task_metrics)
# The Chat benchmark's metric: a GPT judge's relative score (llava.visatb.metrics.review_score), per question category
# of a LLaVA-Bench-COCO-style review set (llava.visatb.metrics.review_set).
GPT_REVIEW = "gpt_review"
CHAIN_METRIC_TYPES = (*METRIC_TYPES, GPT_REVIEW)  # what the chain's --task-metrics accepts


@dataclass(frozen=True)
class TaskPreset:
    """An ordered task list (position = task id), the metric of each scored task, unscored tasks, and the
    task groups (`{group: (task, ...)}`) when the method balances groups rather than single tasks."""

    name: str
    tasks: tuple[str, ...]
    metrics: dict[str, str] = field(default_factory=dict)
    unscored: tuple[str, ...] = ()
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def scored_tasks(self) -> tuple[str, ...]:
        return tuple(t for t in self.tasks if t not in self.unscored)


ACADEMIC = TaskPreset(
    name="academic",
    tasks=("ShareGPT4V", "RefCOCO-caption", "VQAv2", "GQA", "ChartQA", "OCRVQA", "RefCOCO-bbox", "ShareGPT"),
    metrics={
        "ShareGPT4V": CAPTION,
        "RefCOCO-caption": CAPTION_LIST,
        "VQAv2": QA,
        "GQA": QA,
        "ChartQA": QA,
        "OCRVQA": QA,
        "RefCOCO-bbox": GROUNDING,
    },
    unscored=("ShareGPT",),
)

# The Chat benchmark (LLaVA-Instruct's three tasks) is scored by a GPT judge on LLaVA-Bench-COCO (qa90), whose
# question categories conv, detail and complex name these tasks (llava.visatb.metrics.review_set).
CHAT = TaskPreset(
    name="chat",
    tasks=("conversation", "detail", "complex_reasoning"),
    metrics={"conversation": GPT_REVIEW, "detail": GPT_REVIEW, "complex_reasoning": GPT_REVIEW},
)

PRESETS: dict[str, TaskPreset] = {p.name: p for p in (ACADEMIC, CHAT)}


def get_preset(name: str) -> TaskPreset:
    """Return a preset by name; an unknown name lists the known ones."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown task preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def parse_task_names(text: str) -> list[str]:
    """Parse `A,B,C` into a task list; empty names and duplicates are errors."""
    names = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in names):
        raise ValueError(f"task list {text!r} has an empty name; write it as A,B,C")
    dupes = sorted({t for t in names if names.count(t) > 1})
    if dupes:
        raise ValueError(f"task list {text!r} names {', '.join(dupes)} more than once")
    return names


# Metric types whose scores share a scale (a group's score averages its tasks' scores).
METRIC_SCALES = {CAPTION: "CIDEr", CAPTION_LIST: "CIDEr", QA: "accuracy", GROUNDING: "accuracy",
                 GPT_REVIEW: "relative score %"}  # fmt: skip


def parse_task_groups(text: str, what: str = "--task-groups") -> dict[str, list[str]]:
    """Parse `G1=A,B;G2=C,D` into {"G1": ["A", "B"], "G2": ["C", "D"]}; errors name the bad part."""
    groups: dict[str, list[str]] = {}
    parts = [p.strip() for p in (text or "").split(";")]
    if not any(parts):
        raise ValueError(f"{what} {text!r}: no groups; write it as G1=A,B;G2=C,D")
    seen: dict[str, str] = {}
    for part in parts:
        if not part:
            continue
        name, sep, members = part.partition("=")
        name = name.strip()
        if not sep or not name or not members.strip():
            raise ValueError(f"{what}: {part!r} is not GROUP=TASK,TASK,... (groups are separated by ';')")
        if name in groups:
            raise ValueError(f"{what}: group {name!r} is given twice")
        tasks = parse_task_names(members)
        for task in tasks:
            if task in seen:
                raise ValueError(f"{what}: task {task!r} is in group {seen[task]!r} and in group {name!r}")
            seen[task] = name
        groups[name] = tasks
    if len(groups) < 2:
        raise ValueError(f"{what} {text!r}: VisATB balances at least two groups")
    return groups


def format_task_groups(groups: dict[str, Sequence[str]]) -> str:
    """The `G1=A,B;G2=C,D` form of a group mapping (what `parse_task_groups` reads)."""
    return ";".join(f"{g}={','.join(tasks)}" for g, tasks in groups.items())


def check_task_groups(
    groups: dict[str, Sequence[str]],
    scored_tasks: Sequence[str],
    metrics: dict[str, str] | None = None,
    reserved: Sequence[str] = (),
    what: str = "--task-groups",
) -> None:
    """Every scored task in exactly one group, no other task in a group, group names unlike task names and
    `reserved` model keys, and (given `metrics`) one score scale per group, since a group's score is a mean."""
    members = [t for tasks in groups.values() for t in tasks]
    unknown = [t for t in members if t not in scored_tasks]
    if unknown:
        raise ValueError(
            f"{what}: {', '.join(unknown)} not among the scored tasks ({', '.join(scored_tasks)})"
        )
    missing = [t for t in scored_tasks if t not in members]
    if missing:
        raise ValueError(f"{what}: scored task(s) {', '.join(missing)} are in no group (put each in one)")
    for name in groups:
        if name in scored_tasks or name in reserved or ":" in name or "[" in name:
            raise ValueError(f"{what}: group name {name!r} is a task name or a model key; pick another")
        if metrics is not None:
            scales = {t: METRIC_SCALES.get(metrics[t], metrics[t]) for t in groups[name]}
            if len(set(scales.values())) > 1:
                listed = ", ".join(f"{t}={metrics[t]}" for t in groups[name])
                raise ValueError(
                    f"{what}: group {name!r} mixes score scales ({listed}); a group's score is the mean of its "
                    "tasks' scores, so its tasks need one scale (CIDEr, or accuracy)"
                )


def resolve_tasks(
    task_names: str | None = None,
    task_preset: str | None = None,
    names_flag: str = "--task_names",
    preset_flag: str = "--task_preset",
) -> list[str]:
    """The task list from a task list `A,B` or a preset name (exactly one of them); errors name the flags,
    training's by default (the chain passes its own)."""
    if task_names and task_preset:
        raise ValueError(f"give either a task list ({names_flag}) or a preset ({preset_flag}), not both")
    if task_names:
        return parse_task_names(task_names)
    if task_preset:
        return list(get_preset(task_preset).tasks)
    raise ValueError(f"no task list: pass {names_flag} A,B,... or {preset_flag} {'|'.join(PRESETS)}")


# The embedded toy benchmark (llava/visatb/toy/benchmark.py), its task types in the Academic preset's order:
# detailed caption, caption list, a VQA task, grounding, and a text-only task that is trained but not scored.
TOY = TaskPreset(
    name="toy",
    tasks=("ToyCaption", "ToyCaptionList", "ToyCellQA", "ToyBBox", "ToyText"),
    metrics={
        "ToyCaption": CAPTION,
        "ToyCaptionList": CAPTION_LIST,
        "ToyCellQA": QA,
        "ToyBBox": GROUNDING,
    },
    unscored=("ToyText",),
)
PRESETS[TOY.name] = TOY

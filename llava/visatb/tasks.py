"""Task presets of the paper's benchmarks: names in task-id order, metric types, unscored tasks."""

from __future__ import annotations

from dataclasses import dataclass, field

# Metric types of the release's evaluation scripts.
CAPTION = "caption"
CAPTION_LIST = "caption_list"
QA = "qa"
GROUNDING = "grounding"
METRIC_TYPES = (CAPTION, CAPTION_LIST, QA, GROUNDING)


@dataclass(frozen=True)
class TaskPreset:
    """An ordered task list (position = task id), the metric of each scored task, and unscored tasks."""

    name: str
    tasks: tuple[str, ...]
    metrics: dict[str, str] = field(default_factory=dict)
    unscored: tuple[str, ...] = ()

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

# The Chat benchmark is scored by a GPT judge (llava/eval), not by the four task metrics.
CHAT = TaskPreset(name="chat", tasks=("conversation", "detail", "complex_reasoning"))

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


def resolve_tasks(task_names: str | None = None, task_preset: str | None = None) -> list[str]:
    """The task list from `--task_names A,B` or `--task_preset NAME` (exactly one of them)."""
    if task_names and task_preset:
        raise ValueError("give either a task list (--task_names) or a preset (--task_preset), not both")
    if task_names:
        return parse_task_names(task_names)
    if task_preset:
        return list(get_preset(task_preset).tasks)
    raise ValueError("no task list: pass --task_names A,B,... or --task_preset academic|chat")


# The embedded toy benchmark (llava/visatb/toy_benchmark.py), its task types in the Academic preset's order:
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
